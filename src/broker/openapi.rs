//! The OpenAPI 3 document of `/api/v3`, served at `GET /api/v3/openapi.json`.
//!
//! It is generated, never written by hand: each handler in `http.rs` carries its own
//! `#[utoipa::path]` (path, method, parameters, body and success reply types) and
//! `api_operations!` builds both the axum router and the document from one list of handlers,
//! so an operation cannot be routed without being described or described without being routed.
//! The replies and errors every operation can give (authentication, `RETRY`, not initialised,
//! storage failure, bad input) are added once by [`CommonResponses`].

use super::service::Broker;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;
use serde::Serialize;
use std::sync::Arc;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};

/// The error body of every failed call: `error` is the code; the other fields appear with the
/// codes that carry them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error code, e.g. `CLUSTER_NOT_FOUND`, `RETRY`, `INVALID_REQUEST`, `UNAUTHORIZED`.
    pub error: String,
    /// What was wrong, for `INVALID_REQUEST`, `INVALID_METADATA`, `INVALID_CONFIG`,
    /// `INVALID_MEMBERSHIP` and `STORAGE_ERROR`.
    pub message: Option<String>,
    /// The config key of an `INVALID_CONFIG`.
    pub key: Option<String>,
    /// The refused value of an `INVALID_CONFIG`.
    pub value: Option<String>,
    /// The cluster's current epoch, with `EPOCH_MISMATCH`.
    pub epoch: Option<u64>,
    /// `unknown` with a `RETRY` whose request may have been applied.
    pub outcome: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NamesReply {
    pub names: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterReply {
    pub cluster: Option<moonraft_meta::view::Cluster>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProxyReply {
    pub proxy: Option<moonraft_meta::view::Proxy>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AddressesReply {
    pub addresses: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FailedAddressesReply {
    pub failed_addresses: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HostsReply {
    pub hosts_cannot_fail: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WithdrawnReply {
    pub withdrawn: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecoveredReply {
    pub recovered: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigReply {
    /// The other members' HTTP addresses.
    pub replica_addresses: Vec<String>,
}

/// Path parameter `name`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ClusterName {
    /// Cluster name: 1–31 of `[A-Za-z0-9@_-]`.
    #[param(example = "mycluster", pattern = "^[A-Za-z0-9@_-]{1,31}$")]
    name: String,
}

/// Path parameter `n`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct NodeCount {
    /// The cluster's node number afterwards (a multiple of 4).
    #[param(minimum = 0, multiple_of = 4)]
    n: u64,
}

/// Path parameter `address`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ProxyAddress {
    /// A proxy's address, `host:port`.
    #[param(example = "127.0.0.1:6001")]
    address: String,
}

/// Path parameter `reporter_id`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ReporterId {
    /// The reporting coordinator's id.
    reporter_id: String,
}

/// Header `If-Match`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatch {
    /// `"<epoch>"`: apply only while the cluster is at this epoch.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// The replies any operation can give besides its own, added to every operation of the document.
pub struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                        .build(),
                )
                .build()
        };
        let common = [
            ("400", "INVALID_REQUEST (a malformed body, query or path) or a code naming the refused input"),
            ("401", "UNAUTHORIZED: the broker has tokens and the request carries none or a wrong one"),
            ("403", "FORBIDDEN: the read token on a write"),
            ("404", "An unknown cluster or proxy (CLUSTER_NOT_FOUND, PROXY_NOT_FOUND …), or NOT_FOUND: no such route"),
            ("409", "A conflict with the current state (NODE_NUMBER_CHANGING, MIGRATION_RUNNING, ALREADY_EXISTED, PROXY_NOT_SYNC …) or RETRY: no leader at the moment, try again"),
            ("500", "STORAGE_ERROR: this member's disk failed (another member answers)"),
            ("503", "RAFT_NOT_INITIALIZED: the group has not been initialised"),
        ];
        for item in doc.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let with_body = op.request_body.is_some();
                let codes = common
                    .iter()
                    .chain(with_body.then_some(&("413", "PAYLOAD_TOO_LARGE: the body is larger than max_body_bytes")));
                for (code, description) in codes {
                    if !op.responses.responses.contains_key(*code) {
                        op.responses.responses.insert((*code).to_owned(), RefOr::T(error(description)));
                    }
                }
                op.security = Some(vec![
                    utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
                    utoipa::openapi::security::SecurityRequirement::default(),
                ]);
            }
        }
    }
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .filter_map(|o| o.as_mut())
}

/// `/clusters/meta/{name}` (OpenAPI) → `/clusters/meta/:name` (axum 0.7).
pub fn axum_path(openapi_path: &str) -> String {
    openapi_path
        .split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => format!(":{param}"),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Routes `handler` at the path and methods its `#[utoipa::path]` (`P`) declares.
pub fn add_operation<P, H, T>(router: Router<Arc<Broker>>, handler: H) -> Router<Arc<Broker>>
where
    P: utoipa::Path,
    H: Handler<T, Arc<Broker>>,
    T: 'static,
{
    let mut methods = MethodRouter::new();
    for method in P::methods() {
        let filter = match method {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Put => MethodFilter::PUT,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Delete => MethodFilter::DELETE,
            HttpMethod::Patch => MethodFilter::PATCH,
            HttpMethod::Head => MethodFilter::HEAD,
            HttpMethod::Options => MethodFilter::OPTIONS,
            HttpMethod::Trace => MethodFilter::TRACE,
        };
        methods = methods.on(filter, handler.clone());
    }
    router.route(&axum_path(&P::path()), methods)
}

/// Declares the `/api/v3` operations: `ApiDoc` (the OpenAPI document) and `operations()` (the
/// router), both from the same list of handlers. The caller imports `ErrorBody` and
/// `CommonResponses` (utoipa's attribute takes plain paths only).
macro_rules! api_operations {
    ($($handler:ident),* $(,)?) => {
        #[derive(utoipa::OpenApi)]
        #[openapi(
            info(
                title = "moonraft broker API",
                description = "The /api/v3 metadata API of a moonraft broker group (compatible with undermoon's mem-broker). Every member answers every call; writes are acknowledged once a majority has them on disk."
            ),
            servers((url = "/api/v3")),
            paths($($handler),*),
            components(schemas(ErrorBody)),
            modifiers(&CommonResponses),
        )]
        pub struct ApiDoc;

        fn operations() -> axum::Router<std::sync::Arc<crate::broker::service::Broker>> {
            let router = axum::Router::new();
            $(
                let router = pastey::paste! {
                    crate::broker::openapi::add_operation::<[<__path_ $handler>], _, _>(router, $handler)
                };
            )*
            router
        }
    };
}
pub(crate) use api_operations;

#[cfg(test)]
mod tests {
    use super::axum_path;

    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_covers_every_operation_and_its_references_resolve() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(crate::broker::http::ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let responses = op["responses"].as_object().unwrap();
                for code in ["401", "403", "409", "503"] {
                    assert!(responses.contains_key(code), "{method} {path} lacks {code}");
                }
                assert!(responses.keys().any(|c| c.starts_with('2')) || path == "/config", "{method} {path}");
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("413"), "{method} {path} lacks 413");
                }
            }
        }
        // One per handler in http.rs's `api_operations!` list.
        assert_eq!(operations, 39);
        // The conditional write says how it refuses a stale epoch.
        let conditional = &doc["paths"]["/clusters/config/{name}"]["patch"]["responses"]["412"];
        assert_eq!(conditional["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("odd reference {r}"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn openapi_paths_become_axum_paths() {
        assert_eq!(axum_path("/clusters/meta/{name}"), "/clusters/meta/:name");
        assert_eq!(axum_path("/failures/{address}/{reporter_id}"), "/failures/:address/:reporter_id");
        assert_eq!(axum_path("/version"), "/version");
    }
}
