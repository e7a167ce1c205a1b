//! `/api/v3` over HTTP (`http-api.md`): thin handlers over the service layer. Followers pass
//! every request except `/raft/status` and `/raft/init` to the leader (gRPC `Forward`).

use super::api::{self, ClusterInfoView, CoordinatorsView, RaftStatus};
use super::openapi::*;
use super::service::{ApiError, Broker};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use moonraft_meta::store::{RegisterProxy, SlotRange};
use moonraft_meta::view::Node;
use moonraft_meta::Store;
use moonraft_proto::raft::raft_internal_client::RaftInternalClient;
use moonraft_proto::raft::{ForwardRequest, Header};
use moonraft_raft::BrokerNode;
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
    let api = operations().route(OPENAPI_PATH, get(openapi_document));
    let registry = Arc::new(super::exposition::registry(&broker));
    let metrics = get(move || {
        let registry = registry.clone();
        async move {
            let body = moonraft_proxy::metrics::render(&registry);
            ([(header::CONTENT_TYPE, crate::metrics_http::CONTENT_TYPE_OPENMETRICS)], body).into_response()
        }
    });
    Router::new()
        .nest("/api/v3", api)
        // Outside /api/v3: answered by this member itself (not forwarded to the leader).
        .route("/metrics", metrics)
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(broker.clone(), forward_to_leader))
        .layer(middleware::from_fn(json_errors))
        // Nothing is forwarded or parsed for a caller without the right token.
        .layer(middleware::from_fn_with_state(broker.clone(), authorize))
        // Outermost: every request is counted, refused ones too.
        .layer(middleware::from_fn_with_state(broker.clone(), measure))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(broker)
}

/// Where the OpenAPI document is, under `/api/v3`.
const OPENAPI_PATH: &str = "/openapi.json";
/// The same, as the middlewares see it (answered by every member itself, without a token).
const OPENAPI_URI: &str = "/api/v3/openapi.json";

/// The OpenAPI 3 document of `/api/v3` (see `openapi.rs`). Public: it holds nothing that is
/// not in the source, and tools fetch it before they have credentials.
async fn openapi_document() -> Response {
    use utoipa::OpenApi;
    // Built once: it never changes while the process runs.
    static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| Bytes::from(serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default()));
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// Rejections made by axum itself (a query or path that does not parse, a body over the
/// limit, no such route, a method the route lacks) come as plain text or empty; every error of
/// this API is JSON `{"error": CODE, "message": …}`, so they are rewritten in that form.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "INVALID_REQUEST",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        _ => "BAD_REQUEST",
    };
    let (mut parts, body) = resp.into_parts();
    // Axum's rejection texts are one line; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let body = if message.is_empty() { json!({"error": code}) } else { json!({"error": code, "message": message}) };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body.to_string()))
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

/// JSON, gzip-compressed only when the client accepts it (as undermoon's mem-broker does).
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

/// Paging of the list endpoints.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Items to skip.
    offset: Option<usize>,
    /// Most items to return.
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NodeNumber {
    /// Nodes to create or add: a positive multiple of 4.
    #[schema(minimum = 4, multiple_of = 4)]
    node_number: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClusterNodeNumber {
    /// The cluster's node number afterwards: a multiple of 4.
    #[schema(minimum = 4, multiple_of = 4)]
    cluster_node_number: u64,
}

/// A finished migration, as its proxy reports it.
#[derive(Deserialize, utoipa::ToSchema)]
struct MigrationTaskMeta {
    cluster_name: String,
    slot_range: SlotRange,
}

/// Numeric path segments that do not parse make the route not match (a 404, as for any
/// unknown path).
fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// An empty 200 for operations without a result.
fn done(r: Result<(), ApiError>) -> ApiResult {
    ApiResult(r.map(|_| empty()))
}

// Every handler below carries its OpenAPI description (`#[utoipa::path]`); `api_operations!`
// at the end of this file turns the list of handlers into both the router and the document,
// so a route cannot exist without its description or the other way round. Responses every
// operation shares (401/403, 409 RETRY, 503, 500 …) are added by `openapi::CommonResponses`.

/// This broker's version.
#[utoipa::path(get, path = "/version", tag = "broker",
    responses((status = 200, description = "The version", body = String, content_type = "text/plain")))]
async fn version() -> Response {
    api::version().into_response()
}

/// The whole replicated store (gzip when accepted): the backup format of `PUT /metadata`.
#[utoipa::path(get, path = "/metadata", tag = "metadata",
    responses((status = 200, description = "The store", body = Store)))]
async fn get_metadata(State(b): Shared, headers: HeaderMap) -> ApiResult {
    ApiResult(api::metadata(&b).await.map(|s| json_maybe_gzip(&headers, &s)))
}

/// Replaces the whole store with a document of `GET /metadata` (a restore). The document is
/// validated first: `400 INVALID_METADATA` names the first problem.
#[utoipa::path(put, path = "/metadata", tag = "metadata", request_body = Store,
    responses((status = 200, description = "Restored")))]
async fn put_metadata(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::restore_metadata(&b, parse_body(&body)?).await };
    done(run.await)
}

/// Cluster names, in order, paged.
#[utoipa::path(get, path = "/clusters/names", tag = "clusters", params(Page),
    responses((status = 200, description = "Names", body = NamesReply)))]
async fn cluster_names(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let names = api::cluster_names(&b).await;
    ApiResult(names.map(|n| json_ok(&NamesReply { names: api::page(&n, p.offset, p.limit) })))
}

/// A cluster's nodes, slots and config; `null` when there is no such cluster. The `ETag` is
/// the cluster's epoch, for `If-Match` on `PATCH /clusters/config/{name}`.
#[utoipa::path(get, path = "/clusters/meta/{name}", tag = "clusters", params(ClusterName),
    responses((status = 200, description = "The cluster, or null", body = ClusterReply)))]
async fn get_cluster(State(b): Shared, Path(name): Path<String>, headers: HeaderMap) -> ApiResult {
    ApiResult(api::cluster(&b, &name).await.map(|cluster| {
        let etag = cluster.as_ref().and_then(|c| HeaderValue::from_str(&format!("\"{}\"", c.epoch)).ok());
        let mut resp = json_maybe_gzip(&headers, &ClusterReply { cluster });
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

/// Node counts and whether a migration runs, with the progress of each running migration as
/// its source proxy reports it.
#[utoipa::path(get, path = "/clusters/info/{name}", tag = "clusters", params(ClusterName),
    responses((status = 200, description = "The summary", body = ClusterInfoView)))]
async fn cluster_info(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    ApiResult(api::cluster_info(&b, &name).await.map(|i| json_ok(&i)))
}

/// Creates a cluster of `node_number` nodes (a multiple of 4) on free proxies.
#[utoipa::path(post, path = "/clusters/meta/{name}", tag = "clusters", params(ClusterName), request_body = NodeNumber,
    responses((status = 200, description = "Created")))]
async fn create_cluster(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: NodeNumber = parse_body(&body)?;
        api::create_cluster(&b, name, req.node_number).await
    };
    done(run.await)
}

/// Deletes a cluster; its proxies become free.
#[utoipa::path(delete, path = "/clusters/meta/{name}", tag = "clusters", params(ClusterName),
    responses((status = 200, description = "Deleted")))]
async fn delete_cluster(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::delete_cluster(&b, name).await)
}

/// Adds `node_number` nodes without slots (the first step of a scale-out).
#[utoipa::path(patch, path = "/clusters/nodes/{name}", tag = "scaling", params(ClusterName), request_body = NodeNumber,
    responses((status = 200, description = "The added nodes", body = Vec<Node>)))]
async fn add_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: NodeNumber = parse_body(&body)?;
        api::add_nodes(&b, name, req.node_number).await
    };
    ApiResult(run.await.map(|n| json_ok(&n)))
}

/// Adds nodes until the cluster has `cluster_node_number` (idempotent).
#[utoipa::path(put, path = "/clusters/nodes/{name}", tag = "scaling", params(ClusterName), request_body = ClusterNodeNumber,
    responses((status = 200, description = "The added nodes", body = Vec<Node>)))]
async fn scale_up_nodes(State(b): Shared, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let run = async {
        let req: ClusterNodeNumber = parse_body(&body)?;
        api::scale_up_nodes(&b, name, req.cluster_node_number).await
    };
    ApiResult(run.await.map(|n| json_ok(&n)))
}

/// Removes the cluster's nodes that hold no slots (the last step of a scale-in).
#[utoipa::path(delete, path = "/clusters/free_nodes/{name}", tag = "scaling", params(ClusterName),
    responses((status = 200, description = "Removed")))]
async fn delete_free_nodes(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::delete_free_nodes(&b, name).await)
}

/// Moves slots off the nodes beyond the first `n` (scale-in).
#[utoipa::path(post, path = "/clusters/migrations/shrink/{name}/{n}", tag = "scaling", params(ClusterName, NodeCount),
    responses((status = 200, description = "Migrations planned")))]
async fn shrink(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::shrink(&b, name, n).await)
}

/// Spreads slots evenly over all of the cluster's nodes (scale-out).
#[utoipa::path(post, path = "/clusters/migrations/expand/{name}", tag = "scaling", params(ClusterName),
    responses((status = 200, description = "Migrations planned")))]
async fn expand(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::expand(&b, name).await)
}

/// Resizes the cluster to `n` nodes in one retry-friendly call (add nodes, wait for the
/// proxies, plan the migrations; or plan a shrink, or remove free nodes).
#[utoipa::path(post, path = "/clusters/migrations/auto/{name}/{n}", tag = "scaling", params(ClusterName, NodeCount),
    responses((status = 200, description = "The current step is done")))]
async fn auto_scale(State(b): Shared, Path((name, n)): Path<(String, String)>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::auto_scale(&b, name, n).await)
}

/// A proxy reports a finished migration; the slots change owner.
#[utoipa::path(put, path = "/clusters/migrations", tag = "scaling", request_body = MigrationTaskMeta,
    responses((status = 200, description = "Committed")))]
async fn commit_migration(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let task: MigrationTaskMeta = parse_body(&body)?;
        api::commit_migration(&b, task.cluster_name, task.slot_range).await
    };
    done(run.await)
}

/// Changes cluster config keys (`compression_strategy`, `migration_config.*`); with
/// `If-Match: "<epoch>"` only while the cluster is at that epoch (else 412).
#[utoipa::path(patch, path = "/clusters/config/{name}", tag = "clusters", params(ClusterName, IfMatch),
    request_body(content = BTreeMap<String, String>, description = "Config keys and their new values"),
    responses((status = 200, description = "Changed"),
        (status = 412, description = "EPOCH_MISMATCH: the cluster is no longer at the If-Match epoch (the body says the current one)",
            body = super::openapi::ErrorBody)))]
async fn change_config(State(b): Shared, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let run = async {
        let expected = if_match_epoch(&headers)?;
        let changes: BTreeMap<String, String> = parse_body(&body)?;
        api::change_config(&b, name, changes, expected).await
    };
    done(run.await)
}

/// Swaps master roles so that every proxy holds one master.
#[utoipa::path(put, path = "/clusters/balance/{name}", tag = "clusters", params(ClusterName),
    responses((status = 200, description = "Balanced")))]
async fn balance(State(b): Shared, Path(name): Path<String>) -> ApiResult {
    done(api::balance(&b, name).await)
}

/// Registered proxy addresses, in order, paged.
#[utoipa::path(get, path = "/proxies/addresses", tag = "proxies", params(Page),
    responses((status = 200, description = "Addresses", body = AddressesReply)))]
async fn proxy_addresses(State(b): Shared, Query(p): Query<Page>) -> ApiResult {
    let addrs = api::proxy_addresses(&b).await;
    ApiResult(addrs.map(|a| json_ok(&AddressesReply { addresses: api::page(&a, p.offset, p.limit) })))
}

/// Registers a proxy and its two Redis nodes (idempotent for the same document).
#[utoipa::path(post, path = "/proxies/meta", tag = "proxies", request_body = RegisterProxy,
    responses((status = 200, description = "Registered")))]
async fn register_proxy(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::register_proxy(&b, parse_body(&body)?).await };
    done(run.await)
}

/// What a proxy serves: its nodes, peers and cluster config; `null` when it is not registered.
#[utoipa::path(get, path = "/proxies/meta/{address}", tag = "proxies", params(ProxyAddress),
    responses((status = 200, description = "The proxy, or null", body = ProxyReply)))]
async fn get_proxy(State(b): Shared, Path(addr): Path<String>, headers: HeaderMap) -> ApiResult {
    ApiResult(api::proxy(&b, &addr).await.map(|proxy| json_maybe_gzip(&headers, &ProxyReply { proxy })))
}

/// Unregisters a proxy that is in no cluster.
#[utoipa::path(delete, path = "/proxies/meta/{address}", tag = "proxies", params(ProxyAddress),
    responses((status = 200, description = "Removed")))]
async fn delete_proxy(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    done(api::delete_proxy(&b, addr).await)
}

/// Replaces a failed proxy by a free one and promotes its replicas; the replacement's view.
#[utoipa::path(post, path = "/proxies/failover/{address}", tag = "failures", params(ProxyAddress),
    responses((status = 200, description = "The replacement proxy, or null", body = ProxyReply)))]
async fn failover(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    ApiResult(api::failover(&b, addr).await.map(|proxy| json_ok(&ProxyReply { proxy })))
}

/// Proxies marked failed.
#[utoipa::path(get, path = "/proxies/failed/addresses", tag = "failures",
    responses((status = 200, description = "Addresses", body = AddressesReply)))]
async fn failed_proxies(State(b): Shared) -> ApiResult {
    ApiResult(api::failed_proxies(&b).await.map(|addresses| json_ok(&AddressesReply { addresses })))
}

/// A coordinator reports that it cannot reach a proxy.
#[utoipa::path(post, path = "/failures/{address}/{reporter_id}", tag = "failures", params(ProxyAddress, ReporterId),
    responses((status = 200, description = "Recorded")))]
async fn report_failure(State(b): Shared, Path((addr, reporter)): Path<(String, String)>) -> ApiResult {
    done(api::report_failure(&b, addr, reporter).await)
}

/// A coordinator reaches the proxy again: its report is withdrawn.
#[utoipa::path(delete, path = "/failures/{address}/{reporter_id}", tag = "failures", params(ProxyAddress, ReporterId),
    responses((status = 200, description = "Whether there was a report", body = WithdrawnReply)))]
async fn withdraw_failure(State(b): Shared, Path((addr, reporter)): Path<(String, String)>) -> ApiResult {
    ApiResult(api::withdraw_failure(&b, addr, reporter).await.map(|withdrawn| json_ok(&WithdrawnReply { withdrawn })))
}

/// A failed proxy that answers again leaves the failed set.
#[utoipa::path(post, path = "/proxies/recover/{address}", tag = "failures", params(ProxyAddress),
    responses((status = 200, description = "Whether it was failed", body = RecoveredReply)))]
async fn recover_proxy(State(b): Shared, Path(addr): Path<String>) -> ApiResult {
    ApiResult(api::recover_proxy(&b, addr).await.map(|recovered| json_ok(&RecoveredReply { recovered })))
}

/// A coordinator's heartbeat: the failure quorum counts the live coordinators.
#[utoipa::path(put, path = "/coordinators/{reporter_id}", tag = "failures", params(ReporterId),
    responses((status = 200, description = "Recorded")))]
async fn coordinator_alive(State(b): Shared, Path(reporter): Path<String>) -> ApiResult {
    done(api::coordinator_alive(&b, reporter).await)
}

/// The coordinators on record, which of them are alive, and the reports a failover needs.
#[utoipa::path(get, path = "/coordinators", tag = "failures",
    responses((status = 200, description = "Coordinators", body = CoordinatorsView)))]
async fn coordinators(State(b): Shared) -> ApiResult {
    ApiResult(api::coordinators(&b).await.map(|c| json_ok(&c)))
}

/// Proxies with enough fresh reports to be failed over.
#[utoipa::path(get, path = "/failures", tag = "failures",
    responses((status = 200, description = "Addresses", body = AddressesReply)))]
async fn failures(State(b): Shared) -> ApiResult {
    ApiResult(api::failures(&b).await.map(|addresses| json_ok(&AddressesReply { addresses })))
}

/// The global epoch.
#[utoipa::path(get, path = "/epoch", tag = "epoch",
    responses((status = 200, description = "The epoch", body = u64, content_type = "application/json")))]
async fn get_epoch(State(b): Shared) -> ApiResult {
    ApiResult(api::epoch(&b).await.map(|e| json_ok(&e)))
}

/// Sets the global epoch to `n` if that is larger (recovery tool).
#[utoipa::path(put, path = "/epoch/{n}", tag = "epoch", params(("n" = u64, Path, description = "The new epoch, above the current one (at most 2^53 - 1)")),
    responses((status = 200, description = "Set")))]
async fn force_epoch(State(b): Shared, Path(n): Path<String>) -> ApiResult {
    let Ok(n) = n.parse::<u64>() else { return ApiResult(Ok(not_found())) };
    done(api::force_epoch(&b, n).await)
}

/// Asks every proxy for its epoch and moves the global epoch past the largest.
#[utoipa::path(put, path = "/epoch/recovery", tag = "epoch",
    responses((status = 200, description = "Proxies that could not be asked", body = FailedAddressesReply)))]
async fn recover_epoch(State(b): Shared) -> ApiResult {
    ApiResult(api::recover_epoch(&b).await.map(|failed_addresses| json_ok(&FailedAddressesReply { failed_addresses })))
}

/// Hosts whose loss would leave some cluster without a replacement.
#[utoipa::path(post, path = "/resources/failures/check", tag = "failures",
    responses((status = 200, description = "Hosts", body = HostsReply)))]
async fn resource_check(State(b): Shared) -> ApiResult {
    ApiResult(api::hosts_that_cannot_fail(&b).await.map(|hosts_cannot_fail| json_ok(&HostsReply { hosts_cannot_fail })))
}

/// The other members' HTTP addresses (mem-broker's replica list).
#[utoipa::path(get, path = "/config", tag = "raft",
    responses((status = 200, description = "Members", body = ConfigReply)))]
async fn get_config(State(b): Shared) -> ApiResult {
    ApiResult(Ok(json_ok(&ConfigReply { replica_addresses: api::other_members(&b) })))
}

/// mem-broker's replica configuration: refused, membership is changed through `/raft/*`.
#[utoipa::path(put, path = "/config", tag = "raft",
    responses((status = 409, description = "USE_RAFT_MEMBERSHIP_API", body = ErrorBody)))]
async fn put_config() -> ApiResult {
    ApiResult(Err(ApiError::UseRaftMembershipApi))
}

/// This member's Raft state (answered locally, also before initialisation).
#[utoipa::path(get, path = "/raft/status", tag = "raft",
    responses((status = 200, description = "Status", body = RaftStatus)))]
async fn raft_status(State(b): Shared) -> Response {
    json_ok(&api::raft_status(&b))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InitRequest {
    members: Vec<super::config::Member>,
}

/// Initialises a new group with these voters (answered locally; must include this member).
#[utoipa::path(post, path = "/raft/init", tag = "raft", request_body = InitRequest,
    responses((status = 200, description = "Initialised")))]
async fn raft_init(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: InitRequest = parse_body(&body)?;
        api::raft_init(&b, &req.members).await
    };
    done(run.await)
}

/// Adds a member as a learner and waits until it has caught up.
#[utoipa::path(post, path = "/raft/learners", tag = "raft", request_body = super::config::Member,
    responses((status = 200, description = "Added")))]
async fn raft_add_learner(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async { api::add_learner(&b, parse_body(&body)?).await };
    done(run.await)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MembershipRequest {
    /// The new voter set (ids of members or learners).
    voters: Vec<u64>,
    /// Also drop members that are not in `voters` (else they stay as learners).
    #[serde(default)]
    remove: bool,
}

/// Changes the voter set.
#[utoipa::path(put, path = "/raft/membership", tag = "raft", request_body = MembershipRequest,
    responses((status = 200, description = "Changed")))]
async fn raft_change_membership(State(b): Shared, body: Bytes) -> ApiResult {
    let run = async {
        let req: MembershipRequest = parse_body(&body)?;
        api::change_membership(&b, req.voters, req.remove).await
    };
    done(run.await)
}

api_operations!(
    version,
    get_metadata,
    put_metadata,
    cluster_names,
    get_cluster,
    create_cluster,
    delete_cluster,
    cluster_info,
    add_nodes,
    scale_up_nodes,
    delete_free_nodes,
    shrink,
    expand,
    auto_scale,
    commit_migration,
    change_config,
    balance,
    proxy_addresses,
    register_proxy,
    get_proxy,
    delete_proxy,
    failover,
    failed_proxies,
    recover_proxy,
    report_failure,
    withdraw_failure,
    coordinators,
    coordinator_alive,
    failures,
    get_epoch,
    recover_epoch,
    force_epoch,
    resource_check,
    get_config,
    put_config,
    raft_status,
    raft_init,
    raft_add_learner,
    raft_change_membership,
);

/// The token check of `crate::auth`: 401 `{"error":"UNAUTHORIZED"}` without a valid token, 403
/// `{"error":"FORBIDDEN"}` for the read token on a write.
async fn authorize(State(b): Shared, req: Request, next: Next) -> Response {
    if req.method() == Method::GET && req.uri().path() == OPENAPI_URI {
        return next.run(req).await;
    }
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

/// Counts and times each request by method and route template (`/api/v3/clusters/meta/{name}`,
/// never the path the client sent, so the label values stay bounded).
async fn measure(State(b): Shared, mut req: Request, next: Next) -> Response {
    use super::metrics::REQUEST_ID;
    let started = std::time::Instant::now();
    // The request's id goes into its span, into the request (a forward carries it to the
    // leader) and into the response.
    let id = b.metrics.request_id(b.node_id(), req.headers().get(REQUEST_ID).map(|v| v.as_bytes()));
    let id_header = HeaderValue::from_str(&id).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let route = route.as_deref().unwrap_or("unmatched");
    let span = tracing::info_span!("request", id = %id, method, route);
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let (status, elapsed) = (resp.status().as_u16(), started.elapsed());
    b.metrics.http_request(method, route, status, elapsed);
    // Requests that may change metadata are logged (operators' changes are rare, and worth a
    // line each), in the request's span: a forwarded one shows on the follower and the leader
    // with the same id.
    if !matches!(method, "GET" | "HEAD" | "OPTIONS") {
        span.in_scope(|| tracing::info!(status, elapsed_ms = elapsed.as_millis() as u64, "answered"));
    }
    if let Some(v) = id_header {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Followers hand requests to the leader; the leader answers them itself.
async fn forward_to_leader(State(b): Shared, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let local = path == "/api/v3/raft/status"
        || path == OPENAPI_URI
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
    let forwarded = forward(&b, &leader, req).await;
    b.metrics.forwarded(super::metrics::Surface::Http, forwarded.is_ok());
    match forwarded {
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

/// Sends an HTTP request to the leader over gRPC and rebuilds its response.
pub async fn forward(broker: &Broker, leader: &BrokerNode, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, broker.config.max_body_bytes).await.map_err(|e| e.to_string())?;
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| *n != axum::http::header::HOST && *n != axum::http::header::CONTENT_LENGTH)
        .map(|(n, v)| Header { name: n.as_str().to_owned(), value: v.as_bytes().to_vec() })
        .collect();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let msg = ForwardRequest { method: parts.method.as_str().to_owned(), path_and_query, headers, body: body.to_vec() };
    let timeout = broker.config.forward_wait(super::config::ForwardedCall::of_path(parts.uri.path()));
    let channel = broker.leader_channel(leader)?;
    let mut client = RaftInternalClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(msg);
    request.set_timeout(timeout);
    crate::auth::BearerToken::new(broker.config.credentials.group_secret())?.apply(&mut request);
    let reply = client.forward(request).await.map_err(|e| e.to_string())?.into_inner();
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status as u16).map_err(|e| e.to_string())?;
    for h in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(&h.value)) {
            if n != axum::http::header::CONTENT_LENGTH && n != axum::http::header::TRANSFER_ENCODING {
                resp.headers_mut().insert(n, v);
            }
        }
    }
    Ok(resp)
}
