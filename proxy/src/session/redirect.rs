//! Active redirection (`active_redirection = true`): a command for a slot another proxy serves
//! is forwarded there and its reply relayed, so a client that does not speak the cluster
//! protocol can use any proxy as a single Redis.
//!
//! The command goes to the owning proxy as `UMFORWARD 0 <command…>` over the pooled,
//! pipelined proxy-to-proxy connections (sent at once, so a pipelining client stays
//! pipelined). The `0` tells the peer not to forward it again: a peer whose metadata is newer
//! answers `MOVED`/`ASK`, and this side follows (at most `MAX_HOPS`); a peer that is switching
//! the slot answers `TRYAGAIN`, and this side retries for up to `TRYAGAIN_BUDGET`. The client
//! sees the final reply, or the last redirection if none came within those bounds.

use super::{err, Pending, Session};
use crate::backend::NodePool;
use crate::command::{self, CommandSpec};
use crate::resp::Frame;
use crate::resp::{self, Request};
use crate::state::ProxyState;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redirections followed for one command.
const MAX_HOPS: usize = 5;
/// How long one command may wait out `TRYAGAIN` (a slot being switched between proxies).
const TRYAGAIN_BUDGET: Duration = Duration::from_secs(3);
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);

/// `UMFORWARD 0 <args…>`, ready to send.
fn wrap(req: &Request) -> Bytes {
    let mut out = BytesMut::with_capacity(req.raw.len() + 32);
    resp::write_array_header(&mut out, req.args.len() + 2);
    resp::write_bulk(&mut out, b"UMFORWARD");
    resp::write_bulk(&mut out, b"0");
    for a in &req.args {
        resp::write_bulk(&mut out, a);
    }
    out.freeze()
}

/// Where an error reply sends the command next.
enum Next {
    To(String),
    Retry,
    Done,
}

fn next_step(reply: &[u8]) -> Next {
    let Some(text) = reply.strip_prefix(b"-") else { return Next::Done };
    let line = text.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    match words.next() {
        Some(b"MOVED") | Some(b"ASK") => match words.nth(1) {
            Some(addr) if !addr.is_empty() => Next::To(String::from_utf8_lossy(addr).into_owned()),
            _ => Next::Done,
        },
        Some(b"TRYAGAIN") => Next::Retry,
        _ => Next::Done,
    }
}

/// Multi-key commands that active redirection splits by key when their keys span slots (each
/// part routed on its own, the replies merged as the whole command would answer). Atomicity
/// across slots is not kept, as in any Redis Cluster client that splits them.
pub(super) fn splits(spec: &CommandSpec) -> bool {
    matches!(spec.name, "mget" | "mset" | "del" | "exists" | "unlink" | "touch")
}

/// The reply a pending reply resolves to.
async fn resolve(p: Pending) -> Bytes {
    match p {
        Pending::Ready(b) | Pending::Close(b) => b,
        Pending::Backend { rx, .. } => match rx.await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => resp::error(&e.to_string()),
            Err(_) => resp::error("ERR backend connection broke before the reply arrived"),
        },
        Pending::Task(f) => f.await,
    }
}

impl Session {
    /// `MGET`/`MSET`/`DEL`/`EXISTS`/`UNLINK`/`TOUCH` over keys of several slots: one command per
    /// key (`GET`/`SET`/the same command), all dispatched at once, merged in order. The first
    /// error is the reply.
    pub(super) async fn split_by_key(&mut self, spec: &'static CommandSpec, req: Request) -> Pending {
        let args = &req.args;
        let (part_name, step): (&[u8], usize) = match spec.name {
            "mget" => (b"GET", 1),
            "mset" => (b"SET", 2),
            _ => (args[0].as_ref(), 1),
        };
        let Some(part_spec) = command::lookup(part_name) else { return err("ERR no such command") };
        if !(args.len() - 1).is_multiple_of(step) {
            return err(&spec.arity_error());
        }
        let mut parts = Vec::with_capacity((args.len() - 1) / step);
        for chunk in args[1..].chunks(step) {
            let mut part = Vec::with_capacity(step + 1);
            part.push(Bytes::copy_from_slice(part_name));
            part.extend(chunk.iter().cloned());
            let pending = Box::pin(self.data_command(part_spec, Request::from_args(part), false, true)).await;
            parts.push(pending);
        }
        let name = spec.name;
        Pending::Task(Box::pin(async move {
            let mut replies = Vec::with_capacity(parts.len());
            for p in parts {
                replies.push(resolve(p).await);
            }
            if let Some(e) = replies.iter().find(|r| r.first() == Some(&b'-')) {
                return e.clone();
            }
            match name {
                "mget" => {
                    let mut out = BytesMut::new();
                    resp::write_array_header(&mut out, replies.len());
                    for r in &replies {
                        out.extend_from_slice(r);
                    }
                    out.freeze()
                }
                "mset" => Bytes::from_static(resp::OK),
                _ => {
                    let total: i64 = replies
                        .iter()
                        .filter_map(|r| match Frame::parse(r) {
                            Ok(Some((Frame::Integer(n), _))) => Some(n),
                            _ => None,
                        })
                        .sum();
                    resp::integer(total)
                }
            }
        }))
    }

    /// Forwards `req` to the proxy at `addr` (this proxy does not serve its slot).
    pub(super) async fn forward(&mut self, addr: &str, req: Request) -> Pending {
        let state = self.state.clone();
        let proto = self.proto;
        let pin = self.id as usize;
        let raw = wrap(&req);
        let pool = state.registry.peer_pool_for(addr, proto);
        // Sent now, so a pipelining client's commands go out together.
        let first = pool.send(raw.clone(), pin).await;
        let addr = addr.to_owned();
        Pending::Task(Box::pin(async move {
            let reply = match first.await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return resp::error(&e.to_string()),
                Err(_) => {
                    return resp::error(&format!("ERR the connection to proxy {addr} broke before the reply arrived"))
                }
            };
            follow(state, pool, addr, raw, reply, proto, pin).await
        }))
    }
}

/// Follows the redirections and retries a forwarded command's reply asks for.
async fn follow(
    state: Arc<ProxyState>,
    mut pool: Arc<NodePool>,
    mut addr: String,
    raw: Bytes,
    mut reply: Bytes,
    proto: u8,
    pin: usize,
) -> Bytes {
    let started = Instant::now();
    let mut hops = 0;
    loop {
        match next_step(&reply) {
            Next::Done => return reply,
            Next::To(next) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return reply;
                }
                if next != addr {
                    addr = next;
                    pool = state.registry.peer_pool_for(&addr, proto);
                }
            }
            Next::Retry => {
                if started.elapsed() >= TRYAGAIN_BUDGET {
                    return reply;
                }
                tokio::time::sleep(TRYAGAIN_PAUSE).await;
            }
        }
        reply = match pool.send(raw.clone(), pin).await.await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return resp::error(&e.to_string()),
            Err(_) => {
                return resp::error(&format!("ERR the connection to proxy {addr} broke before the reply arrived"))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_followed_and_other_errors_are_final() {
        assert!(matches!(next_step(b"-MOVED 12 127.0.0.1:6001\r\n"), Next::To(a) if a == "127.0.0.1:6001"));
        assert!(matches!(next_step(b"-ASK 12 h:1\r\n"), Next::To(a) if a == "h:1"));
        assert!(matches!(next_step(b"-TRYAGAIN slot 3 is being switched\r\n"), Next::Retry));
        assert!(matches!(next_step(b"-ERR wrong type\r\n"), Next::Done));
        assert!(matches!(next_step(b"+OK\r\n"), Next::Done));
        assert!(matches!(next_step(b"-MOVED 12\r\n"), Next::Done));
    }

    #[test]
    fn forwarded_commands_are_wrapped_with_no_further_redirection() {
        let req = Request::from_strs(&["SET", "k", "v"]);
        assert_eq!(&wrap(&req)[..], b"*5\r\n$9\r\nUMFORWARD\r\n$1\r\n0\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }
}
