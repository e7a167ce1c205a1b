//! The public gRPC surface (`docs/api.md#grpc-rpcs`): `BrokerApi` and `RaftAdmin`, thin
//! adapters over `api.rs`, plus the `Watch` stream of committed changes.
//!
//! A follower forwards each call, unchanged, to the same service on the leader (marked with
//! `x-moonraft-forwarded` so that a call never travels twice); only `GetVersion`, `GetConfig`,
//! `Watch`, `Status` and `Init` are answered where they arrive.

// tonic's `Status` is large, but it is the error type its service traits require.
#![allow(clippy::result_large_err)]

use super::api;
use super::config::Member;
use super::service::{ApiError, Broker};
use moonraft_meta::store as meta;
use moonraft_meta::view;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proto::broker::raft_admin_client::RaftAdminClient;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

pub const FORWARDED: &str = "x-moonraft-forwarded";
/// Trailer with the `/api/v3` JSON error body.
pub const ERROR_TRAILER: &str = "x-moonraft-error";

/// `ApiError` → gRPC status with the mapping of `docs/api.md#grpc-rpcs`.
pub fn status_of(e: &ApiError) -> Status {
    let code = match (e, e.status()) {
        (ApiError::Retry | ApiError::RetryUnknown | ApiError::ProxyNotSync, _) => Code::Unavailable,
        (ApiError::Meta(moonraft_meta::MetaError::AlreadyExisted), _) => Code::AlreadyExists,
        (_, 400) => Code::InvalidArgument,
        (_, 404) => Code::NotFound,
        (_, 409) | (_, 412) => Code::FailedPrecondition,
        (_, 503) => Code::Unavailable,
        (_, 504) => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    if let Ok(v) = e.body().to_string().parse() {
        status.metadata_mut().insert(ERROR_TRAILER, v);
    }
    status
}

fn err(e: ApiError) -> Status {
    status_of(&e)
}

fn invalid(msg: impl Into<String>) -> Status {
    status_of(&ApiError::InvalidRequest(msg.into()))
}

pub struct GrpcApi {
    pub broker: Arc<Broker>,
}

impl GrpcApi {
    /// `None`: answer here. `Some(channel)`: forward to the leader over `channel`.
    fn route<T>(&self, req: &Request<T>) -> Result<Option<Channel>, Status> {
        let b = &self.broker;
        if b.is_leader() {
            return Ok(None);
        }
        if !b.is_initialized() {
            return Err(err(ApiError::NotInitialized));
        }
        if req.metadata().contains_key(FORWARDED) {
            return Err(err(ApiError::Retry));
        }
        let Some((_, leader)) = b.leader() else { return Err(err(ApiError::Retry)) };
        b.leader_channel(&leader).map(Some).map_err(|_| err(ApiError::Retry))
    }

    /// `method`: the RPC's name, for how long the leader may take (`BrokerConfig::forward_wait`).
    fn forwarded<T>(&self, req: Request<T>, method: &str) -> Request<T> {
        // The caller's token goes along: the leader checks it again.
        let authorization = req.metadata().get("authorization").cloned();
        // The same id on the leader: its log lines of this call can be found from ours.
        let request_id = req.metadata().get(super::metrics::REQUEST_ID).cloned();
        let mut r = Request::new(req.into_inner());
        if let Some(v) = authorization {
            r.metadata_mut().insert("authorization", v);
        }
        if let Some(v) = request_id {
            r.metadata_mut().insert(super::metrics::REQUEST_ID, v);
        }
        r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        r.set_timeout(self.broker.config.forward_wait(super::config::ForwardedCall::of_method(method)));
        r
    }
}

/// A failure of the forwarding itself (not an answer of the leader) is a `RETRY` whose outcome
/// is unknown: the leader may have received the call.
fn forward_result<T>(broker: &Broker, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    let answered = match &r {
        Ok(_) => true,
        Err(s) => {
            s.metadata().contains_key(ERROR_TRAILER)
                || matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
        }
    };
    broker.metrics.forwarded(super::metrics::Surface::Grpc, answered);
    if answered {
        r
    } else {
        Err(err(ApiError::RetryUnknown))
    }
}

/// Forwards the call to the leader when this member is not it, else evaluates `$local`.
macro_rules! on_leader {
    ($self:ident, $req:ident, $client:ident :: $method:ident, $local:expr) => {{
        match $self.route(&$req)? {
            Some(channel) => {
                let r = $self.forwarded($req, stringify!($method));
                return forward_result(
                    &$self.broker,
                    $client::new(channel).max_decoding_message_size(usize::MAX).$method(r).await,
                );
            }
            None => {
                let $req = $req.into_inner();
                let reply = $local;
                Ok(Response::new(reply))
            }
        }
    }};
}

/// A read: like `on_leader!`, except that with the test-only `unsafe_local_reads` it is
/// answered from this member's own copy.
macro_rules! read_on_leader {
    ($self:ident, $req:ident, $client:ident :: $method:ident, $local:expr) => {{
        if $self.broker.config.unsafe_local_reads {
            let $req = $req.into_inner();
            let reply = $local;
            return Ok(Response::new(reply));
        }
        on_leader!($self, $req, $client::$method, $local)
    }};
}

fn ok<T>(r: Result<T, ApiError>) -> Result<T, Status> {
    r.map_err(err)
}

fn to_usize(v: Option<u64>) -> Option<usize> {
    v.map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

// ---- model → proto ------------------------------------------------------------------

fn migration_meta(m: &meta::MigrationMeta) -> pb::MigrationMeta {
    pb::MigrationMeta {
        epoch: m.epoch,
        src_proxy_address: m.src_proxy_address.clone(),
        src_node_address: m.src_node_address.clone(),
        dst_proxy_address: m.dst_proxy_address.clone(),
        dst_node_address: m.dst_node_address.clone(),
    }
}

fn slot_range(r: &meta::SlotRange) -> pb::SlotRange {
    let tag = match &r.tag {
        meta::SlotTag::None => pb::slot_range::Tag::None(pb::Empty {}),
        meta::SlotTag::Migrating(m) => pb::slot_range::Tag::Migrating(migration_meta(m)),
        meta::SlotTag::Importing(m) => pb::slot_range::Tag::Importing(migration_meta(m)),
    };
    pb::SlotRange {
        range_list: r.range_list.iter().map(|x| pb::Range { start: x.start.into(), end: x.end.into() }).collect(),
        tag: Some(tag),
    }
}

fn node(n: &view::Node) -> pb::Node {
    pb::Node {
        address: n.address.clone(),
        proxy_address: n.proxy_address.clone(),
        slots: n.slots.iter().map(slot_range).collect(),
        repl: Some(pb::Repl {
            role: n.repl.role.clone(),
            peers: n
                .repl
                .peers
                .iter()
                .map(|p| pb::ReplPeer { node_address: p.node_address.clone(), proxy_address: p.proxy_address.clone() })
                .collect(),
        }),
    }
}

fn cluster_config(c: &meta::ClusterConfig) -> pb::ClusterConfig {
    let strategy = serde_json::to_value(c.compression_strategy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let m = &c.migration_config;
    pb::ClusterConfig {
        compression_strategy: strategy,
        migration_config: Some(pb::MigrationConfig {
            max_migration_time: m.max_migration_time,
            max_blocking_time: m.max_blocking_time,
            scan_interval: m.scan_interval,
            scan_count: m.scan_count,
        }),
    }
}

fn cluster(c: &view::Cluster) -> pb::Cluster {
    pb::Cluster {
        name: c.name.clone(),
        epoch: c.epoch,
        nodes: c.nodes.iter().map(node).collect(),
        config: Some(cluster_config(&c.config)),
    }
}

fn proxy(p: &view::Proxy) -> pb::Proxy {
    pb::Proxy {
        cluster_name: p.cluster_name.clone(),
        address: p.address.clone(),
        epoch: p.epoch,
        nodes: p.nodes.iter().map(node).collect(),
        peers: p
            .peers
            .iter()
            .map(|x| pb::Peer {
                proxy_address: x.proxy_address.clone(),
                slots: x.slots.iter().map(slot_range).collect(),
            })
            .collect(),
        cluster_config: p.cluster_config.as_ref().map(cluster_config),
        replicas: p
            .replicas
            .iter()
            .map(|r| pb::ReplicaRange {
                replica_proxy_address: r.replica_proxy_address.clone(),
                replica_node_address: r.replica_node_address.clone(),
                range_list: r
                    .range_list
                    .iter()
                    .map(|x| pb::Range { start: x.start.into(), end: x.end.into() })
                    .collect(),
            })
            .collect(),
    }
}

// ---- proto → model ------------------------------------------------------------------

fn model_migration_meta(m: pb::MigrationMeta) -> meta::MigrationMeta {
    meta::MigrationMeta {
        epoch: m.epoch,
        src_proxy_address: m.src_proxy_address,
        src_node_address: m.src_node_address,
        dst_proxy_address: m.dst_proxy_address,
        dst_node_address: m.dst_node_address,
    }
}

fn model_slot_range(r: pb::SlotRange) -> Result<meta::SlotRange, Status> {
    let slot = |v: u32| u16::try_from(v).map_err(|_| invalid(format!("slot {v} out of range")));
    let range_list = r
        .range_list
        .into_iter()
        .map(|x| Ok(moonraft_meta::slots::Range { start: slot(x.start)?, end: slot(x.end)? }))
        .collect::<Result<Vec<_>, Status>>()?;
    let tag = match r.tag {
        None => return Err(invalid("slot_range.tag is required")),
        Some(pb::slot_range::Tag::None(_)) => meta::SlotTag::None,
        Some(pb::slot_range::Tag::Migrating(m)) => meta::SlotTag::Migrating(model_migration_meta(m)),
        Some(pb::slot_range::Tag::Importing(m)) => meta::SlotTag::Importing(model_migration_meta(m)),
    };
    Ok(meta::SlotRange { range_list, tag })
}

fn model_member(m: pb::Member) -> Member {
    Member { id: m.id, raft_address: m.raft_address, http_address: m.http_address }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MetaChange, Status>> + Send>>;

fn change(c: moonraft_meta::change::Change) -> pb::MetaChange {
    pb::MetaChange {
        log_index: c.log_index,
        global_epoch: c.global_epoch,
        clusters: c.clusters,
        proxies: c.proxies,
        resync: c.resync,
    }
}

#[tonic::async_trait]
impl pb::broker_api_server::BrokerApi for GrpcApi {
    async fn get_cluster_names(&self, req: Request<pb::Page>) -> Result<Response<pb::ClusterNames>, Status> {
        on_leader!(self, req, BrokerApiClient::get_cluster_names, {
            let names = ok(api::cluster_names(&self.broker).await)?;
            pb::ClusterNames { names: api::page(&names, to_usize(req.offset), to_usize(req.limit)) }
        })
    }

    async fn get_cluster(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::GetClusterReply>, Status> {
        read_on_leader!(self, req, BrokerApiClient::get_cluster, {
            let c = ok(api::cluster(&self.broker, &req.cluster_name).await)?;
            pb::GetClusterReply { cluster: c.as_ref().map(cluster) }
        })
    }

    async fn get_cluster_info(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::ClusterInfo>, Status> {
        on_leader!(self, req, BrokerApiClient::get_cluster_info, {
            let v = ok(api::cluster_info(&self.broker, &req.cluster_name).await)?;
            let i = v.info;
            pb::ClusterInfo {
                name: i.name,
                node_number: i.node_number as u64,
                node_number_with_slots: i.node_number_with_slots as u64,
                is_migrating: i.is_migrating,
                migrations: v
                    .migrations
                    .into_iter()
                    .map(|m| pb::MigrationProgress {
                        src_proxy_address: m.src_proxy_address,
                        dst_proxy_address: m.dst_proxy_address,
                        range_list: m
                            .range_list
                            .iter()
                            .map(|r| pb::Range { start: r[0].into(), end: r[1].into() })
                            .collect(),
                        state: m.state,
                        keys_moved: m.keys_moved,
                        bytes_moved: m.bytes_moved,
                        keys_remaining_estimate: m.keys_remaining_estimate,
                        bytes_per_sec: m.bytes_per_sec,
                        eta_secs: m.eta_secs,
                        error: m.error,
                    })
                    .collect(),
            }
        })
    }

    async fn get_proxy_addresses(&self, req: Request<pb::Page>) -> Result<Response<pb::ProxyAddresses>, Status> {
        read_on_leader!(self, req, BrokerApiClient::get_proxy_addresses, {
            let a = ok(api::proxy_addresses(&self.broker).await)?;
            pb::ProxyAddresses { addresses: api::page(&a, to_usize(req.offset), to_usize(req.limit)) }
        })
    }

    async fn get_proxy(&self, req: Request<pb::ProxyAddress>) -> Result<Response<pb::GetProxyReply>, Status> {
        read_on_leader!(self, req, BrokerApiClient::get_proxy, {
            let p = ok(api::proxy(&self.broker, &req.proxy_address).await)?;
            pb::GetProxyReply { proxy: p.as_ref().map(proxy) }
        })
    }

    async fn report_failure(&self, req: Request<pb::ReportFailureRequest>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::report_failure, {
            ok(api::report_failure(&self.broker, req.proxy_address, req.reporter_id).await)?;
            pb::Empty {}
        })
    }

    async fn get_failures(&self, req: Request<pb::Empty>) -> Result<Response<pb::ProxyAddresses>, Status> {
        on_leader!(self, req, BrokerApiClient::get_failures, {
            let _ = req;
            pb::ProxyAddresses { addresses: ok(api::failures(&self.broker).await)? }
        })
    }

    async fn withdraw_failure(&self, req: Request<pb::ReportFailureRequest>) -> Result<Response<pb::Changed>, Status> {
        on_leader!(self, req, BrokerApiClient::withdraw_failure, {
            pb::Changed { changed: ok(api::withdraw_failure(&self.broker, req.proxy_address, req.reporter_id).await)? }
        })
    }

    async fn coordinator_heartbeat(&self, req: Request<pb::ReporterId>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::coordinator_heartbeat, {
            ok(api::coordinator_alive(&self.broker, req.reporter_id).await)?;
            pb::Empty {}
        })
    }

    async fn get_coordinators(&self, req: Request<pb::Empty>) -> Result<Response<pb::Coordinators>, Status> {
        on_leader!(self, req, BrokerApiClient::get_coordinators, {
            let _ = req;
            let v = ok(api::coordinators(&self.broker).await)?;
            pb::Coordinators {
                coordinators: v
                    .coordinators
                    .into_iter()
                    .map(|c| pb::CoordinatorSeen {
                        reporter_id: c.reporter_id,
                        last_seen_ms: c.last_seen_ms,
                        alive: c.alive,
                    })
                    .collect(),
                failure_quorum: v.failure_quorum,
            }
        })
    }

    async fn recover_proxy(&self, req: Request<pb::ProxyAddress>) -> Result<Response<pb::Changed>, Status> {
        on_leader!(self, req, BrokerApiClient::recover_proxy, {
            pb::Changed { changed: ok(api::recover_proxy(&self.broker, req.proxy_address).await)? }
        })
    }

    async fn failover_proxy(&self, req: Request<pb::ProxyAddress>) -> Result<Response<pb::FailoverReply>, Status> {
        on_leader!(self, req, BrokerApiClient::failover_proxy, {
            let p = ok(api::failover(&self.broker, req.proxy_address).await)?;
            pb::FailoverReply { proxy: p.as_ref().map(proxy) }
        })
    }

    async fn commit_migration(&self, req: Request<pb::CommitMigrationRequest>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::commit_migration, {
            let range = model_slot_range(req.slot_range.ok_or_else(|| invalid("slot_range is required"))?)?;
            ok(api::commit_migration(&self.broker, req.cluster_name, range).await)?;
            pb::Empty {}
        })
    }

    async fn get_failed_proxies(&self, req: Request<pb::Empty>) -> Result<Response<pb::ProxyAddresses>, Status> {
        on_leader!(self, req, BrokerApiClient::get_failed_proxies, {
            let _ = req;
            pb::ProxyAddresses { addresses: ok(api::failed_proxies(&self.broker).await)? }
        })
    }

    async fn create_cluster(&self, req: Request<pb::NodeNumber>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::create_cluster, {
            ok(api::create_cluster(&self.broker, req.cluster_name, req.node_number).await)?;
            pb::Empty {}
        })
    }

    async fn delete_cluster(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::delete_cluster, {
            ok(api::delete_cluster(&self.broker, req.cluster_name).await)?;
            pb::Empty {}
        })
    }

    async fn add_nodes(&self, req: Request<pb::NodeNumber>) -> Result<Response<pb::AddedNodes>, Status> {
        on_leader!(self, req, BrokerApiClient::add_nodes, {
            let nodes = ok(api::add_nodes(&self.broker, req.cluster_name, req.node_number).await)?;
            pb::AddedNodes { nodes: nodes.iter().map(node).collect() }
        })
    }

    async fn scale_up_nodes(&self, req: Request<pb::NodeNumber>) -> Result<Response<pb::AddedNodes>, Status> {
        on_leader!(self, req, BrokerApiClient::scale_up_nodes, {
            let nodes = ok(api::scale_up_nodes(&self.broker, req.cluster_name, req.node_number).await)?;
            pb::AddedNodes { nodes: nodes.iter().map(node).collect() }
        })
    }

    async fn delete_free_nodes(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::delete_free_nodes, {
            ok(api::delete_free_nodes(&self.broker, req.cluster_name).await)?;
            pb::Empty {}
        })
    }

    async fn expand_slots(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::expand_slots, {
            ok(api::expand(&self.broker, req.cluster_name).await)?;
            pb::Empty {}
        })
    }

    async fn shrink_slots(&self, req: Request<pb::NodeNumber>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::shrink_slots, {
            ok(api::shrink(&self.broker, req.cluster_name, req.node_number).await)?;
            pb::Empty {}
        })
    }

    async fn auto_scale(&self, req: Request<pb::NodeNumber>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::auto_scale, {
            ok(api::auto_scale(&self.broker, req.cluster_name, req.node_number).await)?;
            pb::Empty {}
        })
    }

    async fn change_cluster_config(
        &self,
        req: Request<pb::ChangeClusterConfigRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::change_cluster_config, {
            let changes = req.changes.into_iter().collect();
            ok(api::change_config(&self.broker, req.cluster_name, changes, req.expected_epoch).await)?;
            pb::Empty {}
        })
    }

    async fn balance_masters(&self, req: Request<pb::ClusterName>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::balance_masters, {
            ok(api::balance(&self.broker, req.cluster_name).await)?;
            pb::Empty {}
        })
    }

    async fn add_proxy(&self, req: Request<pb::AddProxyRequest>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::add_proxy, {
            let nodes: [String; 2] =
                req.nodes.try_into().map_err(|_| invalid("nodes must list exactly two Redis addresses"))?;
            let register =
                meta::RegisterProxy { proxy_address: req.proxy_address, nodes, host: req.host, index: req.index };
            ok(api::register_proxy(&self.broker, register).await)?;
            pb::Empty {}
        })
    }

    async fn remove_proxy(&self, req: Request<pb::ProxyAddress>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::remove_proxy, {
            ok(api::delete_proxy(&self.broker, req.proxy_address).await)?;
            pb::Empty {}
        })
    }

    async fn check_resource_for_failures(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::HostsCannotFail>, Status> {
        on_leader!(self, req, BrokerApiClient::check_resource_for_failures, {
            let _ = req;
            pb::HostsCannotFail { hosts_cannot_fail: ok(api::hosts_that_cannot_fail(&self.broker).await)? }
        })
    }

    async fn get_epoch(&self, req: Request<pb::Empty>) -> Result<Response<pb::Epoch>, Status> {
        read_on_leader!(self, req, BrokerApiClient::get_epoch, {
            let _ = req;
            pb::Epoch { epoch: ok(api::epoch(&self.broker).await)? }
        })
    }

    async fn force_epoch(&self, req: Request<pb::Epoch>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::force_epoch, {
            ok(api::force_epoch(&self.broker, req.epoch).await)?;
            pb::Empty {}
        })
    }

    async fn recover_epoch(&self, req: Request<pb::Empty>) -> Result<Response<pb::RecoverEpochReply>, Status> {
        on_leader!(self, req, BrokerApiClient::recover_epoch, {
            let _ = req;
            pb::RecoverEpochReply { failed_addresses: ok(api::recover_epoch(&self.broker).await)? }
        })
    }

    async fn get_metadata(&self, req: Request<pb::Empty>) -> Result<Response<pb::Metadata>, Status> {
        read_on_leader!(self, req, BrokerApiClient::get_metadata, {
            let _ = req;
            let store = ok(api::metadata(&self.broker).await)?;
            let json = serde_json::to_vec(&store).map_err(|e| Status::internal(e.to_string()))?;
            pb::Metadata { json }
        })
    }

    async fn restore_metadata(&self, req: Request<pb::Metadata>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, BrokerApiClient::restore_metadata, {
            let store = serde_json::from_slice(&req.json).map_err(|e| invalid(e.to_string()))?;
            ok(api::restore_metadata(&self.broker, store).await)?;
            pb::Empty {}
        })
    }

    async fn get_version(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Version>, Status> {
        Ok(Response::new(pb::Version { version: api::version().to_owned() }))
    }

    async fn get_config(&self, _req: Request<pb::Empty>) -> Result<Response<pb::BrokerConfig>, Status> {
        Ok(Response::new(pb::BrokerConfig { replica_addresses: api::other_members(&self.broker) }))
    }

    type WatchStream = WatchStream;

    /// Starts with a `resync` event carrying the current index and epoch, then one event per
    /// applied change; a subscriber that falls more than the buffer behind gets another
    /// `resync` instead of the changes it missed.
    async fn watch(&self, _req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let b = self.broker.clone();
        let mut changes = b.sm.changes();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let current = move |b: &Broker| {
            b.sm.read(|d| pb::MetaChange {
                log_index: d.last_applied.map(|l| l.index).unwrap_or(0),
                global_epoch: d.store.global_epoch,
                resync: true,
                ..Default::default()
            })
        };
        let first = current(&b);
        let subscription = WatchSubscription::new(b);
        tokio::spawn(async move {
            let b = subscription.broker();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                // A subscriber that went away ends the task now, not at the next change.
                let received = tokio::select! {
                    r = changes.recv() => r,
                    _ = tx.closed() => return,
                };
                let next = match received {
                    Ok(c) => change(c),
                    Err(RecvError::Lagged(_)) => current(b),
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(next)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::raft_admin_server::RaftAdmin for GrpcApi {
    async fn status(&self, _req: Request<pb::Empty>) -> Result<Response<pb::RaftStatus>, Status> {
        let s = api::raft_status(&self.broker);
        Ok(Response::new(pb::RaftStatus {
            node_id: s.node_id,
            state: s.state,
            current_term: s.current_term,
            leader_id: s.leader_id,
            last_log_index: s.last_log_index,
            last_applied_index: s.last_applied_index,
            members: s
                .members
                .into_iter()
                .map(|m| pb::MemberStatus {
                    id: m.id,
                    raft_address: m.raft_address,
                    http_address: m.http_address,
                    voter: m.voter,
                })
                .collect(),
            group_id: s.group_id,
            state_sha256: s.state_sha256,
        }))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::Empty>, Status> {
        let members: Vec<Member> = req.into_inner().members.into_iter().map(model_member).collect();
        ok(api::raft_init(&self.broker, &members).await)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn add_learner(&self, req: Request<pb::Member>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, RaftAdminClient::add_learner, {
            ok(api::add_learner(&self.broker, model_member(req)).await)?;
            pb::Empty {}
        })
    }

    async fn change_membership(&self, req: Request<pb::MembershipRequest>) -> Result<Response<pb::Empty>, Status> {
        on_leader!(self, req, RaftAdminClient::change_membership, {
            ok(api::change_membership(&self.broker, req.voters, req.remove).await)?;
            pb::Empty {}
        })
    }
}

/// Counts an open `Watch` stream for as long as it lives.
struct WatchSubscription(Arc<Broker>);

impl WatchSubscription {
    fn new(broker: Arc<Broker>) -> Self {
        broker.metrics.watch_subscribers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WatchSubscription(broker)
    }

    fn broker(&self) -> &Broker {
        &self.0
    }
}

impl Drop for WatchSubscription {
    fn drop(&mut self) {
        self.0.metrics.watch_subscribers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
