//! Who may do what on the brokers' surfaces: the decisions (pure) and the small adapters that
//! apply them to HTTP requests, gRPC calls and our own outgoing calls.
//!
//! Three credentials, all optional (undermoon compatibility: a broker without any is open and
//! says so at start):
//! - `admin_token`: everything on `/api/v3`, `BrokerApi` and `RaftAdmin`;
//! - `read_token`: reads only (HTTP `GET`/`HEAD`, gRPC `Get*`, `Watch`, `Status`);
//! - the group secret (`cluster_secret`, else the admin token): Raft RPCs and forwarded calls
//!   between members (`RaftInternal`), so that a stranger cannot vote or append entries.
//!
//! Presented as `Authorization: Bearer <token>` (gRPC metadata `authorization`). Comparisons
//! are constant-time; tokens are never logged (`Secret`'s `Debug` hides them).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A credential. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `None` for an empty value (an unset key).
    pub fn new(value: &str) -> Option<Secret> {
        let v = value.trim();
        (!v.is_empty()).then(|| Secret(v.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &[u8]) -> bool {
        // The proxy's comparison: constant-time in the content (the length is not secret).
        moonraft_proxy::config::password_matches(&self.0, presented)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Reads a `*_file` key: the file's content, trimmed; an empty file is an error (a
/// credential that silently turned into "none" would open the door).
pub fn read_secret_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    match text.trim() {
        "" => Err(format!("{path} is empty")),
        t => Ok(t.to_owned()),
    }
}

/// How brokers and coordinators reach proxies: `AUTH admin <password>` first, and TLS verified
/// against a CA when the proxies serve TLS.
#[derive(Clone, Default)]
pub struct ProxyLogin {
    pub admin_password: Option<Secret>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ProxyLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyLogin")
            .field("admin_password", &self.admin_password)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// `proxy_tls_ca`: the CA proxies are verified against; empty: plain TCP.
pub fn proxy_tls(path: &str) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    match path {
        "" => Ok(None),
        p => moonraft_proxy::tls::client_config(&moonraft_proxy::tls::read_pem(p, "proxy_tls_ca")?).map(Some),
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reads metadata.
    Read,
    /// Changes metadata or membership.
    Admin,
    /// Member-to-member traffic (Raft RPCs, forwarding).
    Group,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or one that matches nothing: HTTP 401 / gRPC `UNAUTHENTICATED`.
    Unauthorized,
    /// A valid credential without the right: HTTP 403 / gRPC `PERMISSION_DENIED`.
    Forbidden,
}

impl Denied {
    pub fn code(self) -> &'static str {
        match self {
            Denied::Unauthorized => "UNAUTHORIZED",
            Denied::Forbidden => "FORBIDDEN",
        }
    }

    pub fn status(self) -> tonic::Status {
        match self {
            Denied::Unauthorized => tonic::Status::unauthenticated(
                "UNAUTHORIZED: send the broker's admin or read token as `authorization: Bearer <token>`",
            ),
            Denied::Forbidden => tonic::Status::permission_denied(
                "FORBIDDEN: the read token may only read; this call needs the admin token",
            ),
        }
    }
}

/// The broker's credentials.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub admin: Option<Secret>,
    pub read: Option<Secret>,
    /// `cluster_secret`; when unset the admin token is the group secret.
    pub group: Option<Secret>,
}

impl Credentials {
    /// Whether `/api/v3` and the public gRPC services check tokens at all.
    pub fn api_protected(&self) -> bool {
        self.admin.is_some() || self.read.is_some()
    }

    /// The secret members present to each other, if any.
    pub fn group_secret(&self) -> Option<&Secret> {
        self.group.as_ref().or(self.admin.as_ref())
    }

    /// Decides one request; `presented` is the bearer token it carried, if any.
    pub fn check(&self, need: Need, presented: Option<&[u8]>) -> Result<(), Denied> {
        if need == Need::Group {
            return match (self.group_secret(), presented) {
                (None, _) => Ok(()),
                (Some(s), Some(p)) if s.matches(p) => Ok(()),
                _ => Err(Denied::Unauthorized),
            };
        }
        if !self.api_protected() {
            return Ok(());
        }
        let Some(p) = presented else { return Err(Denied::Unauthorized) };
        // Both compared every time, so the answer's timing does not say which one matched.
        let is_admin = self.admin.as_ref().is_some_and(|s| s.matches(p));
        let is_read = self.read.as_ref().is_some_and(|s| s.matches(p));
        match (need, is_admin, is_read) {
            (_, true, _) => Ok(()),
            (Need::Read, false, true) => Ok(()),
            (_, false, true) => Err(Denied::Forbidden),
            _ => Err(Denied::Unauthorized),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(value: Option<&[u8]>) -> Option<&[u8]> {
    let v = value?;
    let (scheme, rest) = (v.get(..7)?, v.get(7..)?);
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// What an `/api/v3` request needs: reads are `GET`/`HEAD`.
pub fn http_need(method: &axum::http::Method) -> Need {
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Need::Read
    } else {
        Need::Admin
    }
}

/// What a gRPC call needs, from its path `/<package.Service>/<Method>`.
pub fn grpc_need(path: &str) -> Need {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    if service == "moonraft.raft.RaftInternal" {
        return Need::Group;
    }
    if method.starts_with("Get") || method == "Watch" || method == "Status" {
        Need::Read
    } else {
        Need::Admin
    }
}

/// A gRPC service behind the credential check (every call of the wrapped service).
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, credentials: Arc<Credentials>) -> Guarded<S> {
        Guarded { inner, credentials }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type GrpcRequest = axum::http::Request<tonic::body::BoxBody>;
type GrpcResponse = axum::http::Response<tonic::body::BoxBody>;

impl<S> tower::Service<GrpcRequest> for Guarded<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        let need = grpc_need(req.uri().path());
        let presented = bearer(req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes()));
        match self.credentials.check(need, presented) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(denied) => {
                let status = denied.status();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Adds `authorization: Bearer <token>` to every outgoing gRPC call (coordinators, `ctl`,
/// members talking to each other); does nothing without a token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&Secret>) -> Result<BearerToken, String> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {}", t.expose())
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| "a token must be printable ASCII".to_owned()),
        }
    }

    pub fn apply<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut req);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(admin: &str, read: &str, group: &str) -> Credentials {
        Credentials { admin: Secret::new(admin), read: Secret::new(read), group: Secret::new(group) }
    }

    #[test]
    fn open_without_tokens() {
        let c = creds("", "", "");
        for need in [Need::Read, Need::Admin, Need::Group] {
            assert_eq!(c.check(need, None), Ok(()));
            assert_eq!(c.check(need, Some(b"anything")), Ok(()));
        }
    }

    #[test]
    fn admin_read_and_strangers() {
        let c = creds("adm", "rd", "");
        assert_eq!(c.check(Need::Read, None), Err(Denied::Unauthorized));
        assert_eq!(c.check(Need::Read, Some(b"nope")), Err(Denied::Unauthorized));
        assert_eq!(c.check(Need::Read, Some(b"rd")), Ok(()));
        assert_eq!(c.check(Need::Read, Some(b"adm")), Ok(()));
        assert_eq!(c.check(Need::Admin, Some(b"rd")), Err(Denied::Forbidden));
        assert_eq!(c.check(Need::Admin, Some(b"adm")), Ok(()));
        assert_eq!(c.check(Need::Admin, Some(b"ad")), Err(Denied::Unauthorized), "a prefix is not the token");
        assert_eq!(c.check(Need::Admin, Some(b"")), Err(Denied::Unauthorized));
        // Without cluster_secret the admin token is the group secret; the read token is not.
        assert_eq!(c.check(Need::Group, Some(b"adm")), Ok(()));
        assert_eq!(c.check(Need::Group, Some(b"rd")), Err(Denied::Unauthorized));
        assert_eq!(c.check(Need::Group, None), Err(Denied::Unauthorized));
    }

    #[test]
    fn group_secret_alone() {
        let c = creds("", "", "grp");
        assert_eq!(c.check(Need::Admin, None), Ok(()), "the API stays open without API tokens");
        assert_eq!(c.check(Need::Group, Some(b"grp")), Ok(()));
        assert_eq!(c.check(Need::Group, Some(b"adm")), Err(Denied::Unauthorized));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bear")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn needs() {
        use axum::http::Method;
        assert_eq!(http_need(&Method::GET), Need::Read);
        assert_eq!(http_need(&Method::DELETE), Need::Admin);
        assert_eq!(grpc_need("/moonraft.broker.BrokerApi/GetCluster"), Need::Read);
        assert_eq!(grpc_need("/moonraft.broker.BrokerApi/Watch"), Need::Read);
        assert_eq!(grpc_need("/moonraft.broker.BrokerApi/DeleteCluster"), Need::Admin);
        assert_eq!(grpc_need("/moonraft.broker.RaftAdmin/Status"), Need::Read);
        assert_eq!(grpc_need("/moonraft.broker.RaftAdmin/ChangeMembership"), Need::Admin);
        assert_eq!(grpc_need("/moonraft.raft.RaftInternal/Vote"), Need::Group);
        assert_eq!(grpc_need("/moonraft.raft.RaftInternal/Forward"), Need::Group);
        assert_eq!(grpc_need("garbage"), Need::Admin);
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = Secret::new("hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?}", creds("hunter2", "", "")).contains("hunter2"));
    }
}
