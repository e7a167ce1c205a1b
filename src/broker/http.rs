//! `/api/v3` over HTTP (`http-api.md`): thin handlers over the service layer. Followers pass
//! every request except `/raft/status` and `/raft/init` to the leader (gRPC `Forward`).

use super::service::{ApiError, Broker};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use moonraft_meta::command::{AutoStep, Command, CommandOutput};
use moonraft_meta::failover::FailoverOutcome;
use moonraft_meta::store::{RegisterProxy, SlotRange};
use moonraft_meta::{view, MetaError, Store};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const FORWARDED_HEADER: &str = "x-moonraft-forwarded";
pub const LEADER_HEADER: &str = "x-moonraft-leader";

type Shared = State<Arc<Broker>>;

pub fn router(broker: Arc<Broker>) -> Router {
    let limit = broker.config.max_body_bytes;
    let api = Router::new()
        .route("/version", get(version))
        .route("/metadata", get(get_metadata).put(put_metadata))
        .route("/clusters/names", get(cluster_names))
        .route("/clusters/meta/:name", get(get_cluster).post(create_cluster).delete(delete_cluster))
        .route("/clusters/info/:name", get(cluster_info))
        .route("/clusters/nodes/:name", axum::routing::patch(add_nodes).put(scale_up_nodes))
        .route("/clusters/free_nodes/:name", delete(delete_free_nodes))
        .route("/clusters/migrations/shrink/:name/:n", post(shrink))
        .route("/clusters/migrations/expand/:name", post(expand))
        .route("/clusters/migrations/auto/:name/:n", post(auto_scale))
        .route("/clusters/migrations", put(commit_migration))
        .route("/clusters/config/:name", axum::routing::patch(change_config))
        .route("/clusters/balance/:name", put(balance))
        .route("/proxies/addresses", get(proxy_addresses))
        .route("/proxies/meta", post(register_proxy))
        .route("/proxies/meta/:addr", get(get_proxy).delete(delete_proxy))
        .route("/proxies/failover/:addr", post(failover))
        .route("/proxies/failed/addresses", get(failed_proxies))
        .route("/failures/:addr/:reporter", post(report_failure))
        .route("/failures", get(failures))
        .route("/epoch", get(get_epoch))
        .route("/epoch/recovery", put(recover_epoch))
        .route("/epoch/:n", put(force_epoch))
        .route("/resources/failures/check", post(resource_check))
        .route("/config", get(get_config).put(put_config))
        .route("/raft/status", get(raft_status))
        .route("/raft/init", post(raft_init))
        .route("/raft/learners", post(raft_add_learner))
        .route("/raft/membership", put(raft_change_membership));
    Router::new()
        .nest("/api/v3", api)
        .layer(middleware::from_fn_with_state(broker.clone(), forward_to_leader))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(broker)
}

fn error_response(e: &ApiError, broker: Option<&Broker>) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match e {
        ApiError::Meta(MetaError::InvalidConfig { key, value, message }) => {
            json!({"error": "INVALID_CONFIG", "key": key, "value": value, "message": message})
        }
        other => json!({"error": other.to_string()}),
    };
    let mut resp = (status, axum::Json(body)).into_response();
    if matches!(e, ApiError::Retry) {
        if let Some((_, node)) = broker.and_then(Broker::leader) {
            if let Ok(v) = HeaderValue::from_str(&node.http_address) {
                resp.headers_mut().insert(LEADER_HEADER, v);
            }
        }
    }
    resp
}

struct ApiResult(Result<Response, ApiError>);

impl IntoResponse for ApiResult {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(r) => r,
            Err(e) => error_response(&e, None),
        }
    }
}

impl<E: Into<ApiError>> From<Result<Response, E>> for ApiResult {
    fn from(r: Result<Response, E>) -> Self {
        ApiResult(r.map_err(Into::into))
    }
}

fn empty() -> Response {
    StatusCode::OK.into_response()
}

fn json_ok<T: Serialize>(v: &T) -> Response {
    axum::Json(v).into_response()
}

/// JSON, gzip-compressed only when the client accepts it (`http-api.md` §1).
fn json_maybe_gzip<T: Serialize>(headers: &HeaderMap, v: &T) -> Response {
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|s| s.split(',').any(|p| p.trim().starts_with("gzip")));
    let body = serde_json::to_vec(v).unwrap_or_default();
    if !accepts_gzip {
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(&body);
    let gz = enc.finish().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json"), (header::CONTENT_ENCODING, "gzip")], gz).into_response()
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

fn limit(broker: &Broker) -> usize {
    broker.config.migration_limit as usize
}

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

fn page<T: Clone>(items: &[T], p: &Page) -> Vec<T> {
    items.iter().skip(p.offset.unwrap_or(0)).take(p.limit.unwrap_or(usize::MAX)).cloned().collect()
}

async fn version() -> Response {
    env!("CARGO_PKG_VERSION").into_response()
}

async fn get_metadata(State(b): Shared, headers: HeaderMap) -> ApiResult {
    ApiResult(b.read(|s| s.clone()).await.map(|s| json_maybe_gzip(&headers, &s)))
}

async fn put_metadata(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let store: Store = parse_body(&body)?;
        b.write(Command::RestoreStore { store: Box::new(store) }).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn cluster_names(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let names = b.read(|s| s.clusters.keys().cloned().collect::<Vec<_>>()).await;
    ApiResult(names.map(|n| json_ok(&json!({"names": page(&n, &p)}))))
}

async fn get_cluster(State(b): Shared, Path(name): Path<String>, headers: HeaderMap) -> ApiResult {
    let lim = limit(&b);
    let c = b.read(|s| view::cluster(s, &name, lim)).await;
    ApiResult(c.map(|c| json_maybe_gzip(&headers, &json!({"cluster": c}))))
}

async fn cluster_info(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    let lim = limit(&b);
    let run = async {
        let info = b.read(|s| view::cluster_info(s, &name, lim)).await?;
        info.map(|i| json_ok(&i)).ok_or(ApiError::Meta(MetaError::ClusterNotFound))
    };
    ApiResult(run.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeNumber {
    node_number: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterNodeNumber {
    cluster_node_number: u64,
}

async fn create_cluster(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: NodeNumber = parse_body(&body)?;
        let default_config = b.config.default_cluster_config();
        b.write(Command::CreateCluster { name, node_number: req.node_number, default_config }).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn delete_cluster(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(b.write(Command::RemoveCluster { name }).await.map(|_| empty()))
}

/// Runs a scaling command under the scale lock (`http-api.md` §8).
async fn scaling(b: &Broker, cmd: Command) -> Result<CommandOutput, ApiError> {
    let Ok(_guard) = b.scale_lock.try_lock() else {
        return Err(ApiError::Meta(MetaError::NodeNumberChanging));
    };
    b.write(cmd).await
}

fn added_nodes(out: CommandOutput) -> Response {
    match out {
        CommandOutput::AddedNodes(nodes) => json_ok(&nodes),
        _ => json_ok(&Vec::<Value>::new()),
    }
}

async fn add_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: NodeNumber = parse_body(&body)?;
        Ok(added_nodes(scaling(&b, Command::AddNodes { name, node_number: req.node_number }).await?))
    };
    ApiResult(run.await)
}

async fn scale_up_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: ClusterNodeNumber = parse_body(&body)?;
        let cmd = Command::ScaleUpNodes { name, cluster_node_number: req.cluster_node_number };
        Ok(added_nodes(scaling(&b, cmd).await?))
    };
    ApiResult(run.await)
}

async fn delete_free_nodes(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(scaling(&b, Command::DeleteFreeNodes { name }).await.map(|_| empty()))
}

/// Numeric path segments that do not parse make the route not match (`http-api.md` §1).
fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

async fn shrink(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    ApiResult(scaling(&b, Command::ShrinkSlots { name, new_node_number: n }).await.map(|_| empty()))
}

async fn expand(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(scaling(&b, Command::ExpandSlots { name }).await.map(|_| empty()))
}

/// `POST /clusters/migrations/auto/{name}/{n}` (`http-api.md` §5.12): one retry-friendly call
/// to resize a cluster. Holds the scale lock for the whole call; the wait for proxies is
/// bounded (`auto_sync_timeout_ms`).
async fn auto_scale(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    let run = async {
        let Ok(_guard) = b.scale_lock.try_lock() else {
            return Err(ApiError::Meta(MetaError::NodeNumberChanging));
        };
        let step = b.write(Command::AutoPhase1 { name: name.clone(), node_number: n }).await?;
        let CommandOutput::Auto(AutoStep::WaitForProxies { proxies, epoch }) = step else {
            return Ok(empty());
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(b.config.auto_sync_timeout_ms);
        let mut failed_rounds = 0;
        loop {
            let mut all_synced = true;
            let mut any_failed = false;
            for p in &proxies {
                match super::proxy_epoch(p, std::time::Duration::from_secs(1)).await {
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
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        b.write(Command::AutoPhase2 { name, node_number: n }).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

#[derive(Deserialize)]
struct MigrationTaskMeta {
    cluster_name: String,
    slot_range: SlotRange,
}

async fn commit_migration(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let task: MigrationTaskMeta = parse_body(&body)?;
        if !moonraft_meta::store::valid_cluster_name(&task.cluster_name) {
            return Err(ApiError::InvalidRequest("invalid cluster name".into()));
        }
        let cmd = Command::CommitMigration {
            cluster_name: task.cluster_name,
            range_list: task.slot_range.range_list,
            tag: task.slot_range.tag,
        };
        b.write(cmd).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn change_config(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let changes: BTreeMap<String, String> = parse_body(&body)?;
        b.write(Command::ChangeConfig { name, changes }).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn balance(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(b.write(Command::BalanceMasters { name }).await.map(|_| empty()))
}

async fn proxy_addresses(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let addrs = b.read(|s| s.all_proxies.keys().cloned().collect::<Vec<_>>()).await;
    ApiResult(addrs.map(|a| json_ok(&json!({"addresses": page(&a, &p)}))))
}

async fn register_proxy(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: RegisterProxy = parse_body(&body)?;
        b.write(Command::AddProxy(req)).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn get_proxy(State(b): Shared, Path(addr): Path<String>, headers: HeaderMap) -> ApiResult {
    let lim = limit(&b);
    let p = b.read(|s| view::proxy(s, &addr, lim)).await;
    ApiResult(p.map(|p| json_maybe_gzip(&headers, &json!({"proxy": p}))))
}

async fn delete_proxy(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    ApiResult(b.write(Command::RemoveProxy { address: addr }).await.map(|_| empty()))
}

async fn failover(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    let run = async {
        let out = b.write(Command::ReplaceFailedProxy { address: addr }).await?;
        match out {
            CommandOutput::Failover(FailoverOutcome::Replaced { replacement, .. }) => {
                let lim = limit(&b);
                let p = b.sm.read(|d| view::proxy(&d.store, &replacement, lim));
                Ok(json_ok(&json!({"proxy": p})))
            }
            CommandOutput::Failover(FailoverOutcome::NoReplacement { .. }) => {
                Err(ApiError::Meta(MetaError::NoAvailableResource))
            }
            _ => Ok(json_ok(&json!({"proxy": null}))),
        }
    };
    ApiResult(run.await)
}

async fn failed_proxies(State(b): Shared) -> ApiResult {
    let addrs = b.read(|s| s.failed_proxies.iter().cloned().collect::<Vec<_>>()).await;
    ApiResult(addrs.map(|a| json_ok(&json!({"addresses": a}))))
}

async fn report_failure(State(b): Shared, Path((addr, reporter)): Path<(String, String)>) -> ApiResult {
    let cmd = Command::AddFailure { address: addr, reporter_id: reporter, now: Broker::now() };
    ApiResult(b.write(cmd).await.map(|_| empty()))
}

async fn failures(State(b): Shared) -> ApiResult {
    let (ttl, quorum) = (b.config.failure_ttl, b.config.failure_quorum as usize);
    let now = Broker::now();
    let list = b.read(|s| s.failures(now, ttl, quorum)).await;
    ApiResult(list.map(|l| json_ok(&json!({"addresses": l}))))
}

async fn get_epoch(State(b): Shared) -> ApiResult {
    ApiResult(b.read(|s| s.global_epoch).await.map(|e| json_ok(&e)))
}

async fn force_epoch(State(b): Shared, Path(n): Path<String>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    ApiResult(b.write(Command::ForceEpoch { new_epoch: n }).await.map(|_| empty()))
}

/// `PUT /epoch/recovery` (`http-api.md` §5.19): ask every registered proxy for its epoch and
/// jump past the largest one.
async fn recover_epoch(State(b): Shared) -> ApiResult {
    let run = async {
        let proxies = b.read(|s| s.all_proxies.keys().cloned().collect::<Vec<_>>()).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for p in proxies {
            tasks.spawn(async move {
                let epoch = super::proxy_epoch(&p, std::time::Duration::from_secs(1)).await;
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
        Ok(json_ok(&json!({"failed_addresses": failed})))
    };
    ApiResult(run.await)
}

async fn resource_check(State(b): Shared) -> ApiResult {
    let hosts = b.read(|s| s.hosts_that_cannot_fail()).await;
    ApiResult(hosts.map(|h| json_ok(&json!({"hosts_cannot_fail": h}))))
}

async fn get_config(State(b): Shared) -> ApiResult {
    let me = b.node_id();
    let others: Vec<String> =
        b.members().into_iter().filter(|(id, _, _)| *id != me).map(|(_, n, _)| n.http_address).collect();
    ApiResult(Ok(json_ok(&json!({"replica_addresses": others}))))
}

async fn put_config() -> ApiResult {
    ApiResult(Err(ApiError::UseRaftMembershipApi))
}

async fn raft_status(State(b): Shared) -> Response {
    let m = b.raft.metrics().borrow().clone();
    let members: Vec<Value> = b
        .members()
        .into_iter()
        .map(|(id, n, voter)| json!({"id": id, "raft_address": n.raft_address, "http_address": n.http_address, "voter": voter}))
        .collect();
    json_ok(&json!({
        "node_id": b.node_id(),
        "state": format!("{:?}", m.state),
        "current_term": m.current_term,
        "leader_id": m.current_leader,
        "last_log_index": m.last_log_index,
        "last_applied_index": m.last_applied.map(|l| l.index),
        "members": members,
    }))
}

#[derive(Deserialize)]
struct InitRequest {
    members: Vec<super::config::Member>,
}

async fn raft_init(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: InitRequest = parse_body(&body)?;
        if !req.members.iter().any(|m| m.id == b.node_id()) {
            return Err(ApiError::InvalidMembership("the members must include the receiving broker".into()));
        }
        super::initialize(&b, &req.members).await?;
        Ok(empty())
    };
    ApiResult(run.await)
}

async fn raft_add_learner(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let m: super::config::Member = parse_body(&body)?;
        if m.id == 0 {
            return Err(ApiError::InvalidMembership("id must be positive".into()));
        }
        if !b.is_initialized() {
            return Err(ApiError::NotInitialized);
        }
        membership_change(&b, b.raft.add_learner(m.id, m.node(), true)).await
    };
    ApiResult(run.await)
}

type MembershipResult = Result<
    openraft::raft::ClientWriteResponse<moonraft_raft::TypeConfig>,
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, moonraft_raft::BrokerNode>>,
>;

/// Waits (bounded) for a membership change; a lost leadership is a `RETRY`.
async fn membership_change(
    b: &Broker,
    change: impl std::future::Future<Output = MembershipResult>,
) -> Result<Response, ApiError> {
    let timeout = std::time::Duration::from_millis(b.config.proposal_timeout_ms * 4);
    match tokio::time::timeout(timeout, change).await {
        Err(_) => Err(ApiError::Retry),
        Ok(Ok(_)) => Ok(empty()),
        Ok(Err(openraft::error::RaftError::APIError(e))) => match e {
            openraft::error::ClientWriteError::ForwardToLeader(_) => Err(ApiError::Retry),
            other => Err(ApiError::InvalidMembership(other.to_string())),
        },
        Ok(Err(_)) => Err(ApiError::Retry),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipRequest {
    voters: Vec<u64>,
    #[serde(default)]
    remove: bool,
}

async fn raft_change_membership(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: MembershipRequest = parse_body(&body)?;
        let known: std::collections::BTreeSet<u64> = b.members().into_iter().map(|(id, _, _)| id).collect();
        let voters: std::collections::BTreeSet<u64> = req.voters.iter().copied().collect();
        if voters.is_empty() {
            return Err(ApiError::InvalidMembership("the voter set is empty".into()));
        }
        if let Some(unknown) = voters.iter().find(|v| !known.contains(v)) {
            return Err(ApiError::InvalidMembership(format!("{unknown} is not a member or learner")));
        }
        membership_change(&b, b.raft.change_membership(voters, !req.remove)).await
    };
    ApiResult(run.await)
}

/// Followers hand requests to the leader; the leader answers them itself.
async fn forward_to_leader(State(b): Shared, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let local = path == "/api/v3/raft/status" || path == "/api/v3/raft/init" || !path.starts_with("/api/v3/");
    if local || b.is_leader() {
        return next.run(req).await;
    }
    if !b.is_initialized() {
        return error_response(&ApiError::NotInitialized, None);
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return error_response(&ApiError::Retry, Some(&b));
    }
    let Some((_, leader)) = b.leader() else {
        return error_response(&ApiError::Retry, None);
    };
    match super::grpc::forward(&b, &leader, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(leader = %leader.raft_address, "forwarding to the leader failed: {e}");
            error_response(&ApiError::Retry, Some(&b))
        }
    }
}

/// Converts a forwarded request back into a response on the leader.
pub async fn execute_forwarded(
    router: Router,
    method: Method,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Response {
    let mut builder = axum::http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder = builder.header(FORWARDED_HEADER, "1");
    let req = match builder.body(Body::from(body)) {
        Ok(r) => r,
        Err(e) => return error_response(&ApiError::InvalidRequest(e.to_string()), None),
    };
    use tower::ServiceExt;
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}
