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

    /// A `RETRY` that says the request may have been applied (`"outcome":"unknown"`).
    pub fn retry_maybe_applied(&self) -> bool {
        let j = self.json();
        j["error"] == "RETRY" && j["outcome"] == "unknown"
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

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), bounded by `timeout`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<HttpReply, CallError> {
    HttpConns::default().call(addr, method, path, body, headers, timeout).await
}

/// Keep-alive HTTP/1.1 connections, one per address: a worker that opened a new connection per
/// call would leave tens of thousands of sockets in TIME_WAIT within minutes, and the kernel's
/// search for a free port then costs more than the calls.
#[derive(Default)]
pub struct HttpConns {
    conns: std::collections::HashMap<String, TcpStream>,
}

impl HttpConns {
    pub async fn call(
        &mut self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<HttpReply, CallError> {
        let body = body.unwrap_or("");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let reused = self.conns.contains_key(addr);
        let mut stream = match self.conns.remove(addr) {
            Some(s) => s,
            None => connect(addr, timeout).await?,
        };
        let exchange = async {
            stream.write_all(req.as_bytes()).await?;
            read_http(&mut stream).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((reply, keep))) => {
                if keep {
                    self.conns.insert(addr.to_owned(), stream);
                }
                Ok(reply)
            }
            // A kept connection the server had closed while idle: nothing was read, so
            // nothing was done; a read may try once more on a fresh connection.
            Ok(Err(e)) if reused && e.kind() == std::io::ErrorKind::UnexpectedEof && method == "GET" => {
                Box::pin(self.call(addr, method, path, Some(body).filter(|b| !b.is_empty()), headers, timeout)).await
            }
            Ok(Err(e)) => Err(CallError::Unknown(format!("{addr}: {e}"))),
            Err(_) => Err(CallError::Unknown(format!("{addr}: timeout"))),
        }
    }
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, CallError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(CallError::NotSent(format!("connect {addr}: {e}"))),
        Err(_) => Err(CallError::NotSent(format!("connect {addr}: timeout"))),
    }
}

/// Reads one response: headers, then `Content-Length` bytes or chunks (or to the end when
/// neither is given). Returns whether the connection can be used again.
async fn read_http(s: &mut TcpStream) -> std::io::Result<(HttpReply, bool)> {
    const MAX: usize = 64 << 20;
    let mut raw: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a reply"));
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX {
            return Err(std::io::Error::other("reply too large"));
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: Option<usize> =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let close = head.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
    let complete = |raw: &Vec<u8>| match (length, chunked) {
        (Some(n), _) => raw.len() >= head_end + n,
        (None, true) => raw[head_end..].windows(5).any(|w| w == b"0\r\n\r\n"),
        (None, false) => false,
    };
    while !complete(&raw) {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if length.is_none() && !chunked {
                break;
            }
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in a reply"));
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX {
            return Err(std::io::Error::other("reply too large"));
        }
    }
    let reply = parse_http(&raw).ok_or_else(|| std::io::Error::other("unparsable reply"))?;
    Ok((reply, !close && (length.is_some() || chunked)))
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

/// Whether a gRPC `RETRY` says the call may have been applied (the JSON body in the trailer has
/// `"outcome":"unknown"`).
pub fn grpc_retry_maybe_applied(s: &tonic::Status) -> bool {
    s.metadata()
        .get("x-moonraft-error")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .is_some_and(|j| j["outcome"] == "unknown")
}

/// One RESP command on this client's connection to `addr` (made if needed, dropped on error).
pub async fn resp(
    conns: &mut std::collections::HashMap<String, TcpStream>,
    addr: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Frame, CallError> {
    if !conns.contains_key(addr) {
        let s = connect(addr, timeout).await?;
        conns.insert(addr.to_owned(), s);
    }
    let Some(stream) = conns.get_mut(addr) else { return Err(CallError::NotSent("no connection".into())) };
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
            conns.remove(addr);
            Err(CallError::Unknown(format!("{addr}: {e}")))
        }
        Err(_) => {
            conns.remove(addr);
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
    conns: std::collections::HashMap<String, TcpStream>,
    slots: std::collections::HashMap<u16, String>,
}

impl ClusterClient {
    pub fn new(seeds: Vec<String>, start: usize) -> ClusterClient {
        ClusterClient { seeds, next: start, conns: Default::default(), slots: Default::default() }
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
                if let Err(e) = resp(&mut self.conns, &addr, &["ASKING"], left).await {
                    last = e.to_string();
                    target = None;
                    continue;
                }
            }
            match resp(&mut self.conns, &addr, args, left).await {
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
