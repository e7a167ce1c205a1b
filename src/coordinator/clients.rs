//! The coordinator's two clients: the broker group over gRPC (any member; the next one on
//! failure) and proxies over RESP (one connection per use, dropped on any error).

use bytes::BytesMut;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proxy::resp::{Frame, Request};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Per-call bound on broker requests (undermoon set none, weak point 16).
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Brokers {
    addresses: RwLock<Vec<(String, Channel)>>,
    current: AtomicUsize,
}

fn channel(address: &str) -> Result<Channel, String> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad broker address {address}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Errors worth trying the next broker for: transport failures, timeouts and `RETRY`.
fn try_next(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
}

impl Brokers {
    pub fn new(addresses: &[String]) -> Result<Brokers, String> {
        let list = addresses.iter().map(|a| Ok((a.clone(), channel(a)?))).collect::<Result<Vec<_>, String>>()?;
        Ok(Brokers { addresses: RwLock::new(list), current: AtomicUsize::new(0) })
    }

    pub fn addresses(&self) -> Vec<String> {
        self.addresses.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, _)| a.clone()).collect()
    }

    /// Replaces the list (admin `CONFIG SET brokers`).
    pub fn set_addresses(&self, addresses: &[String]) -> Result<(), String> {
        let list = addresses.iter().map(|a| Ok((a.clone(), channel(a)?))).collect::<Result<Vec<_>, String>>()?;
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

    /// Calls `f` on the current broker; on a transport error, timeout or `RETRY` moves on to
    /// the next one (each broker at most once per call).
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Status>
    where
        F: Fn(BrokerApiClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.addresses.read().unwrap_or_else(|e| e.into_inner()).len().max(1);
        let mut last = Status::unavailable("no broker address");
        for offset in 0..n {
            let Some((address, channel)) = self.pick(offset) else { break };
            let client = BrokerApiClient::new(channel).max_decoding_message_size(usize::MAX);
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

/// A RESP connection to a proxy; every call is bounded by `timeout`.
pub struct ProxyConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Replies are small (OK, errors, integers); a bigger one is a broken peer.
const MAX_REPLY: usize = 1 << 20;

impl ProxyConn {
    pub async fn connect(address: &str, timeout: Duration) -> Result<ProxyConn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| "connect timeout".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(ProxyConn { stream, buf: BytesMut::new() })
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
