//! gRPC `BrokerApi`/`RaftAdmin` conformance against a real 3-member group: every RPC, its
//! success shape and the documented errors with the status-code mapping of `raft-broker.md`
//! `docs/api.md#grpc-rpcs`. Calls rotate over all members, so followers forward to the leader. The answers must
//! match what `/api/v3` says about the same state.

mod common;

use common::*;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proto::broker::raft_admin_client::RaftAdminClient;
use std::cell::Cell;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

struct Members {
    channels: Vec<Channel>,
    next: Cell<usize>,
}

impl Members {
    fn api(&self) -> BrokerApiClient<Channel> {
        let i = self.next.get();
        self.next.set(i + 1);
        BrokerApiClient::new(self.channels[i % self.channels.len()].clone())
    }

    fn admin(&self) -> RaftAdminClient<Channel> {
        let i = self.next.get();
        self.next.set(i + 1);
        RaftAdminClient::new(self.channels[i % self.channels.len()].clone())
    }
}

/// Retries UNAVAILABLE (RETRY during an election) a few times.
macro_rules! call {
    ($m:expr, $client:ident . $method:ident ( $req:expr )) => {{
        let mut out = None;
        for _ in 0..50 {
            match $m.$client().$method($req.clone()).await {
                Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
                other => {
                    out = Some(other.map(|r| r.into_inner()));
                    break;
                }
            }
        }
        out.expect("still UNAVAILABLE after retries")
    }};
}

/// The status code, the code in the message and the JSON error trailer agree.
fn assert_error(status: tonic::Status, code: Code, api_code: &str) {
    assert_eq!((status.code(), status.message()), (code, api_code), "{status:?}");
    let body = status.metadata().get("x-moonraft-error").and_then(|v| v.to_str().ok()).expect("error trailer");
    let body: serde_json::Value = serde_json::from_str(body).expect("json trailer");
    assert_eq!(body["error"], api_code);
}

fn nn(name: &str, n: u64) -> pb::NodeNumber {
    pb::NodeNumber { cluster_name: name.into(), node_number: n }
}

fn cn(name: &str) -> pb::ClusterName {
    pb::ClusterName { cluster_name: name.into() }
}

fn pa(addr: &str) -> pb::ProxyAddress {
    pb::ProxyAddress { proxy_address: addr.into() }
}

#[test]
fn grpc_api_conformance_three_members() {
    let group = BrokerGroup::start(3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut channels = Vec::new();
        for m in &group.members {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap().connect_lazy();
            channels.push(ch);
        }
        let m = Members { channels, next: Cell::new(0) };
        let e = pb::Empty {};

        // Admin: status from every member agrees on the leader and the group.
        let mut leaders = Vec::new();
        for _ in 0..3 {
            let s = call!(m, admin.status(e)).unwrap();
            assert_eq!(s.members.len(), 3);
            assert!(s.group_id.is_some());
            leaders.push(s.leader_id);
        }
        assert!(leaders.iter().all(|l| l.is_some() && *l == leaders[0]), "{leaders:?}");
        let v = call!(m, api.get_version(e)).unwrap();
        // The package version, plus the commit when built from a git checkout (tests/broker.rs).
        assert!(v.version.starts_with(env!("CARGO_PKG_VERSION")), "{}", v.version);
        let cfg = call!(m, api.get_config(e)).unwrap();
        assert_eq!(cfg.replica_addresses.len(), 2);

        // Proxies.
        for i in 1..=6u32 {
            let req = pb::AddProxyRequest {
                proxy_address: format!("p{i}:600{i}"),
                nodes: vec![format!("r{i}:7001"), format!("r{i}:7002")],
                host: Some(format!("h{i}")),
                index: None,
            };
            call!(m, api.add_proxy(req)).unwrap();
        }
        let dup = pb::AddProxyRequest {
            proxy_address: "p1:6001".into(),
            nodes: vec!["r1:7001".into(), "r1:7002".into()],
            host: Some("h1".into()),
            index: None,
        };
        assert_error(call!(m, api.add_proxy(dup)).unwrap_err(), Code::AlreadyExists, "ALREADY_EXISTED");
        let bad =
            pb::AddProxyRequest { proxy_address: "p9:6009".into(), nodes: vec!["x:1".into()], host: None, index: None };
        assert_error(call!(m, api.add_proxy(bad)).unwrap_err(), Code::InvalidArgument, "INVALID_REQUEST");
        let bad = pb::AddProxyRequest {
            proxy_address: "no-port".into(),
            nodes: vec!["x:1".into(), "y:1".into()],
            host: None,
            index: None,
        };
        assert_error(call!(m, api.add_proxy(bad)).unwrap_err(), Code::InvalidArgument, "INVALID_PROXY_ADDRESS");
        let all = call!(m, api.get_proxy_addresses(pb::Page::default())).unwrap();
        assert_eq!(all.addresses.len(), 6);
        let paged = call!(m, api.get_proxy_addresses(pb::Page { offset: Some(4), limit: Some(10) })).unwrap();
        assert_eq!(paged.addresses, all.addresses[4..].to_vec());
        let free = call!(m, api.get_proxy(pa("p1:6001"))).unwrap().proxy.expect("registered");
        assert_eq!((free.cluster_name, free.nodes.len()), (None, 2));
        assert!(call!(m, api.get_proxy(pa("nope:1"))).unwrap().proxy.is_none());

        // Clusters.
        call!(m, api.create_cluster(nn("c", 4))).unwrap();
        assert_error(call!(m, api.create_cluster(nn("c", 4))).unwrap_err(), Code::AlreadyExists, "ALREADY_EXISTED");
        assert_error(
            call!(m, api.create_cluster(nn("d", 3))).unwrap_err(),
            Code::InvalidArgument,
            "INVALID_NODE_NUMBER",
        );
        assert_error(
            call!(m, api.create_cluster(nn("bad name", 4))).unwrap_err(),
            Code::InvalidArgument,
            "INVALID_CLUSTER_NAME",
        );
        assert_error(
            call!(m, api.create_cluster(nn("big", 400))).unwrap_err(),
            Code::FailedPrecondition,
            "NO_AVAILABLE_RESOURCE",
        );
        let names = call!(m, api.get_cluster_names(pb::Page::default())).unwrap();
        assert_eq!(names.names, vec!["c".to_owned()]);
        let c = call!(m, api.get_cluster(cn("c"))).unwrap().cluster.expect("cluster");
        assert_eq!(c.nodes.len(), 4);
        let masters: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.repl.as_ref().is_some_and(|r| r.role == "master"))
            .flat_map(|n| n.slots.iter().flat_map(|s| s.range_list.iter().map(|r| format!("{}-{}", r.start, r.end))))
            .collect();
        assert_eq!(masters, vec!["0-8191", "8192-16383"]);
        assert!(c.nodes.iter().all(|n| n.slots.iter().all(|s| matches!(s.tag, Some(pb::slot_range::Tag::None(_))))));
        assert_eq!(c.config.as_ref().map(|c| c.compression_strategy.as_str()), Some("disabled"));
        // The same cluster over HTTP: same epoch and node addresses.
        let http_c = http(&group.members[1].http, "GET", "/api/v3/clusters/meta/c", None).unwrap().json();
        assert_eq!(http_c["cluster"]["epoch"], c.epoch);
        let http_nodes: Vec<String> = http_c["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["address"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(http_nodes, c.nodes.iter().map(|n| n.address.clone()).collect::<Vec<_>>());
        assert!(call!(m, api.get_cluster(cn("nope"))).unwrap().cluster.is_none());
        let info = call!(m, api.get_cluster_info(cn("c"))).unwrap();
        assert_eq!((info.node_number, info.node_number_with_slots, info.is_migrating), (4, 4, false));
        assert_error(call!(m, api.get_cluster_info(cn("nope"))).unwrap_err(), Code::NotFound, "CLUSTER_NOT_FOUND");
        let member_proxy = c.nodes[0].proxy_address.clone();
        let in_use = call!(m, api.get_proxy(pa(&member_proxy))).unwrap().proxy.unwrap();
        assert_eq!(in_use.cluster_name.as_deref(), Some("c"));
        assert_error(call!(m, api.remove_proxy(pa(&member_proxy))).unwrap_err(), Code::FailedPrecondition, "IN_USE");
        assert_error(call!(m, api.remove_proxy(pa("nope:1"))).unwrap_err(), Code::NotFound, "PROXY_NOT_FOUND");

        // Config and balance.
        let mut changes = std::collections::HashMap::new();
        changes.insert("compression_strategy".to_owned(), "set_get_only".to_owned());
        let req =
            pb::ChangeClusterConfigRequest { cluster_name: "c".into(), changes: changes.clone(), expected_epoch: None };
        call!(m, api.change_cluster_config(req)).unwrap();
        let c = call!(m, api.get_cluster(cn("c"))).unwrap().cluster.unwrap();
        assert_eq!(c.config.unwrap().compression_strategy, "set_get_only");
        // Conditional: applied at the expected epoch, refused at any other.
        let cas = |epoch: u64, strategy: &str| {
            let mut ch = std::collections::HashMap::new();
            ch.insert("compression_strategy".to_owned(), strategy.to_owned());
            pb::ChangeClusterConfigRequest { cluster_name: "c".into(), changes: ch, expected_epoch: Some(epoch) }
        };
        let st = call!(m, api.change_cluster_config(cas(c.epoch - 1, "allow_all"))).unwrap_err();
        assert_error(st, Code::FailedPrecondition, "EPOCH_MISMATCH");
        call!(m, api.change_cluster_config(cas(c.epoch, "allow_all"))).unwrap();
        let c2 = call!(m, api.get_cluster(cn("c"))).unwrap().cluster.unwrap();
        assert!(c2.epoch > c.epoch);
        assert_eq!(c2.config.unwrap().compression_strategy, "allow_all");
        let st = call!(m, api.change_cluster_config(cas(c.epoch, "disabled"))).unwrap_err();
        assert_error(st, Code::FailedPrecondition, "EPOCH_MISMATCH");
        changes.insert("compression_strategy".to_owned(), "zip".to_owned());
        let req = pb::ChangeClusterConfigRequest { cluster_name: "c".into(), changes, expected_epoch: None };
        let st = call!(m, api.change_cluster_config(req)).unwrap_err();
        assert_error(st, Code::InvalidArgument, "INVALID_CONFIG");
        call!(m, api.balance_masters(cn("c"))).unwrap();

        // Scaling: add nodes, expand, a second scaling call is refused, commit, free nodes.
        let added = call!(m, api.add_nodes(nn("c", 4))).unwrap();
        assert_eq!(added.nodes.len(), 4);
        assert_error(call!(m, api.delete_cluster(cn("nope"))).unwrap_err(), Code::NotFound, "CLUSTER_NOT_FOUND");
        call!(m, api.expand_slots(cn("c"))).unwrap();
        assert_error(call!(m, api.expand_slots(cn("c"))).unwrap_err(), Code::FailedPrecondition, "MIGRATION_RUNNING");
        let c = call!(m, api.get_cluster(cn("c"))).unwrap().cluster.unwrap();
        let migrating = c
            .nodes
            .iter()
            .flat_map(|n| n.slots.iter())
            .find(|s| matches!(s.tag, Some(pb::slot_range::Tag::Migrating(_))))
            .cloned()
            .expect("a migrating range");
        let commit = pb::CommitMigrationRequest { cluster_name: "c".into(), slot_range: Some(migrating.clone()) };
        call!(m, api.commit_migration(commit.clone())).unwrap();
        assert_error(call!(m, api.commit_migration(commit)).unwrap_err(), Code::NotFound, "MIGRATION_TASK_NOT_FOUND");
        let no_tag = pb::SlotRange { range_list: migrating.range_list.clone(), tag: None };
        let commit = pb::CommitMigrationRequest { cluster_name: "c".into(), slot_range: Some(no_tag) };
        assert_error(call!(m, api.commit_migration(commit)).unwrap_err(), Code::InvalidArgument, "INVALID_REQUEST");
        // Expanding checks for free chunks before planning migrations.
        assert_error(call!(m, api.shrink_slots(nn("c", 4))).unwrap_err(), Code::FailedPrecondition, "FREE_NODE_FOUND");
        assert_error(
            call!(m, api.delete_free_nodes(cn("c"))).unwrap_err(),
            Code::FailedPrecondition,
            "MIGRATION_RUNNING",
        );
        assert_error(
            call!(m, api.scale_up_nodes(nn("c", 12))).unwrap_err(),
            Code::FailedPrecondition,
            "MIGRATION_RUNNING",
        );

        // Failures and failover.
        call!(
            m,
            api.report_failure(pb::ReportFailureRequest { proxy_address: "p6:6006".into(), reporter_id: "co1".into() })
        )
        .unwrap();
        let failures = call!(m, api.get_failures(e)).unwrap();
        assert!(failures.addresses.contains(&"p6:6006".to_owned()));
        let report = |r: &str| pb::ReportFailureRequest { proxy_address: "p6:6006".into(), reporter_id: r.into() };
        assert!(call!(m, api.withdraw_failure(report("co1"))).unwrap().changed);
        assert!(!call!(m, api.withdraw_failure(report("co1"))).unwrap().changed);
        assert!(call!(m, api.get_failures(e)).unwrap().addresses.is_empty());
        call!(m, api.coordinator_heartbeat(pb::ReporterId { reporter_id: "co1".into() })).unwrap();
        let seen = call!(m, api.get_coordinators(e)).unwrap();
        assert_eq!((seen.coordinators.len(), seen.failure_quorum), (1, 1));
        assert!(seen.coordinators[0].alive && seen.coordinators[0].reporter_id == "co1");
        assert_error(
            call!(m, api.coordinator_heartbeat(pb::ReporterId { reporter_id: String::new() })).unwrap_err(),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        );
        call!(m, api.report_failure(report("co1"))).unwrap();
        assert_error(call!(m, api.recover_proxy(pa("nope:1"))).unwrap_err(), Code::NotFound, "PROXY_NOT_FOUND");
        assert!(!call!(m, api.recover_proxy(pa("p6:6006"))).unwrap().changed, "not failed");
        let hosts = call!(m, api.check_resource_for_failures(e)).unwrap();
        assert!(hosts.hosts_cannot_fail.len() <= 6);
        // A proxy of the cluster: replaced by a free proxy, which joins the cluster.
        let replaced = call!(m, api.failover_proxy(pa(&member_proxy))).unwrap().proxy.expect("a replacement");
        assert_ne!(replaced.address, member_proxy);
        assert_eq!(replaced.cluster_name.as_deref(), Some("c"));
        // Again: it is in no cluster any more, so nothing to replace.
        assert!(call!(m, api.failover_proxy(pa(&member_proxy))).unwrap().proxy.is_none());
        assert_error(call!(m, api.failover_proxy(pa("nope:1"))).unwrap_err(), Code::NotFound, "PROXY_NOT_FOUND");
        let failed_list = call!(m, api.get_failed_proxies(e)).unwrap();
        assert!(failed_list.addresses.contains(&member_proxy), "{:?}", failed_list.addresses);

        // Epochs.
        let epoch = call!(m, api.get_epoch(e)).unwrap().epoch;
        assert!(epoch > 0);
        assert_error(
            call!(m, api.force_epoch(pb::Epoch { epoch: 1 })).unwrap_err(),
            Code::FailedPrecondition,
            "EPOCH_SMALLER_THAN_CURRENT",
        );
        call!(m, api.force_epoch(pb::Epoch { epoch: epoch + 100 })).unwrap();
        assert_eq!(call!(m, api.get_epoch(e)).unwrap().epoch, epoch + 100);
        let rec = call!(m, api.recover_epoch(e)).unwrap();
        assert_eq!(rec.failed_addresses.len(), 6, "no proxy process runs: {:?}", rec.failed_addresses);

        // Metadata: the gRPC dump is the HTTP dump; restoring it is accepted, garbage is not.
        let dump = call!(m, api.get_metadata(e)).unwrap();
        let http_dump = http(&group.members[2].http, "GET", "/api/v3/metadata", None).unwrap().body;
        assert_eq!(dump.json, http_dump);
        call!(m, api.restore_metadata(dump.clone())).unwrap();
        let garbage = pb::Metadata { json: b"{not json".to_vec() };
        assert_error(call!(m, api.restore_metadata(garbage)).unwrap_err(), Code::InvalidArgument, "INVALID_REQUEST");

        // Membership errors.
        let st =
            call!(m, admin.change_membership(pb::MembershipRequest { voters: vec![1, 9], remove: false })).unwrap_err();
        assert_error(st, Code::InvalidArgument, "INVALID_MEMBERSHIP");
        let st =
            call!(m, admin.add_learner(pb::Member { id: 0, raft_address: "x:1".into(), http_address: "x:2".into() }))
                .unwrap_err();
        assert_error(st, Code::InvalidArgument, "INVALID_MEMBERSHIP");
        let other = pb::InitRequest {
            members: vec![pb::Member { id: 1, raft_address: "a:1".into(), http_address: "a:2".into() }],
        };
        let st = RaftAdminClient::new(m.channels[0].clone()).init(other).await.unwrap_err();
        assert_error(st, Code::FailedPrecondition, "RAFT_ALREADY_INITIALIZED");

        // Delete the cluster; its proxies return to the pool.
        call!(m, api.delete_cluster(cn("c"))).unwrap();
        assert!(call!(m, api.get_cluster_names(pb::Page::default())).unwrap().names.is_empty());
    });
}
