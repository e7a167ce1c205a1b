//! `/api/v3` over HTTP (`http-api.md`): thin handlers over the service layer. Followers pass
//! every request except `/raft/status` and `/raft/init` to the leader (gRPC `Forward`).

use super::api;
use super::service::{ApiError, Broker};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use moonraft_meta::store::SlotRange;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
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
        .route("/proxies/recover/:addr", post(recover_proxy))
        .route("/failures/:addr/:reporter", post(report_failure).delete(withdraw_failure))
        .route("/coordinators", get(coordinators))
        .route("/coordinators/:reporter", put(coordinator_alive))
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
        // Outermost: nothing is forwarded or parsed for a caller without the right token.
        .layer(middleware::from_fn_with_state(broker.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(broker)
}

fn error_response(e: &ApiError, broker: Option<&Broker>) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(e.body())).into_response();
    if matches!(e, ApiError::Retry | ApiError::RetryUnknown) {
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

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// An empty 200 for operations without a result.
fn done(r: Result<(), ApiError>) -> ApiResult {
    ApiResult(r.map(|_| empty()))
}

async fn version() -> Response {
    api::version().into_response()
}

async fn get_metadata(State(b): Shared, headers: HeaderMap) -> ApiResult {
    ApiResult(api::metadata(&b).await.map(|s| json_maybe_gzip(&headers, &s)))
}

async fn put_metadata(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::restore_metadata(&b, parse_body(&body)?).await };
    done(run.await)
}

async fn cluster_names(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let names = api::cluster_names(&b).await;
    ApiResult(names.map(|n| json_ok(&json!({"names": api::page(&n, p.offset, p.limit)}))))
}

/// With an `ETag` of the cluster's epoch, for conditional writes (`If-Match`).
async fn get_cluster(State(b): Shared, Path(name): Path<String>, headers: HeaderMap) -> ApiResult {
    ApiResult(api::cluster(&b, &name).await.map(|c| {
        let etag = c.as_ref().and_then(|c| HeaderValue::from_str(&format!("\"{}\"", c.epoch)).ok());
        let mut resp = json_maybe_gzip(&headers, &json!({"cluster": c}));
        if let Some(etag) = etag {
            resp.headers_mut().insert(header::ETAG, etag);
        }
        resp
    }))
}

/// `If-Match: "<epoch>"` (also unquoted or weak): the epoch a conditional write expects.
fn if_match_epoch(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = v.to_str().unwrap_or_default().trim();
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<u64>().map(Some).map_err(|_| {
        ApiError::InvalidRequest(format!("If-Match: expected a cluster epoch such as \"12\", got {text:?}"))
    })
}

async fn cluster_info(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(api::cluster_info(&b, &name).await.map(|i| json_ok(&i)))
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
        api::create_cluster(&b, name, req.node_number).await
    };
    done(run.await)
}

async fn delete_cluster(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::delete_cluster(&b, name).await)
}

async fn add_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: NodeNumber = parse_body(&body)?;
        api::add_nodes(&b, name, req.node_number).await
    };
    ApiResult(run.await.map(|n| json_ok(&n)))
}

async fn scale_up_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: ClusterNodeNumber = parse_body(&body)?;
        api::scale_up_nodes(&b, name, req.cluster_node_number).await
    };
    ApiResult(run.await.map(|n| json_ok(&n)))
}

async fn delete_free_nodes(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::delete_free_nodes(&b, name).await)
}

/// Numeric path segments that do not parse make the route not match (`http-api.md` §1).
fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

async fn shrink(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::shrink(&b, name, n).await)
}

async fn expand(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::expand(&b, name).await)
}

async fn auto_scale(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::auto_scale(&b, name, n).await)
}

#[derive(Deserialize)]
struct MigrationTaskMeta {
    cluster_name: String,
    slot_range: SlotRange,
}

async fn commit_migration(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let task: MigrationTaskMeta = parse_body(&body)?;
        api::commit_migration(&b, task.cluster_name, task.slot_range).await
    };
    done(run.await)
}

async fn change_config(State(b): Shared, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let run = async {
        let expected = if_match_epoch(&headers)?;
        let changes: BTreeMap<String, String> = parse_body(&body)?;
        api::change_config(&b, name, changes, expected).await
    };
    done(run.await)
}

async fn balance(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::balance(&b, name).await)
}

async fn proxy_addresses(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let addrs = api::proxy_addresses(&b).await;
    ApiResult(addrs.map(|a| json_ok(&json!({"addresses": api::page(&a, p.offset, p.limit)}))))
}

async fn register_proxy(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::register_proxy(&b, parse_body(&body)?).await };
    done(run.await)
}

async fn get_proxy(State(b): Shared, Path(addr): Path<String>, headers: HeaderMap) -> ApiResult {
    ApiResult(api::proxy(&b, &addr).await.map(|p| json_maybe_gzip(&headers, &json!({"proxy": p}))))
}

async fn delete_proxy(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    done(api::delete_proxy(&b, addr).await)
}

async fn failover(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    ApiResult(api::failover(&b, addr).await.map(|p| json_ok(&json!({"proxy": p}))))
}

async fn failed_proxies(State(b): Shared) -> ApiResult {
    ApiResult(api::failed_proxies(&b).await.map(|a| json_ok(&json!({"addresses": a}))))
}

async fn report_failure(State(b): Shared, Path((addr, reporter)): Path<(String, String)>) -> ApiResult {
    done(api::report_failure(&b, addr, reporter).await)
}

async fn withdraw_failure(State(b): Shared, Path((addr, reporter)): Path<(String, String)>) -> ApiResult {
    ApiResult(api::withdraw_failure(&b, addr, reporter).await.map(|w| json_ok(&json!({"withdrawn": w}))))
}

async fn recover_proxy(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    ApiResult(api::recover_proxy(&b, addr).await.map(|r| json_ok(&json!({"recovered": r}))))
}

async fn coordinator_alive(State(b): Shared, Path(reporter): Path<String>) -> ApiResult {
    done(api::coordinator_alive(&b, reporter).await)
}

async fn coordinators(State(b): Shared) -> ApiResult {
    ApiResult(api::coordinators(&b).await.map(|c| json_ok(&c)))
}

async fn failures(State(b): Shared) -> ApiResult {
    ApiResult(api::failures(&b).await.map(|l| json_ok(&json!({"addresses": l}))))
}

async fn get_epoch(State(b): Shared) -> ApiResult {
    ApiResult(api::epoch(&b).await.map(|e| json_ok(&e)))
}

async fn force_epoch(State(b): Shared, Path(n): Path<String>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::force_epoch(&b, n).await)
}

async fn recover_epoch(State(b): Shared) -> ApiResult {
    ApiResult(api::recover_epoch(&b).await.map(|f| json_ok(&json!({"failed_addresses": f}))))
}

async fn resource_check(State(b): Shared) -> ApiResult {
    ApiResult(api::hosts_that_cannot_fail(&b).await.map(|h| json_ok(&json!({"hosts_cannot_fail": h}))))
}

async fn get_config(State(b): Shared) -> ApiResult {
    ApiResult(Ok(json_ok(&json!({"replica_addresses": api::other_members(&b)}))))
}

async fn put_config() -> ApiResult {
    ApiResult(Err(ApiError::UseRaftMembershipApi))
}

async fn raft_status(State(b): Shared) -> Response {
    json_ok(&api::raft_status(&b))
}

#[derive(Deserialize)]
struct InitRequest {
    members: Vec<super::config::Member>,
}

async fn raft_init(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: InitRequest = parse_body(&body)?;
        api::raft_init(&b, &req.members).await
    };
    done(run.await)
}

async fn raft_add_learner(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::add_learner(&b, parse_body(&body)?).await };
    done(run.await)
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
        api::change_membership(&b, req.voters, req.remove).await
    };
    done(run.await)
}

/// The token check of `crate::auth`: 401 `{"error":"UNAUTHORIZED"}` without a valid token, 403
/// `{"error":"FORBIDDEN"}` for the read token on a write.
async fn authorize(State(b): Shared, req: Request, next: Next) -> Response {
    let need = crate::auth::http_need(req.method());
    let presented = crate::auth::bearer(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    match b.config.credentials.check(need, presented) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            let status = match denied {
                crate::auth::Denied::Unauthorized => StatusCode::UNAUTHORIZED,
                crate::auth::Denied::Forbidden => StatusCode::FORBIDDEN,
            };
            let mut resp = (status, axum::Json(json!({"error": denied.code()}))).into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Followers hand requests to the leader; the leader answers them itself.
async fn forward_to_leader(State(b): Shared, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let local = path == "/api/v3/raft/status"
        || path == "/api/v3/raft/init"
        || !path.starts_with("/api/v3/")
        || (b.config.unsafe_local_reads && req.method() == Method::GET);
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
            error_response(&ApiError::RetryUnknown, Some(&b))
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
