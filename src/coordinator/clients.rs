//! The coordinator's two clients: the broker group over gRPC (any member; the next one on
//! failure) and proxies over RESP (one connection per use, dropped on any error).

use crate::auth::{BearerToken, Secret};
use bytes::BytesMut;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proxy::resp::{Frame, Request};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Per-call bound on broker requests (`docs/compatibility.md#bounded-broker-calls`).
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A `BrokerApi` client that sends the coordinator's token with every call.
pub type BrokerClient = BrokerApiClient<InterceptedService<Channel, BearerToken>>;

pub struct Brokers {
    addresses: RwLock<Vec<(String, Channel)>>,
    current: AtomicUsize,
    token: BearerToken,
    tls: crate::tls::ClientTls,
    /// Calls made, by (call, result): "ok" or the final gRPC code's name, for metrics.
    calls: Mutex<BTreeMap<(&'static str, String), u64>>,
}

/// Errors worth trying the next broker for: transport failures, timeouts and `RETRY`.
fn try_next(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
}

impl Brokers {
    pub fn new(addresses: &[String], token: Option<&Secret>, tls: crate::tls::ClientTls) -> Result<Brokers, String> {
        let list = addresses
            .iter()
            .map(|a| Ok((a.clone(), tls.endpoint(a, Duration::from_secs(1))?.connect_lazy())))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Brokers {
            addresses: RwLock::new(list),
            current: AtomicUsize::new(0),
            token: BearerToken::new(token)?,
            tls,
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    /// A client of `channel` that carries the token.
    pub fn client(&self, channel: Channel) -> BrokerClient {
        BrokerApiClient::with_interceptor(channel, self.token.clone()).max_decoding_message_size(usize::MAX)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.addresses.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, _)| a.clone()).collect()
    }

    /// Replaces the list (admin `CONFIG SET brokers`).
    pub fn set_addresses(&self, addresses: &[String]) -> Result<(), String> {
        let list = addresses
            .iter()
            .map(|a| Ok((a.clone(), self.tls.endpoint(a, Duration::from_secs(1))?.connect_lazy())))
            .collect::<Result<Vec<_>, String>>()?;
        *self.addresses.write().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(())
    }

    fn pick(&self, offset: usize) -> Option<(String, Channel)> {
        let list = self.addresses.read().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return None;
        }
        let i = (self.current.load(Ordering::Relaxed) + offset) % list.len();
        Some(list[i].clone())
    }

    /// Calls made so far: ((call, result), count), sorted.
    pub fn call_counts(&self) -> Vec<((&'static str, String), u64)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Calls `f` on the current broker; on a transport error, timeout or `RETRY` moves on to
    /// the next one (each broker at most once per call).
    pub async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Status>
    where
        F: Fn(BrokerClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let result = self.call_any(what, f).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        *self.calls.lock().unwrap_or_else(|e| e.into_inner()).entry((what, outcome)).or_default() += 1;
        result
    }

    async fn call_any<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Status>
    where
        F: Fn(BrokerClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.addresses.read().unwrap_or_else(|e| e.into_inner()).len().max(1);
        let mut last = Status::unavailable("no broker address");
        for offset in 0..n {
            let Some((address, channel)) = self.pick(offset) else { break };
            let client = self.client(channel);
            match tokio::time::timeout(BROKER_CALL_TIMEOUT, f(client)).await {
                Ok(Ok(r)) => {
                    if offset > 0 {
                        self.current.fetch_add(offset, Ordering::Relaxed);
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if try_next(&s) => {
                    tracing::debug!(broker = %address, "{what}: {s}");
                    last = s;
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    tracing::debug!(broker = %address, "{what}: timeout");
                    last = Status::deadline_exceeded(format!("{what}: broker {address} timed out"));
                }
            }
        }
        Err(last)
    }

    /// A channel to the broker currently in use, for streams.
    pub fn current_channel(&self, offset: usize) -> Option<(String, Channel)> {
        self.pick(offset)
    }

    pub fn advance(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

/// A RESP connection to a proxy (TLS when proxies serve it); every call is bounded by `timeout`.
pub struct ProxyConn {
    stream: moonraft_proxy::tls::Stream,
    buf: BytesMut,
}

pub use crate::auth::ProxyLogin;

/// Replies are small (OK, errors, integers); a bigger one is a broken peer.
const MAX_REPLY: usize = 1 << 20;

/// Why a connection to a proxy could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Refused, reset, timed out, unreachable: says something about the proxy (or the path).
    Proxy(String),
    /// This coordinator's own name lookup or sockets failed: says nothing about the proxy.
    Local(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Proxy(e) => write!(f, "{e}"),
            ConnectError::Local(e) => write!(f, "{e} (on this coordinator)"),
        }
    }
}

impl From<ConnectError> for String {
    fn from(e: ConnectError) -> String {
        e.to_string()
    }
}

/// The last address a proxy's name resolved to. A proxy whose name stops resolving (a
/// container that was killed, a resolver that fails for a moment) is still probed at the
/// address it had, so that its death is seen and a resolver hiccup is not mistaken for one.
#[derive(Default)]
pub struct ResolvedAddress(std::sync::Mutex<Option<std::net::SocketAddr>>);

impl ResolvedAddress {
    fn get(&self) -> Option<std::net::SocketAddr> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, a: std::net::SocketAddr) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
    }

    /// Resolves `address` (`host:port`) within `timeout`; on failure falls back to the last
    /// address it resolved to, if any.
    pub async fn resolve(&self, address: &str, timeout: Duration) -> Result<std::net::SocketAddr, ConnectError> {
        if let Ok(a) = address.parse::<std::net::SocketAddr>() {
            return Ok(a);
        }
        let looked_up = match tokio::time::timeout(timeout, tokio::net::lookup_host(address)).await {
            Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| "lookup: no address".to_owned()),
            Ok(Err(e)) => Err(format!("lookup: {e}")),
            Err(_) => Err("lookup: timeout".to_owned()),
        };
        match looked_up {
            Ok(a) => {
                self.set(a);
                Ok(a)
            }
            Err(e) => self.get().ok_or(ConnectError::Local(e)),
        }
    }
}

/// Socket errors that are about this host running out of something, not about the peer.
fn local_socket_error(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.kind(), std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::OutOfMemory)
        || matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

impl ProxyConn {
    /// Connects to `address`, resolving its name through `resolved` (see `ResolvedAddress`);
    /// with `admin_password`, runs `AUTH admin <password>` first. A refused AUTH is logged and
    /// the connection kept: the proxy is alive, and its `NOPERM` answers say what is wrong
    /// (a wrong password must never look like a dead proxy and cause a failover).
    pub async fn connect_via(
        address: &str,
        resolved: &ResolvedAddress,
        timeout: Duration,
        login: &ProxyLogin,
    ) -> Result<ProxyConn, ConnectError> {
        let target = resolved.resolve(address, timeout).await?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Err(_) => return Err(ConnectError::Proxy("connect timeout".to_owned())),
            Ok(Err(e)) if local_socket_error(&e) => return Err(ConnectError::Local(format!("connect: {e}"))),
            Ok(Err(e)) => return Err(ConnectError::Proxy(format!("connect: {e}"))),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let stream =
            match tokio::time::timeout(timeout, moonraft_proxy::tls::Stream::over(stream, address, login.tls.as_ref()))
                .await
            {
                Err(_) => return Err(ConnectError::Proxy("TLS handshake timeout".to_owned())),
                Ok(Err(e)) => return Err(ConnectError::Proxy(format!("TLS: {e}"))),
                Ok(Ok(s)) => s,
            };
        let mut conn = ProxyConn { stream, buf: BytesMut::new() };
        if let Some(p) = &login.admin_password {
            let auth = ["AUTH".to_owned(), "admin".to_owned(), p.expose().to_owned()];
            match conn.call(&auth, timeout).await {
                Ok(Frame::Error(e)) => {
                    tracing::warn!(proxy = %address, "AUTH admin refused: {e} (check proxy_admin_password)")
                }
                Ok(_) => {}
                Err(e) => return Err(ConnectError::Proxy(format!("AUTH: {e}"))),
            }
        }
        Ok(conn)
    }

    /// Connects to `address` (no memory of earlier lookups).
    pub async fn connect(address: &str, timeout: Duration, login: &ProxyLogin) -> Result<ProxyConn, String> {
        Ok(ProxyConn::connect_via(address, &ResolvedAddress::default(), timeout, login).await?)
    }

    /// Sends one command and returns its reply.
    pub async fn call(&mut self, args: &[String], timeout: Duration) -> Result<Frame, String> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let req = Request::from_strs(&refs);
        let run = async {
            self.stream.write_all(&req.raw).await.map_err(|e| format!("write: {e}"))?;
            let raw = moonraft_proxy::backend::read_reply(&mut self.stream, &mut self.buf, MAX_REPLY)
                .await
                .map_err(|e| format!("read: {e}"))?;
            match Frame::parse(&raw) {
                Ok(Some((f, _))) => Ok(f),
                _ => Err("unparsable reply".to_owned()),
            }
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| "timeout".to_owned())?
    }
}

/// The text of an error reply, if `f` is one.
pub fn error_text(f: &Frame) -> Option<String> {
    match f {
        Frame::Error(e) => Some(e.clone()),
        _ => None,
    }
}
