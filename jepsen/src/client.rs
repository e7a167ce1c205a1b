//! Clients of the system under test: `/api/v3` over HTTP/1.1, the gRPC `BrokerApi`, and a Redis
//! Cluster client over RESP (MOVED/ASK/TRYAGAIN followed). Every call is bounded in time.

use bytes::BytesMut;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proxy::resp::{Frame, Request};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `/api/v3` error code, if the body carries one.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"].as_str().map(str::to_owned)
    }
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The request was certainly not sent (connection refused, nothing written).
    NotSent(String),
    /// Sent (or maybe sent), no answer: the outcome is unknown.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotSent(e) | CallError::Unknown(e) => write!(f, "{e}"),
        }
    }
}

/// One HTTP/1.1 request (`Connection: close`), bounded by `timeout`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<HttpReply, CallError> {
    let connect = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
    let mut s = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(CallError::NotSent(format!("connect {addr}: {e}"))),
        Err(_) => return Err(CallError::NotSent(format!("connect {addr}: timeout"))),
    };
    let _ = s.set_nodelay(true);
    let body = body.unwrap_or("");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let exchange = async {
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(CallError::Unknown(format!("{addr}: {e}"))),
        Err(_) => return Err(CallError::Unknown(format!("{addr}: timeout"))),
    };
    parse_http(&raw).ok_or_else(|| CallError::Unknown(format!("{addr}: unparsable reply")))
}

fn parse_http(raw: &[u8]) -> Option<HttpReply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            let Some(chunk) = rest.get(nl + 2..nl + 2 + size).filter(|_| size > 0) else { break };
            out.extend_from_slice(chunk);
            rest = rest.get(nl + 2 + size + 2..).unwrap_or_default();
        }
        body = out;
    }
    Some(HttpReply { status, headers, body })
}

/// A gRPC client of one member.
pub fn grpc(addr: &str) -> Option<BrokerApiClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let channel = endpoint.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).connect_lazy();
    Some(BrokerApiClient::new(channel))
}

/// gRPC status → our error kinds. `UNAVAILABLE` from the transport means not sent only when it
/// says the connection could not be made.
pub fn grpc_error(s: &tonic::Status) -> CallError {
    let text = format!("{:?}: {}", s.code(), s.message());
    if s.code() == tonic::Code::Unavailable && s.message().contains("connect") {
        CallError::NotSent(text)
    } else {
        CallError::Unknown(text)
    }
}

/// The `/api/v3` error code a gRPC status carries (its message), if the server produced it.
pub fn grpc_code(s: &tonic::Status) -> Option<String> {
    s.metadata().contains_key("x-moonraft-error").then(|| s.message().to_owned())
}

/// One RESP command on a fresh connection... or on `conn` if given (kept on success).
pub async fn resp(
    conn: &mut Option<(String, TcpStream)>,
    addr: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Frame, CallError> {
    if conn.as_ref().is_none_or(|(a, _)| a != addr) {
        let c = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
        let s = match c {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CallError::NotSent(format!("connect {addr}: {e}"))),
            Err(_) => return Err(CallError::NotSent(format!("connect {addr}: timeout"))),
        };
        let _ = s.set_nodelay(true);
        *conn = Some((addr.to_owned(), s));
    }
    let Some((_, stream)) = conn.as_mut() else { return Err(CallError::NotSent("no connection".into())) };
    let req = Request::from_strs(args);
    let exchange = async {
        stream.write_all(&req.raw).await?;
        let mut buf = BytesMut::new();
        let raw = moonraft_proxy::backend::read_reply(stream, &mut buf, 64 << 20).await?;
        Frame::parse(&raw).ok().flatten().map(|(f, _)| f).ok_or_else(|| std::io::Error::other("unparsable reply"))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => {
            *conn = None;
            Err(CallError::Unknown(format!("{addr}: {e}")))
        }
        Err(_) => {
            *conn = None;
            Err(CallError::Unknown(format!("{addr}: timeout")))
        }
    }
}

/// What a Redis Cluster command came to.
pub enum ClusterReply {
    /// The answer, and the proxy that gave it.
    Done(Frame, String),
    /// Refused before it ran (redirects exhausted, TRYAGAIN, CLUSTERDOWN, …): it did not happen.
    Refused(String),
    /// No answer after it was sent: it may or may not have happened.
    Unknown(String),
}

/// A cluster client: sends to the proxy it last used for the slot (or any), follows MOVED and
/// ASK, waits out TRYAGAIN/CLUSTERDOWN a little, gives up after `timeout`.
pub struct ClusterClient {
    pub seeds: Vec<String>,
    next: usize,
    conn: Option<(String, TcpStream)>,
    slots: std::collections::HashMap<u16, String>,
}

impl ClusterClient {
    pub fn new(seeds: Vec<String>, start: usize) -> ClusterClient {
        ClusterClient { seeds, next: start, conn: None, slots: Default::default() }
    }

    pub async fn cmd(&mut self, key: &str, args: &[&str], timeout: Duration) -> ClusterReply {
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = moonraft_proxy::slot::key_slot(key.as_bytes());
        let mut target = self.slots.get(&slot).cloned();
        let mut asking = false;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let addr = target.clone().unwrap_or_else(|| {
                self.next += 1;
                self.seeds[self.next % self.seeds.len()].clone()
            });
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_secs(3));
            if asking {
                if let Err(e) = resp(&mut self.conn, &addr, &["ASKING"], left).await {
                    last = e.to_string();
                    target = None;
                    continue;
                }
            }
            match resp(&mut self.conn, &addr, args, left).await {
                Ok(Frame::Error(e)) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    let to = e.split(' ').nth(2).map(str::to_owned);
                    if !asking {
                        if let Some(to) = &to {
                            self.slots.insert(slot, to.clone());
                        }
                    }
                    target = to;
                    last = e;
                    continue;
                }
                Ok(Frame::Error(e))
                    if e.starts_with("TRYAGAIN")
                        || e.starts_with("CLUSTERDOWN")
                        || e.starts_with("ERR_CLUSTER_NOT_FOUND")
                        || e.starts_with("LOADING")
                        || e.starts_with("MASTERDOWN")
                        || e.starts_with("READONLY")
                        || e.starts_with("ERR_BACKEND") =>
                {
                    // Refused before it ran; a backend error may also come from a write that
                    // was sent to a dying node: treat those as unknown.
                    if e.starts_with("ERR_BACKEND") {
                        return ClusterReply::Unknown(e);
                    }
                    last = e;
                    asking = false;
                    target = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(f) => {
                    if !asking {
                        self.slots.insert(slot, addr.clone());
                    }
                    return ClusterReply::Done(f, addr);
                }
                Err(CallError::NotSent(e)) => {
                    last = e;
                    self.slots.remove(&slot);
                    target = None;
                    asking = false;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(CallError::Unknown(e)) => {
                    self.slots.remove(&slot);
                    return ClusterReply::Unknown(e);
                }
            }
        }
        ClusterReply::Refused(format!("gave up: {last}"))
    }
}
