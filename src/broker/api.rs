//! The `/api/v3` operations, once, for both surfaces: HTTP (`http.rs`) and gRPC (`grpc_api.rs`)
//! only decode a request, call one of these and encode the result. Each runs on the member
//! that received it; followers hand requests to the leader before they get here (HTTP:
//! `RaftInternal.Forward`, gRPC: the same call on the leader's `BrokerApi`).

use super::config::Member;
use super::service::{ApiError, Broker};
use moonraft_meta::command::{AutoStep, Command, CommandOutput};
use moonraft_meta::failover::FailoverOutcome;
use moonraft_meta::store::{RegisterProxy, SlotRange};
use moonraft_meta::view::{self, Cluster, ClusterInfo, Node, Proxy};

use moonraft_meta::{MetaError, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn limit(b: &Broker) -> usize {
    b.config.migration_limit as usize
}

/// `offset`/`limit` paging of the list endpoints.
pub fn page<T: Clone>(items: &[T], offset: Option<usize>, limit: Option<usize>) -> Vec<T> {
    items.iter().skip(offset.unwrap_or(0)).take(limit.unwrap_or(usize::MAX)).cloned().collect()
}

pub fn version() -> &'static str {
    env!("MOONRAFT_BUILD_VERSION")
}

pub async fn metadata(b: &Broker) -> Result<Store, ApiError> {
    b.read(|s| s.clone()).await
}

pub async fn restore_metadata(b: &Broker, store: Store) -> Result<(), ApiError> {
    b.write(Command::RestoreStore { store: Box::new(store) }).await.map(|_| ())
}

pub async fn cluster_names(b: &Broker) -> Result<Vec<String>, ApiError> {
    b.read(|s| s.clusters.keys().cloned().collect()).await
}

pub async fn cluster(b: &Broker, name: &str) -> Result<Option<Cluster>, ApiError> {
    let lim = limit(b);
    b.read(|s| view::cluster(s, name, lim)).await
}

/// Progress of one running migration, as its source proxy reports it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MigrationProgress {
    pub src_proxy_address: String,
    pub dst_proxy_address: String,
    pub range_list: Vec<[u16; 2]>,
    pub state: String,
    pub keys_moved: u64,
    pub bytes_moved: u64,
    pub keys_remaining_estimate: u64,
    pub bytes_per_sec: u64,
    pub eta_secs: Option<u64>,
    /// Why the copy is paused (or why no progress could be read).
    pub error: Option<String>,
}

/// `GET /clusters/info/{name}`: the spec's fields plus `migrations`, the progress of each
/// running migration (asked from the source proxies, 500 ms bound each).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterInfoView {
    #[serde(flatten)]
    pub info: ClusterInfo,
    pub migrations: Vec<MigrationProgress>,
}

pub async fn cluster_info(b: &Broker, name: &str) -> Result<ClusterInfoView, ApiError> {
    let lim = limit(b);
    let (info, cluster) = b.read(|s| (view::cluster_info(s, name, lim), view::cluster(s, name, lim))).await?;
    let info = info.ok_or(ApiError::Meta(MetaError::ClusterNotFound))?;
    let mut tasks: Vec<(String, String, Vec<[u16; 2]>)> = Vec::new();
    for node in cluster.iter().flat_map(|c| c.nodes.iter()) {
        for r in &node.slots {
            if let moonraft_meta::store::SlotTag::Migrating(m) = &r.tag {
                let ranges = r.range_list.iter().map(|x| [x.start, x.end]).collect();
                tasks.push((m.src_proxy_address.clone(), m.dst_proxy_address.clone(), ranges));
            }
        }
    }
    let mut sources: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut reports: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for src in sources {
        let reply =
            super::proxy_command(&src, &["UMCTL", "MIGRATIONS"], Duration::from_millis(500), &b.config.proxy_login)
                .await;
        let list = match reply {
            Some(moonraft_proxy::resp::Frame::Bulk(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => Vec::new(),
        };
        reports.insert(src, list);
    }
    let migrations = tasks
        .into_iter()
        .map(|(src, dst, range_list)| {
            let found = reports.get(&src).and_then(|list| {
                list.iter().find(|t| {
                    t["cluster"] == name && t["role"] == "migrating" && t["range_list"] == serde_json::json!(range_list)
                })
            });
            let Some(t) = found else {
                return MigrationProgress {
                    src_proxy_address: src.clone(),
                    dst_proxy_address: dst,
                    range_list,
                    state: "Unknown".into(),
                    keys_moved: 0,
                    bytes_moved: 0,
                    keys_remaining_estimate: 0,
                    bytes_per_sec: 0,
                    eta_secs: None,
                    error: Some(format!("no progress from the source proxy {src} (unreachable, or it has not received the migration yet)")),
                };
            };
            let num = |k: &str| t[k].as_u64().unwrap_or(0);
            let (moved, bytes, estimate, ms) = (num("keys_moved"), num("bytes_moved"), num("keys_estimate"), num("copy_elapsed_ms"));
            let remaining = estimate.saturating_sub(moved);
            let secs = ms as f64 / 1000.0;
            let keys_per_sec = if secs > 0.0 { moved as f64 / secs } else { 0.0 };
            MigrationProgress {
                src_proxy_address: src,
                dst_proxy_address: dst,
                range_list,
                state: t["state"].as_str().unwrap_or("Unknown").to_owned(),
                keys_moved: moved,
                bytes_moved: bytes,
                keys_remaining_estimate: remaining,
                bytes_per_sec: if secs > 0.0 { (bytes as f64 / secs) as u64 } else { 0 },
                eta_secs: (keys_per_sec > 0.0).then(|| (remaining as f64 / keys_per_sec).ceil() as u64),
                error: t["error"].as_str().map(str::to_owned),
            }
        })
        .collect();
    Ok(ClusterInfoView { info, migrations })
}

pub async fn create_cluster(b: &Broker, name: String, node_number: u64) -> Result<(), ApiError> {
    let default_config = b.config.default_cluster_config();
    b.write(Command::CreateCluster { name, node_number, default_config }).await.map(|_| ())
}

pub async fn delete_cluster(b: &Broker, name: String) -> Result<(), ApiError> {
    b.write(Command::RemoveCluster { name }).await.map(|_| ())
}

/// Runs a scaling command under the scale lock: one scaling operation at a time per group, on the leader.
async fn scaling(b: &Broker, cmd: Command) -> Result<CommandOutput, ApiError> {
    let Ok(_guard) = b.scale_lock.try_lock() else {
        return Err(ApiError::Meta(MetaError::NodeNumberChanging));
    };
    b.write(cmd).await
}

fn added_nodes(out: CommandOutput) -> Vec<Node> {
    match out {
        CommandOutput::AddedNodes(nodes) => nodes,
        _ => Vec::new(),
    }
}

pub async fn add_nodes(b: &Broker, name: String, node_number: u64) -> Result<Vec<Node>, ApiError> {
    scaling(b, Command::AddNodes { name, node_number }).await.map(added_nodes)
}

pub async fn scale_up_nodes(b: &Broker, name: String, cluster_node_number: u64) -> Result<Vec<Node>, ApiError> {
    scaling(b, Command::ScaleUpNodes { name, cluster_node_number }).await.map(added_nodes)
}

pub async fn delete_free_nodes(b: &Broker, name: String) -> Result<(), ApiError> {
    scaling(b, Command::DeleteFreeNodes { name }).await.map(|_| ())
}

pub async fn shrink(b: &Broker, name: String, new_node_number: u64) -> Result<(), ApiError> {
    scaling(b, Command::ShrinkSlots { name, new_node_number }).await.map(|_| ())
}

pub async fn expand(b: &Broker, name: String) -> Result<(), ApiError> {
    scaling(b, Command::ExpandSlots { name }).await.map(|_| ())
}

/// `POST /clusters/migrations/auto/{name}/{n}` (`docs/allocation.md#scale-in-the-shrink-plan`): one retry-friendly call
/// to resize a cluster. Holds the scale lock for the whole call; the wait for proxies is
/// bounded (`auto_sync_timeout_ms`).
pub async fn auto_scale(b: &Broker, name: String, node_number: u64) -> Result<(), ApiError> {
    let Ok(_guard) = b.scale_lock.try_lock() else {
        return Err(ApiError::Meta(MetaError::NodeNumberChanging));
    };
    let step = b.write(Command::AutoPhase1 { name: name.clone(), node_number }).await?;
    let CommandOutput::Auto(AutoStep::WaitForProxies { proxies, epoch }) = step else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(b.config.auto_sync_timeout_ms);
    let mut failed_rounds = 0;
    loop {
        let mut all_synced = true;
        let mut any_failed = false;
        for p in &proxies {
            match super::proxy_epoch(p, Duration::from_secs(1), &b.config.proxy_login).await {
                Some(e) if e >= epoch => {}
                Some(_) => all_synced = false,
                None => {
                    all_synced = false;
                    any_failed = true;
                }
            }
        }
        if all_synced {
            break;
        }
        failed_rounds += usize::from(any_failed);
        if failed_rounds >= 30 || tokio::time::Instant::now() >= deadline {
            return Err(ApiError::ProxyNotSync);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.write(Command::AutoPhase2 { name, node_number }).await.map(|_| ())
}

pub async fn commit_migration(b: &Broker, cluster_name: String, slot_range: SlotRange) -> Result<(), ApiError> {
    if !moonraft_meta::store::valid_cluster_name(&cluster_name) {
        return Err(ApiError::InvalidRequest("invalid cluster name".into()));
    }
    let cmd = Command::CommitMigration { cluster_name, range_list: slot_range.range_list, tag: slot_range.tag };
    b.write(cmd).await.map(|_| ())
}

/// `PATCH /clusters/config/{name}`; with `expected_epoch` (`If-Match`) only if the cluster is
/// still at that epoch, else `412 EPOCH_MISMATCH` with the current one.
pub async fn change_config(
    b: &Broker,
    name: String,
    changes: BTreeMap<String, String>,
    expected_epoch: Option<u64>,
) -> Result<(), ApiError> {
    b.write(Command::ChangeConfig { name, changes, expected_epoch }).await.map(|_| ())
}

pub async fn balance(b: &Broker, name: String) -> Result<(), ApiError> {
    b.write(Command::BalanceMasters { name }).await.map(|_| ())
}

pub async fn proxy_addresses(b: &Broker) -> Result<Vec<String>, ApiError> {
    b.read(|s| s.all_proxies.keys().cloned().collect()).await
}

pub async fn register_proxy(b: &Broker, req: RegisterProxy) -> Result<(), ApiError> {
    b.write(Command::AddProxy(req)).await.map(|_| ())
}

pub async fn proxy(b: &Broker, address: &str) -> Result<Option<Proxy>, ApiError> {
    let lim = limit(b);
    b.read(|s| view::proxy(s, address, lim)).await
}

pub async fn delete_proxy(b: &Broker, address: String) -> Result<(), ApiError> {
    b.write(Command::RemoveProxy { address }).await.map(|_| ())
}

/// `POST /proxies/failover/{address}`: the replacement proxy's new view, or `None` when the
/// proxy was in no cluster.
pub async fn failover(b: &Broker, address: String) -> Result<Option<Proxy>, ApiError> {
    match b.write(Command::ReplaceFailedProxy { address }).await? {
        CommandOutput::Failover(FailoverOutcome::Replaced { replacement, .. }) => {
            let lim = limit(b);
            Ok(b.sm.read(|d| view::proxy(&d.store, &replacement, lim)))
        }
        CommandOutput::Failover(FailoverOutcome::NoReplacement { .. }) => {
            Err(ApiError::Meta(MetaError::NoAvailableResource))
        }
        _ => Ok(None),
    }
}

pub async fn failed_proxies(b: &Broker) -> Result<Vec<String>, ApiError> {
    b.read(|s| s.failed_proxies.iter().cloned().collect()).await
}

pub async fn report_failure(b: &Broker, address: String, reporter_id: String) -> Result<(), ApiError> {
    b.write(Command::AddFailure { address, reporter_id, now: Broker::now() }).await.map(|_| ())
}

/// `DELETE /failures/{proxy}/{reporter}`: the reporter reaches the proxy again. Returns
/// whether it had a record.
pub async fn withdraw_failure(b: &Broker, address: String, reporter_id: String) -> Result<bool, ApiError> {
    match b.write(Command::WithdrawFailure { address, reporter_id }).await? {
        CommandOutput::Changed(changed) => Ok(changed),
        _ => Ok(false),
    }
}

pub async fn failures(b: &Broker) -> Result<Vec<String>, ApiError> {
    let rule = b.config.failure_rule();
    let now_ms = Broker::now_ms();
    b.read(|s| s.failures(now_ms, &rule)).await
}

/// `PUT /coordinators/{reporter_id}`: a coordinator's heartbeat.
pub async fn coordinator_alive(b: &Broker, reporter_id: String) -> Result<(), ApiError> {
    if reporter_id.is_empty() || reporter_id.len() > 256 {
        return Err(ApiError::InvalidRequest("reporter_id: 1 to 256 bytes".into()));
    }
    let cmd = Command::CoordinatorAlive {
        reporter_id,
        now_ms: Broker::now_ms(),
        forget_after_ms: b.config.forget_coordinator_after_ms(),
    };
    b.write(cmd).await.map(|_| ())
}

/// `GET /coordinators`: the coordinators on record, which of them count as alive, and the
/// number of reports a failover needs right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CoordinatorsView {
    pub coordinators: Vec<CoordinatorSeen>,
    pub failure_quorum: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CoordinatorSeen {
    pub reporter_id: String,
    /// Milliseconds since its latest heartbeat.
    pub last_seen_ms: u64,
    pub alive: bool,
}

pub async fn coordinators(b: &Broker) -> Result<CoordinatorsView, ApiError> {
    let rule = b.config.failure_rule();
    let now_ms = Broker::now_ms();
    b.read(|s| CoordinatorsView {
        coordinators: s
            .coordinators
            .iter()
            .map(|(r, t)| {
                let age = now_ms.saturating_sub(*t);
                CoordinatorSeen { reporter_id: r.clone(), last_seen_ms: age, alive: age < rule.coordinator_ttl_ms }
            })
            .collect(),
        failure_quorum: s.failure_quorum(now_ms, &rule) as u64,
    })
    .await
}

/// `POST /proxies/recover/{address}`: a failed proxy that answers again leaves the failed set.
/// Returns whether it was failed.
pub async fn recover_proxy(b: &Broker, address: String) -> Result<bool, ApiError> {
    match b.write(Command::RecoverProxy { address }).await? {
        CommandOutput::Changed(changed) => Ok(changed),
        _ => Ok(false),
    }
}

pub async fn epoch(b: &Broker) -> Result<u64, ApiError> {
    b.read(|s| s.global_epoch).await
}

pub async fn force_epoch(b: &Broker, new_epoch: u64) -> Result<(), ApiError> {
    b.write(Command::ForceEpoch { new_epoch }).await.map(|_| ())
}

/// `PUT /epoch/recovery` (`docs/operations.md#back-up-and-restore-the-metadata`): ask every registered proxy for its epoch and
/// jump past the largest one. Returns the proxies that could not be asked.
pub async fn recover_epoch(b: &Broker) -> Result<Vec<String>, ApiError> {
    let proxies = proxy_addresses(b).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for p in proxies {
        let login = b.config.proxy_login.clone();
        tasks.spawn(async move {
            let epoch = super::proxy_epoch(&p, Duration::from_secs(1), &login).await;
            (p, epoch)
        });
    }
    let (mut max, mut failed) = (0u64, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Some(e))) => max = max.max(e),
            Ok((p, None)) => failed.push(p),
            Err(_) => {}
        }
    }
    failed.sort();
    b.write(Command::RecoverEpoch { observed_max_epoch: max }).await?;
    Ok(failed)
}

pub async fn hosts_that_cannot_fail(b: &Broker) -> Result<Vec<String>, ApiError> {
    b.read(|s| s.hosts_that_cannot_fail()).await
}

/// `GET /config`: the other members' HTTP addresses (mem-broker's replica list).
pub fn other_members(b: &Broker) -> Vec<String> {
    let me = b.node_id();
    b.members().into_iter().filter(|(id, _, _)| *id != me).map(|(_, n, _)| n.http_address).collect()
}

/// `GET /raft/status`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RaftStatus {
    pub node_id: u64,
    /// This member's gRPC address (`advertise_grpc_address`): where coordinators and
    /// `moonraft ctl` reach it. Each member's `raft_address` is its gRPC address too.
    pub grpc_address: String,
    pub state: String,
    pub current_term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// The group this member's data dir belongs to (`None` before initialisation).
    pub group_id: Option<String>,
    /// SHA-256 of this member's own applied store (the `GET /metadata` bytes), so replicas
    /// can be compared without reading through the leader.
    pub state_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub id: u64,
    pub raft_address: String,
    pub http_address: String,
    pub voter: bool,
}

pub fn raft_status(b: &Broker) -> RaftStatus {
    let m = b.raft.metrics().borrow().clone();
    let members = b
        .members()
        .into_iter()
        .map(|(id, n, voter)| MemberStatus { id, raft_address: n.raft_address, http_address: n.http_address, voter })
        .collect();
    RaftStatus {
        node_id: b.node_id(),
        grpc_address: b.config.advertise_grpc_address.clone(),
        state: format!("{:?}", m.state),
        current_term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index,
        last_applied_index: m.last_applied.map(|l| l.index),
        members,
        group_id: b.identity.get(),
        state_sha256: b.sm.read(|d| {
            use sha2::Digest;
            let bytes = serde_json::to_vec(&d.store).unwrap_or_default();
            sha2::Sha256::digest(&bytes).iter().map(|x| format!("{x:02x}")).collect()
        }),
    }
}

pub async fn raft_init(b: &Broker, members: &[Member]) -> Result<(), ApiError> {
    if !members.iter().any(|m| m.id == b.node_id()) {
        return Err(ApiError::InvalidMembership("the members must include the receiving broker".into()));
    }
    super::initialize(b, members).await
}

pub async fn add_learner(b: &Broker, m: Member) -> Result<(), ApiError> {
    if m.id == 0 {
        return Err(ApiError::InvalidMembership("id must be positive".into()));
    }
    if !b.is_initialized() {
        return Err(ApiError::NotInitialized);
    }
    membership_change(b, b.raft.add_learner(m.id, m.node(), true)).await
}

pub async fn change_membership(b: &Broker, voters: Vec<u64>, remove: bool) -> Result<(), ApiError> {
    let known: BTreeSet<u64> = b.members().into_iter().map(|(id, _, _)| id).collect();
    let voters: BTreeSet<u64> = voters.into_iter().collect();
    if voters.is_empty() {
        return Err(ApiError::InvalidMembership("the voter set is empty".into()));
    }
    if let Some(unknown) = voters.iter().find(|v| !known.contains(v)) {
        return Err(ApiError::InvalidMembership(format!("{unknown} is not a member or learner")));
    }
    membership_change(b, b.raft.change_membership(voters, !remove)).await
}

type MembershipResult = Result<
    openraft::raft::ClientWriteResponse<moonraft_raft::TypeConfig>,
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, moonraft_raft::BrokerNode>>,
>;

/// Waits (bounded) for a membership change; a lost leadership is a `RETRY`.
async fn membership_change(
    b: &Broker,
    change: impl std::future::Future<Output = MembershipResult>,
) -> Result<(), ApiError> {
    let timeout = Duration::from_millis(b.config.proposal_timeout_ms * 4);
    match tokio::time::timeout(timeout, change).await {
        Err(_) => Err(ApiError::RetryUnknown),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(openraft::error::RaftError::APIError(e))) => match e {
            openraft::error::ClientWriteError::ForwardToLeader(_) => Err(ApiError::Retry),
            other => Err(ApiError::InvalidMembership(other.to_string())),
        },
        Ok(Err(_)) => Err(ApiError::RetryUnknown),
    }
}
