//! Rules of the metadata model, one test per rule, plus property tests of its invariants.

use moonraft_meta::failover::FailoverOutcome;
use moonraft_meta::slots::{Range, SLOTS};
use moonraft_meta::store::{ClusterConfig, FailureRule, RegisterProxy, RolePosition, Store};
use moonraft_meta::{view, MetaError};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn reg(store: &mut Store, host: &str, port: u16) -> Result<(), MetaError> {
    store.register_proxy(RegisterProxy {
        proxy_address: format!("{host}:{port}"),
        nodes: [format!("{host}:{}", port + 1000), format!("{host}:{}", port + 2000)],
        host: None,
        index: None,
    })
}

/// The walkthrough's pool: server_proxy1..6, one per host.
fn walkthrough_pool() -> Store {
    let mut s = Store::default();
    for i in 1..=6u16 {
        reg(&mut s, &format!("server_proxy{i}"), 6000 + i).unwrap();
    }
    s
}

fn r(a: u16, b: u16) -> Range {
    Range { start: a, end: b }
}

#[test]
fn register_and_reregister() {
    let mut s = Store::default();
    reg(&mut s, "h1", 6001).unwrap();
    assert_eq!(s.global_epoch, 1);
    assert_eq!(s.all_proxies["h1:6001"].host, "h1");
    // re-registering a healthy proxy: ALREADY_EXISTED, no epoch bump
    assert_eq!(reg(&mut s, "h1", 6001), Err(MetaError::AlreadyExisted));
    assert_eq!(s.global_epoch, 1);
    // re-registering a failed/reported proxy clears that state and bumps the epoch
    s.failed_proxies.insert("h1:6001".into());
    s.report_failure("h1:6001", "coord1", 100);
    let e = s.global_epoch;
    assert_eq!(reg(&mut s, "h1", 6001), Err(MetaError::AlreadyExisted));
    assert!(s.failed_proxies.is_empty() && s.failures.is_empty());
    assert_eq!(s.global_epoch, e + 1);
    let bad =
        RegisterProxy { proxy_address: "nocolon".into(), nodes: ["a:1".into(), "a:2".into()], host: None, index: None };
    assert_eq!(s.register_proxy(bad), Err(MetaError::InvalidProxyAddress));
    let custom = RegisterProxy {
        proxy_address: "10.0.0.1:6000".into(),
        nodes: ["a:1".into(), "a:2".into()],
        host: Some("rack7".into()),
        index: None,
    };
    s.register_proxy(custom).unwrap();
    assert_eq!(s.all_proxies["10.0.0.1:6000"].host, "rack7");
}

#[test]
fn create_cluster_like_the_walkthrough() {
    let mut s = walkthrough_pool();
    assert_eq!(s.global_epoch, 6);
    s.create_cluster("mycluster", 4, ClusterConfig::default()).unwrap();
    assert_eq!(s.global_epoch, 7);
    let c = view::cluster(&s, "mycluster", 1).unwrap();
    assert_eq!(c.epoch, 7);
    assert_eq!(c.nodes.len(), 4);
    let proxies: BTreeSet<&str> = c.nodes.iter().map(|n| n.proxy_address.as_str()).collect();
    assert_eq!(proxies.len(), 2);
    assert_eq!(c.nodes[0].slots[0].range_list, vec![r(0, 8191)]);
    assert_eq!(c.nodes[2].slots[0].range_list, vec![r(8192, 16383)]);
    assert!(c.nodes[1].slots.is_empty() && c.nodes[3].slots.is_empty());
    assert_eq!(c.nodes[0].repl.role, "master");
    assert_eq!(c.nodes[1].repl.role, "replica");
    // replication pairs 0↔3 and 1↔2, across proxies
    assert_eq!(c.nodes[0].repl.peers[0].node_address, c.nodes[3].address);
    assert_eq!(c.nodes[1].repl.peers[0].node_address, c.nodes[2].address);
    // proxy view: its two nodes and the other proxy as a peer
    let first = &c.nodes[0].proxy_address;
    let p = view::proxy(&s, first, 1).unwrap();
    assert_eq!(p.cluster_name.as_deref(), Some("mycluster"));
    assert_eq!(p.epoch, 7);
    assert_eq!(p.nodes.len(), 2);
    assert_eq!(p.peers.len(), 1);
    assert_eq!(p.peers[0].slots[0].range_list, vec![r(8192, 16383)]);
    // a free proxy's view
    let free = s.all_proxies.values().find(|p| p.cluster.is_none()).unwrap().proxy_address.clone();
    let fp = view::proxy(&s, &free, 1).unwrap();
    assert_eq!(fp.cluster_name, None);
    assert_eq!(fp.epoch, 7);
    assert!(fp.nodes.iter().all(|n| n.repl.role == "master" && n.slots.is_empty()));
    // JSON shapes
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["nodes"][0]["slots"][0]["tag"], "None");
    assert_eq!(json["config"]["compression_strategy"], "disabled");
    let fj = serde_json::to_value(&fp).unwrap();
    assert!(fj["cluster_name"].is_null() && fj["cluster_config"].is_null());
}

#[test]
fn create_errors_in_order() {
    let mut s = walkthrough_pool();
    let cfg = ClusterConfig::default;
    assert_eq!(s.create_cluster("bad name", 4, cfg()), Err(MetaError::InvalidClusterName));
    assert_eq!(s.create_cluster("", 4, cfg()), Err(MetaError::InvalidClusterName));
    assert_eq!(s.create_cluster(&"x".repeat(32), 4, cfg()), Err(MetaError::InvalidClusterName));
    s.create_cluster(&"x".repeat(31), 4, cfg()).unwrap();
    assert_eq!(s.create_cluster(&"x".repeat(31), 4, cfg()), Err(MetaError::AlreadyExisted));
    assert_eq!(s.create_cluster("c", 0, cfg()), Err(MetaError::InvalidNodeNumber));
    assert_eq!(s.create_cluster("c", 6, cfg()), Err(MetaError::InvalidNodeNumber));
    let before = s.clone();
    assert_eq!(s.create_cluster("c", 12, cfg()), Err(MetaError::NoAvailableResource));
    assert_eq!(s, before, "a refused request changes nothing");
    assert_eq!(MetaError::NoAvailableResource.status(), 409);
    assert_eq!(MetaError::InvalidClusterName.status(), 400);
    assert_eq!(MetaError::ClusterNotFound.status(), 404);
}

#[test]
fn delete_cluster_frees_its_proxies() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 8, ClusterConfig::default()).unwrap();
    assert_eq!(s.all_proxies.values().filter(|p| p.cluster.is_some()).count(), 4);
    assert_eq!(s.delete_proxy(s.clusters["a"].chunks[0].proxy_addresses[0].clone().as_str()), Err(MetaError::InUse));
    let e = s.global_epoch;
    s.delete_cluster("a").unwrap();
    assert_eq!(s.global_epoch, e + 1);
    assert!(s.all_proxies.values().all(|p| p.cluster.is_none()));
    assert_eq!(s.delete_cluster("a"), Err(MetaError::ClusterNotFound));
    assert_eq!(s.delete_cluster("bad name"), Err(MetaError::InvalidClusterName));
}

#[test]
fn add_nodes_then_delete_free_nodes() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 4, ClusterConfig::default()).unwrap();
    let added = s.add_nodes("a", 4).unwrap();
    assert_eq!(added, 1..2);
    let c = &s.clusters["a"];
    assert_eq!(c.epoch, s.global_epoch);
    assert!(c.chunks[1].is_free());
    assert_eq!(s.add_nodes_up_to("a", 8), Err(MetaError::NodeNumAlreadyEnough));
    assert_eq!(s.add_nodes("a", 4), Ok(2..3));
    assert_eq!(s.add_nodes("a", 4), Err(MetaError::NoAvailableResource));
    s.delete_free_nodes("a").unwrap();
    assert_eq!(s.clusters["a"].chunks.len(), 1);
    assert_eq!(s.delete_free_nodes("a"), Err(MetaError::FreeNodeNotFound));
    assert_eq!(s.all_proxies.values().filter(|p| p.cluster.is_some()).count(), 2);
}

#[test]
fn config_changes_are_all_or_nothing() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 4, ClusterConfig::default()).unwrap();
    let mut ch = BTreeMap::new();
    ch.insert("compression_strategy".to_string(), "SET_GET_ONLY".to_string());
    ch.insert("migration_scan_count".to_string(), "0".to_string());
    let before = s.clone();
    match s.change_config("a", &ch) {
        Err(MetaError::InvalidConfig { key, message, .. }) => {
            assert_eq!(key, "migration_scan_count");
            assert_eq!(message, "INVALID_VALUE");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s, before);
    ch.insert("migration_scan_count".to_string(), "32".to_string());
    s.change_config("a", &ch).unwrap();
    assert_eq!(s.clusters["a"].config.migration_config.scan_count, 32);
    let mut bad = BTreeMap::new();
    bad.insert("nope".to_string(), "1".to_string());
    assert!(
        matches!(s.change_config("a", &bad), Err(MetaError::InvalidConfig { message, .. }) if message == "FIELD_NOT_FOUND")
    );
}

/// A fixed quorum (as undermoon configures it) and a 60 s TTL; no coordinator heartbeats.
const FIXED: fn(u64) -> FailureRule = |quorum| FailureRule { ttl_secs: 60, quorum, coordinator_ttl_ms: 5000 };

#[test]
fn failure_reports_quorum_ttl_and_purge() {
    let mut s = walkthrough_pool();
    let e = s.global_epoch;
    s.report_failure("server_proxy1:6001", "c1", 1000);
    assert_eq!(s.global_epoch, e + 1);
    s.report_failure("server_proxy1:6001", "c1", 1010); // same reporter: refreshed, no bump
    assert_eq!(s.global_epoch, e + 1);
    assert_eq!(s.failures["server_proxy1:6001"]["c1"], 1010);
    s.report_failure("server_proxy1:6001", "c1", 1005); // an older time never moves it back
    assert_eq!(s.failures["server_proxy1:6001"]["c1"], 1010);
    assert_eq!(s.failures(1_011_000, &FIXED(1)), vec!["server_proxy1:6001".to_string()]);
    assert!(s.failures(1_011_000, &FIXED(2)).is_empty());
    s.report_failure("server_proxy1:6001", "c2", 1020);
    assert_eq!(s.failures(1_030_000, &FIXED(2)).len(), 1);
    assert!(s.failures(1_075_000, &FIXED(2)).is_empty(), "c1's report expired");
    // unknown proxies are kept but never listed
    s.report_failure("ghost:1", "c1", 1000);
    assert!(!s.failures(1_001_000, &FIXED(1)).contains(&"ghost:1".to_string()));
    // a reported proxy is not free
    assert!(!s.is_free(&s.all_proxies["server_proxy1:6001"]));
    assert!(s.purge_failures(1075, 60));
    assert_eq!(s.failures.len(), 1);
    assert!(!s.purge_failures(1075, 60));
    // a reporter that reaches the proxy again withdraws its report; the last one frees it
    let e = s.global_epoch;
    assert!(!s.withdraw_failure("server_proxy1:6001", "c1"), "c1's record was purged");
    assert!(s.withdraw_failure("server_proxy1:6001", "c2"));
    assert_eq!(s.global_epoch, e + 1);
    assert!(!s.failures.contains_key("server_proxy1:6001"));
    assert!(s.is_free(&s.all_proxies["server_proxy1:6001"]));
}

#[test]
fn the_default_quorum_is_a_majority_of_live_coordinators() {
    let mut s = walkthrough_pool();
    let auto = FailureRule { ttl_secs: 60, quorum: 0, coordinator_ttl_ms: 5000 };
    let p = "server_proxy1:6001".to_string();
    // Nobody sends heartbeats (undermoon's coordinators): one report is enough.
    assert_eq!(s.failure_quorum(1_000_000, &auto), 1);
    s.report_failure(&p, "c1", 1000);
    assert_eq!(s.failures(1_000_000, &auto), vec![p.clone()]);
    // Two live coordinators: one report is only one view.
    s.coordinator_alive("c1", 1_000_000, 60_000);
    s.coordinator_alive("c2", 1_000_500, 60_000);
    assert_eq!(s.live_coordinators(1_001_000, &auto), vec!["c1", "c2"]);
    assert_eq!(s.failure_quorum(1_001_000, &auto), 2);
    assert!(s.failures(1_001_000, &auto).is_empty(), "one coordinator's view never fails a proxy alone");
    s.report_failure(&p, "c2", 1001);
    assert_eq!(s.failures(1_001_000, &auto), vec![p.clone()]);
    // c2 stops sending heartbeats: after the coordinator TTL it no longer counts, neither in
    // the quorum nor with its report; c1 alone decides.
    s.withdraw_failure(&p, "c1");
    s.coordinator_alive("c1", 1_006_000, 60_000);
    assert_eq!(s.live_coordinators(1_006_000, &auto), vec!["c1"]);
    assert_eq!(s.failure_quorum(1_006_000, &auto), 1);
    assert!(s.failures(1_006_000, &auto).is_empty(), "a dead coordinator's report does not count");
    s.report_failure(&p, "c1", 1006);
    assert_eq!(s.failures(1_006_000, &auto), vec![p.clone()]);
    // Three live: two reports needed. A configured quorum wins over the majority.
    for c in ["c1", "c2", "c3"] {
        s.coordinator_alive(c, 1_007_000, 60_000);
    }
    assert_eq!(s.failure_quorum(1_007_000, &auto), 2);
    assert_eq!(s.failure_quorum(1_007_000, &FailureRule { quorum: 3, ..auto }), 3);
    // Silent coordinators are forgotten after `forget_after_ms`.
    s.coordinator_alive("c1", 1_100_000, 60_000);
    assert_eq!(s.coordinators.keys().collect::<Vec<_>>(), vec!["c1"]);
    // Heartbeats never change the epoch or what proxies depend on.
    let e = s.global_epoch;
    s.coordinator_alive("c2", 1_100_001, 60_000);
    assert_eq!(s.global_epoch, e);
}

#[test]
fn a_failed_proxy_that_answers_again_is_recovered() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 4, ClusterConfig::default()).unwrap();
    let victim = s.clusters["a"].chunks[0].proxy_addresses[0].clone();
    s.report_failure(&victim, "c1", 1000);
    assert!(matches!(s.failover(&victim), Ok(FailoverOutcome::Replaced { .. })));
    assert!(s.failed_proxies.contains(&victim));
    assert_eq!(s.recover_proxy("nobody:1"), Err(MetaError::ProxyNotFound));
    let e = s.global_epoch;
    assert_eq!(s.recover_proxy(&victim), Ok(true));
    assert_eq!(s.global_epoch, e + 1);
    assert!(!s.failed_proxies.contains(&victim) && !s.failures.contains_key(&victim));
    assert!(s.is_free(&s.all_proxies[&victim]), "it joins the free pool");
    // Not failed (any more): nothing to do, nothing changes.
    let before = s.clone();
    assert_eq!(s.recover_proxy(&victim), Ok(false));
    assert_eq!(s, before);
}

#[test]
fn epochs_and_restore() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 4, ClusterConfig::default()).unwrap();
    assert_eq!(s.force_epoch(3), Err(MetaError::EpochSmallerThanCurrent));
    s.force_epoch(100).unwrap();
    assert_eq!(s.clusters["a"].epoch, 100);
    let dump = serde_json::to_string(&s).unwrap();
    let back: Store = serde_json::from_str(&dump).unwrap();
    assert_eq!(back, s);
    let mut other = Store::default();
    other.restore(back.clone()).unwrap();
    assert_eq!(other, s);
    let mut old = back.clone();
    old.global_epoch = 5;
    assert_eq!(other.restore(old), Err(MetaError::EpochSmallerThanCurrent));
    let mut wrong = back;
    wrong.version = "mem-broker-0.1".into();
    assert_eq!(other.restore(wrong), Err(MetaError::InvalidMetaVersion));
    // every rule of the whole-document check, on a copy of a good document
    let mut bad = |name: &str, f: &dyn Fn(&mut Store)| {
        let mut doc = s.clone();
        f(&mut doc);
        let before = other.clone();
        match other.restore(doc) {
            Err(MetaError::InvalidMetadata { message }) => assert!(!message.is_empty(), "{name}"),
            r => panic!("{name}: expected INVALID_METADATA, got {r:?}"),
        }
        assert_eq!(other, before, "{name}: a refused restore changes nothing");
    };
    let entry = |src: (usize, usize), dst: (usize, usize), migrating: bool| moonraft_meta::store::MigrationEntry {
        range_list: vec![r(0, 10)],
        is_migrating: migrating,
        meta: moonraft_meta::store::MigrationMetaStore {
            epoch: 1,
            src_chunk_index: src.0,
            src_chunk_part: src.1,
            dst_chunk_index: dst.0,
            dst_chunk_part: dst.1,
        },
    };
    let chunk0 = |d: &mut Store| d.clusters.get_mut("a").unwrap().chunks[0].clone();
    bad("chunk part 2", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].migrating_slots[1].push(entry((0, 1), (0, 2), true))
    });
    bad("chunk index out of range", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].migrating_slots[0].push(entry((0, 0), (7, 0), true))
    });
    bad("entry stored away from its source", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].migrating_slots[1].push(entry((0, 0), (0, 1), true))
    });
    bad("dangling proxy", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].proxy_addresses[0] = "ghost:1".into();
    });
    bad("proxy in two chunks", &|d| {
        let c = chunk0(d);
        d.clusters.get_mut("a").unwrap().chunks.push(c);
    });
    bad("overlapping slots", &|d| {
        let c = d.clusters.get_mut("a").unwrap();
        c.chunks[0].stable_slots[1].as_mut().unwrap().range_list.push(r(0, 0));
    });
    bad("uncovered slots", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].stable_slots[1] = None;
    });
    bad("inverted range", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].stable_slots[0].as_mut().unwrap().range_list.push(r(9, 3));
    });
    bad("slot past 16383", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].stable_slots[0].as_mut().unwrap().range_list.push(r(16383, 20000));
    });
    bad("cluster name differs from its key", &|d| d.clusters.get_mut("a").unwrap().name = "b".into());
    bad("cluster epoch above the global epoch", &|d| d.clusters.get_mut("a").unwrap().epoch = u64::MAX);
    bad("proxy's cluster missing", &|d| {
        let free = d.all_proxies.values_mut().find(|p| p.cluster.is_none()).unwrap();
        free.cluster = Some("nope".into());
    });
    bad("proxy in a chunk but free", &|d| {
        let used = d.all_proxies.values_mut().find(|p| p.cluster.is_some()).unwrap();
        used.cluster = None;
    });
    bad("node addresses differ", &|d| {
        d.clusters.get_mut("a").unwrap().chunks[0].node_addresses[3] = "elsewhere:1".into();
    });
    bad("failed proxy unknown", &|d| {
        d.failed_proxies.insert("ghost:1".into());
    });
    bad("proxy key differs", &|d| {
        let p = d.all_proxies.values_mut().next().unwrap();
        p.proxy_address = "other:1".into();
    });
    // the dump uses the documented field names
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["version"], "mem-broker-0.2");
    let chunk = &v["clusters"]["a"]["chunks"][0];
    assert_eq!(chunk["role_position"], "Normal");
    assert_eq!(chunk["migrating_slots"], serde_json::json!([[], []]));
    assert_eq!(chunk["stable_slots"][0]["tag"], "None");
}

#[test]
fn balance_resets_healthy_chunks() {
    let mut s = walkthrough_pool();
    s.create_cluster("a", 8, ClusterConfig::default()).unwrap();
    let c = s.clusters.get_mut("a").unwrap();
    c.chunks[0].role_position = RolePosition::FirstChunkMaster;
    c.chunks[1].role_position = RolePosition::SecondChunkMaster;
    let sick = c.chunks[1].proxy_addresses[0].clone();
    s.failed_proxies.insert(sick);
    s.balance_masters("a").unwrap();
    assert_eq!(s.clusters["a"].chunks[0].role_position, RolePosition::Normal);
    assert_eq!(s.clusters["a"].chunks[1].role_position, RolePosition::SecondChunkMaster);
    // masters under SecondChunkMaster are nodes 2 and 3, on the second proxy
    let nodes = view::cluster(&s, "a", 1).unwrap().nodes;
    assert_eq!(nodes[6].repl.role, "master");
    assert_eq!(nodes[7].repl.role, "master");
    assert_eq!(nodes[7].slots[0].range_list, vec![r(8192, 12287)]);
}

#[test]
fn ordered_mode() {
    let mut s = Store { enable_ordered_proxy: true, ..Store::default() };
    for i in 0..4u64 {
        let req = RegisterProxy {
            proxy_address: format!("pod-{i}:6000"),
            nodes: [format!("pod-{i}:7001"), format!("pod-{i}:7002")],
            host: None,
            index: Some(i),
        };
        s.register_proxy(req).unwrap();
    }
    let noindex =
        RegisterProxy { proxy_address: "x:1".into(), nodes: ["x:2".into(), "x:3".into()], host: None, index: None };
    assert_eq!(s.register_proxy(noindex), Err(MetaError::MissingServerProxyIndex));
    s.create_cluster("a", 4, ClusterConfig::default()).unwrap();
    assert_eq!(s.clusters["a"].chunks[0].proxy_addresses, ["pod-0:6000".to_string(), "pod-1:6000".to_string()]);
    assert_eq!(s.create_cluster("b", 4, ClusterConfig::default()), Err(MetaError::OneClusterAlreadyExisted));
    s.add_nodes("a", 4).unwrap();
    assert_eq!(s.clusters["a"].chunks[1].proxy_addresses[1], "pod-3:6000");
}

#[test]
fn allocation_prefers_new_host_pairs() {
    // 4 hosts × 2 proxies: a 16-node cluster uses every host twice, and no host pair twice
    let mut s = Store::default();
    for h in 0..4 {
        for p in 0..2u16 {
            reg(&mut s, &format!("host{h}"), 6000 + p).unwrap();
        }
    }
    s.create_cluster("a", 16, ClusterConfig::default()).unwrap();
    let chunks = &s.clusters["a"].chunks;
    let pairs: BTreeSet<(String, String)> = chunks
        .iter()
        .map(|c| {
            let (a, b) = (c.hosts[0].clone(), c.hosts[1].clone());
            if a < b {
                (a, b)
            } else {
                (b, a)
            }
        })
        .collect();
    assert_eq!(pairs.len(), 4, "{pairs:?}");
    // determinism: the same pool gives the same cluster
    let mut t = Store::default();
    for h in 0..4 {
        for p in 0..2u16 {
            reg(&mut t, &format!("host{h}"), 6000 + p).unwrap();
        }
    }
    t.create_cluster("a", 16, ClusterConfig::default()).unwrap();
    assert_eq!(serde_json::to_string(&s).unwrap(), serde_json::to_string(&t).unwrap());
}

#[derive(Debug, Clone)]
enum Op {
    Register(u8, u8),
    Create(u8, u8),
    Delete(u8),
    AddNodes(u8, u8),
    DeleteFree(u8),
    DeleteProxy(u8, u8),
    Report(u8, u8, u8),
    Failover(u8, u8),
    Recover(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..4).prop_map(|(h, p)| Op::Register(h, p)),
        2 => (0u8..3, 1u8..4).prop_map(|(c, n)| Op::Create(c, n)),
        1 => (0u8..3).prop_map(Op::Delete),
        1 => (0u8..3, 1u8..3).prop_map(|(c, n)| Op::AddNodes(c, n)),
        1 => (0u8..3).prop_map(Op::DeleteFree),
        1 => (0u8..6, 0u8..4).prop_map(|(h, p)| Op::DeleteProxy(h, p)),
        1 => (0u8..6, 0u8..4, 0u8..2).prop_map(|(h, p, r)| Op::Report(h, p, r)),
        1 => (0u8..6, 0u8..4).prop_map(|(h, p)| Op::Failover(h, p)),
        1 => (0u8..6, 0u8..4).prop_map(|(h, p)| Op::Recover(h, p)),
    ]
}

fn apply(s: &mut Store, op: &Op) -> Result<(), MetaError> {
    match *op {
        Op::Register(h, p) => reg(s, &format!("h{h}"), 6000 + p as u16),
        Op::Create(c, n) => s.create_cluster(&format!("c{c}"), 4 * n as u64, ClusterConfig::default()),
        Op::Delete(c) => s.delete_cluster(&format!("c{c}")),
        Op::AddNodes(c, n) => s.add_nodes(&format!("c{c}"), 4 * n as u64).map(|_| ()),
        Op::DeleteFree(c) => s.delete_free_nodes(&format!("c{c}")),
        Op::DeleteProxy(h, p) => s.delete_proxy(&format!("h{h}:{}", 6000 + p as u16)),
        Op::Report(h, p, r) => {
            s.report_failure(&format!("h{h}:{}", 6000 + p as u16), &format!("r{r}"), 1000);
            Ok(())
        }
        Op::Failover(h, p) => s.failover(&format!("h{h}:{}", 6000 + p as u16)).map(|_| ()),
        Op::Recover(h, p) => s.recover_proxy(&format!("h{h}:{}", 6000 + p as u16)).map(|_| ()),
    }
}

fn check_invariants(s: &Store) -> Result<(), TestCaseError> {
    // The restore validation accepts every state the operations reach.
    prop_assert_eq!(moonraft_meta::validate::validate(s), Ok(()));
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, c) in &s.clusters {
        prop_assert!(c.epoch <= s.global_epoch);
        let mut covered = vec![0u8; SLOTS as usize];
        for chunk in &c.chunks {
            prop_assert_ne!(&chunk.hosts[0], &chunk.hosts[1], "a chunk's proxies share a host");
            for p in &chunk.proxy_addresses {
                prop_assert!(owner.insert(p.as_str(), name.as_str()).is_none(), "proxy {} in two chunks", p);
                prop_assert_eq!(s.all_proxies[p].cluster.as_deref(), Some(name.as_str()));
            }
            for part in 0..2 {
                if let Some(st) = &chunk.stable_slots[part] {
                    for r in &st.range_list {
                        for slot in r.start..=r.end {
                            covered[slot as usize] += 1;
                        }
                    }
                }
            }
        }
        prop_assert!(covered.iter().all(|&n| n == 1), "cluster {} does not own every slot exactly once", name);
    }
    for p in s.all_proxies.values() {
        if let Some(c) = &p.cluster {
            prop_assert_eq!(owner.get(p.proxy_address.as_str()).copied(), Some(c.as_str()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_apply_is_deterministic(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = Store::default();
        let mut b = Store::default();
        for op in &ops {
            let before = a.clone();
            let ra = apply(&mut a, op);
            let rb = apply(&mut b, op);
            prop_assert_eq!(&ra, &rb);
            match &ra {
                Ok(()) => prop_assert!(a.global_epoch >= before.global_epoch),
                Err(MetaError::AlreadyExisted) => {}
                Err(_) => prop_assert_eq!(&a, &before, "refused {:?} changed the store", op),
            }
            check_invariants(&a)?;
        }
        prop_assert_eq!(serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
    }

    #[test]
    fn created_clusters_spread_masters_over_hosts(hosts in 2usize..7, per_host in 1usize..4, chunks in 1usize..6) {
        let mut s = Store::default();
        for h in 0..hosts {
            for p in 0..per_host * 2 {
                reg(&mut s, &format!("host{h}"), 6000 + p as u16).unwrap();
            }
        }
        let nodes = chunks * 4;
        match s.create_cluster("c", nodes as u64, ClusterConfig::default()) {
            Err(e) => prop_assert_eq!(e, MetaError::NoAvailableResource),
            Ok(()) => {
                prop_assert!(hosts * per_host * 2 >= nodes / 2);
                let mut masters: BTreeMap<String, usize> = BTreeMap::new();
                for n in view::cluster(&s, "c", 1).unwrap().nodes.iter().filter(|n| n.repl.role == "master") {
                    *masters.entry(s.all_proxies[&n.proxy_address].host.clone()).or_default() += 1;
                }
                let max = *masters.values().max().unwrap();
                let min = if masters.len() < hosts { 0 } else { *masters.values().min().unwrap() };
                prop_assert!(max - min <= 1, "masters per host {:?}", masters);
                check_invariants(&s)?;
            }
        }
    }
}
