//! One client connection.
//!
//! A reader parses requests and dispatches each one at once (to a backend queue, or answered
//! locally), handing the writer a *pending reply* per request in request order. The writer
//! resolves them in order and writes every reply that is already available in one write, so
//! pipelined clients get coalesced replies. Blocking commands run on a connection dedicated to
//! this client, so they really block in Redis (no polling) without stalling shared
//! connections; the connection is closed (which unblocks Redis) when the client goes away.
//!
//! This module holds the connection's state and its read loop, which only dispatches; each
//! command family has its own module: `data` (routing by slot), `transaction`, `pubsub`,
//! `node_scoped` (answered for the proxy's own nodes), `admin` (`CLUSTER`, `CONFIG`, `CLIENT`,
//! `INFO`, `COMMAND`), `connection` (`AUTH`, `HELLO`, `RESET`), `redirect` (active
//! redirection), `dedicated` (the client's own node connections: blocking commands, `WATCH`)
//! and `writer` (the reply stream). `UMCTL` is `crate::umctl`.

mod admin;
mod connection;
mod data;
mod dedicated;
mod node_scoped;
mod pubsub;
mod redirect;
mod transaction;
mod writer;

use dedicated::{wait_unblocked, DedicatedConn, ExchangeError, Reuse};
use writer::write_loop;

use crate::backend::ReplyResult;
use crate::clients::{ClientInfo, LastCommand};
use crate::command::{self, CommandSpec};
use crate::handover::{Phase, DRAIN_QUIET};
use crate::metrics::Meter;
use crate::resp::{self, Frame, Request, RequestParser};
use crate::slowlog::Sample;
use crate::state::ProxyState;
use crate::umctl;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

/// Requests dispatched but not yet answered, per client; the reader waits beyond this.
const MAX_PENDING_REPLIES: usize = 1024;
/// A connection's read and write buffers to start with.
const START_BUFFER: usize = 4 * 1024;
/// Read and write buffers bigger than this are replaced by small ones once empty.
const MAX_IDLE_BUFFER: usize = 64 * 1024;

type ReplyFuture = Pin<Box<dyn Future<Output = Bytes> + Send>>;

enum Pending {
    Ready(Bytes),
    Backend {
        rx: oneshot::Receiver<ReplyResult>,
        sample: Option<Box<Sample>>,
        /// Counts the command as in flight to a migrating range until its reply is written.
        _guard: Option<InflightGuard>,
    },
    Task(ReplyFuture),
    /// Write this reply, then close the connection.
    Close(Bytes),
}

/// Written to the client between two replies, whenever it comes: pub/sub messages and
/// confirmations (`pubsub.rs`).
enum PushItem {
    Message(Bytes),
    /// Write this error, then close the connection (its subscriptions are gone).
    Close(Bytes),
}

/// Pushes waiting for a slow client, per client; the hub (and the node behind it) waits beyond.
const MAX_PENDING_PUSHES: usize = 256;

/// One command for a migrating range on its way to the source node (`migrate.rs` waits for
/// these to drain before switching).
struct InflightGuard(Arc<crate::cluster::TaskShared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Migration work a locally routed command needs.
enum MigrationPath {
    None,
    Source(InflightGuard),
    /// Importing range not committed yet: pull the keys from the source first.
    Pull(crate::cluster::MigrationTask),
}

fn err(msg: &str) -> Pending {
    Pending::Ready(resp::error(msg))
}

fn ok() -> Pending {
    Pending::Ready(Bytes::from_static(resp::OK))
}

fn no_admin(command: &str) -> Pending {
    err(&format!(
        "NOPERM this connection has no permissions to run the '{command}' command (AUTH admin <admin_password> first)"
    ))
}

struct Session {
    state: Arc<ProxyState>,
    id: u64,
    proto: u8,
    /// May run data commands (`password`).
    authenticated: bool,
    /// May run `UMCTL`, the inter-proxy commands and `CONFIG SET` (`admin_password`).
    admin: bool,
    asking: bool,
    /// Sent `READONLY`: reads of a slot may be served by a replica of it on this proxy.
    readonly: bool,
    /// Connections for blocking commands, per node address and protocol.
    dedicated: HashMap<(String, u8), DedicatedConn>,
    /// Set while a blocking command is running: like Redis, the client's next commands wait
    /// for it (they are read and buffered, not executed).
    blocked: Option<oneshot::Receiver<()>>,
    /// Between `MULTI` and `EXEC`/`DISCARD`.
    multi: Option<transaction::Multi>,
    /// The slot and node of the keys this client `WATCH`es (on its dedicated connection).
    watching: Option<transaction::Target>,
    subs: pubsub::Subscriptions,
    pushes: mpsc::Sender<PushItem>,
    /// What `CLIENT LIST` shows of this connection (`mirror` keeps it current).
    info: Arc<ClientInfo>,
    /// Where this client's last write went, for `WAIT`.
    last_write: LastWrite,
}

/// Until `CLIENT KILL`, or a handover that closes every connection (`handover.rs`).
async fn killed_or_stopping(info: &ClientInfo, state: &ProxyState) {
    loop {
        info.kill.notified().await;
        if info.killed.load(Ordering::Relaxed) || state.handover.phase() == Phase::Stopping {
            return;
        }
    }
}

struct ClientGuard(Arc<ProxyState>, u64);
impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.connected_clients.fetch_sub(1, Ordering::Relaxed);
        self.0.clients.remove(self.1);
    }
}

/// Where a client's last write went: `WAIT` counts the replicas of that node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LastWrite {
    None,
    Node(String),
    /// Forwarded to another proxy (active redirection).
    Forwarded,
}

/// A client connection's addresses, as `CLIENT LIST` shows them.
struct Peer {
    addr: String,
    laddr: String,
    fd: i64,
}

impl Peer {
    fn of(stream: &TcpStream) -> Peer {
        use std::os::fd::AsRawFd;
        let show = |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        Peer { addr: show(stream.peer_addr()), laddr: show(stream.local_addr()), fd: stream.as_raw_fd() as i64 }
    }
}

pub async fn serve_client(state: Arc<ProxyState>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = Peer::of(&stream);
    // Owned halves: the reader and the writer share no lock on the common path.
    let (rd, wr) = stream.into_split();
    serve_halves(state, rd, wr, peer).await
}

/// A client on the TLS port (the handshake is done).
pub async fn serve_tls_client(state: Arc<ProxyState>, stream: tokio_rustls::server::TlsStream<TcpStream>) {
    let peer = Peer::of(stream.get_ref().0);
    let (rd, wr) = tokio::io::split(stream);
    serve_halves(state, rd, wr, peer).await
}

async fn serve_halves<R, W>(state: Arc<ProxyState>, rd: R, wr: W, peer: Peer)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    state.connected_clients.fetch_add(1, Ordering::Relaxed);
    state.total_connections.fetch_add(1, Ordering::Relaxed);
    let id = state.next_session_id.fetch_add(1, Ordering::Relaxed);
    let info = Arc::new(ClientInfo::new(id, peer.addr, peer.laddr, peer.fd));
    state.clients.register(info.clone());
    let _guard = ClientGuard(state.clone(), id);
    let (tx, rx) = mpsc::channel(MAX_PENDING_REPLIES);
    let (closing_tx, closing_rx) = watch::channel(false);
    let (pushes, pushes_rx) = mpsc::channel(MAX_PENDING_PUSHES);
    let writer = tokio::spawn(write_loop(wr, rx, pushes_rx, closing_rx, state.clone(), info.clone()));
    let mut session = Session {
        authenticated: state.config.password.is_none(),
        admin: state.config.admin_password.is_none(),
        state,
        id,
        proto: 2,
        asking: false,
        readonly: false,
        dedicated: HashMap::new(),
        blocked: None,
        multi: None,
        watching: None,
        subs: pubsub::Subscriptions::default(),
        pushes,
        info,
        last_write: LastWrite::None,
    };
    session.mirror();
    session.read_loop(rd, tx).await;
    let _ = closing_tx.send(true);
    let _ = writer.await;
    debug!(session = id, "client disconnected");
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin + Send>(&mut self, mut rd: R, tx: mpsc::Sender<(Pending, Meter)>) {
        let state = self.state.clone();
        let cfg = &state.config;
        let mut parser = RequestParser::new(cfg.proto_max_bulk_len, cfg.client_query_buffer_limit);
        // Small to start with (many connections are idle), grown by 16 KB steps when a client
        // sends more, and given back after a burst (below).
        let mut buf = BytesMut::with_capacity(START_BUFFER);
        let idle = (cfg.session_timeout > 0).then(|| Duration::from_millis(cfg.session_timeout));
        let info = self.info.clone();
        // The command's name as `CLIENT LIST` shows it, stored only when it changed (a client
        // repeating one command takes no lock and copies nothing).
        let mut shown = LastCommand::default();
        loop {
            loop {
                match parser.next(&mut buf) {
                    Ok(Some(req)) => {
                        if !shown.is(&req.args) {
                            shown = LastCommand::of(&req.args);
                            info.set_last_command(&shown);
                        }
                        let spec = command::lookup(req.name());
                        let meter = state.metrics.start(spec, req.name());
                        let pending = self.handle(req, spec).await;
                        self.mirror();
                        let close = matches!(pending, Pending::Close(_));
                        info.owed.fetch_add(1, Ordering::Relaxed);
                        if tx.send((pending, meter)).await.is_err() || close {
                            return;
                        }
                        if let Some(done) = self.blocked.take() {
                            info.blocked.store(true, Ordering::Relaxed);
                            let limit = cfg.client_query_buffer_limit;
                            let unblocked = tokio::select! {
                                go_on = wait_unblocked(&mut rd, &mut buf, done, limit) => go_on,
                                _ = killed_or_stopping(&info, &state) => false,
                            };
                            info.blocked.store(false, Ordering::Relaxed);
                            if !unblocked {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let meter = state.metrics.start(None, b"");
                        let _ = tx.send((Pending::Close(resp::error(&format!("ERR {e}"))), meter)).await;
                        return;
                    }
                }
            }
            if buf.is_empty() && buf.capacity() > MAX_IDLE_BUFFER {
                // After a burst of big requests, give the memory back: an idle connection keeps
                // at most a small buffer (the old one is freed once its requests are answered).
                buf = BytesMut::with_capacity(START_BUFFER);
            } else if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            // A proxy that handed its port over closes each connection once it is quiet: nothing
            // half-read, no reply owed, no transaction, no subscription (`handover.rs`).
            let quiet = match state.handover.phase() {
                Phase::Serving => false,
                Phase::Draining => {
                    buf.is_empty()
                        && info.owed.load(Ordering::Relaxed) == 0
                        && self.multi.is_none()
                        && self.watching.is_none()
                        && !self.subs.active()
                }
                Phase::Stopping => return,
            };
            let wait = if quiet { Some(DRAIN_QUIET) } else { idle };
            let read = async {
                match wait {
                    None => Some(rd.read_buf(&mut buf).await),
                    Some(t) => tokio::time::timeout(t, rd.read_buf(&mut buf)).await.ok(),
                }
            };
            let read = tokio::select! {
                r = read => r,
                _ = info.kill.notified() => {
                    if info.killed.load(Ordering::Relaxed) || state.handover.phase() == Phase::Stopping {
                        return;
                    }
                    // The handover phase changed: look again.
                    continue;
                }
            };
            match read {
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(n)) => {
                    state.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    info.touch()
                }
                None if quiet => return,
                // Like Redis's `timeout`: a subscriber waiting for messages is not idle.
                None if tx.capacity() == MAX_PENDING_REPLIES && !self.subs.active() => return,
                None => {}
            }
        }
    }

    /// Copies the connection state `CLIENT LIST` shows into `info` (plain stores, no lock).
    fn mirror(&self) {
        let info = &self.info;
        info.proto.store(self.proto, Ordering::Relaxed);
        info.readonly.store(self.readonly, Ordering::Relaxed);
        info.admin.store(self.admin && self.state.config.admin_password.is_some(), Ordering::Relaxed);
        info.multi.store(self.multi.as_ref().map_or(-1, |m| m.queued_count() as i64), Ordering::Relaxed);
        let (channels, patterns, shard) = self.subs.counts();
        info.channels.store(channels, Ordering::Relaxed);
        info.patterns.store(patterns, Ordering::Relaxed);
        info.shard_channels.store(shard, Ordering::Relaxed);
    }

    /// Answers one command; `spec` is its entry in the command table, if it has one.
    async fn handle(&mut self, req: Request, spec: Option<&'static CommandSpec>) -> Pending {
        self.state.total_commands.fetch_add(1, Ordering::Relaxed);
        let asking = std::mem::take(&mut self.asking);
        if self.proto == 2 && self.subs.active() && !pubsub::allowed_when_subscribed(req.name()) {
            return err(&format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                String::from_utf8_lossy(req.name()).to_ascii_lowercase().chars().take(64).collect::<String>()
            ));
        }
        if self.queues(&req) {
            return self.queue(req);
        }
        if let Some(spec) = spec {
            let redirect = self.state.config.active_redirection;
            return self.data_command(spec, req, asking, redirect).await;
        }
        let name = String::from_utf8_lossy(req.name()).to_ascii_lowercase();
        if node_scoped::is_memory_usage(&name, &req.args) {
            let redirect = self.state.config.active_redirection;
            return self.data_command(&node_scoped::MEMORY_USAGE, req, asking, redirect).await;
        }
        if let Some(reply) = self.node_scoped(&name, &req) {
            return reply;
        }
        let args = &req.args;
        if let Some(kind) = pubsub::Kind::from_name(&name) {
            return self.subscription(kind, &req, asking);
        }
        match name.as_str() {
            // RESP2 subscribed mode answers PING as a message-shaped array.
            "ping" if self.proto == 2 && self.subs.active() && args.len() <= 2 => Pending::Ready(
                Frame::Array(vec![Frame::bulk_str("pong"), Frame::Bulk(args.get(1).cloned().unwrap_or_default())])
                    .to_bytes(2),
            ),
            "ping" => match args.len() {
                1 => Pending::Ready(resp::simple("PONG")),
                2 => Pending::Ready(resp::bulk(&args[1])),
                _ => err("ERR wrong number of arguments for 'ping' command"),
            },
            "echo" => match args.len() {
                2 => Pending::Ready(resp::bulk(&args[1])),
                _ => err("ERR wrong number of arguments for 'echo' command"),
            },
            "quit" => Pending::Close(Bytes::from_static(resp::OK)),
            "auth" => self.auth(args),
            "hello" => self.hello(args),
            "select" => match args.len() {
                2 if &args[1][..] == b"0" => ok(),
                2 => err("ERR SELECT is not allowed in cluster mode"),
                _ => err("ERR wrong number of arguments for 'select' command"),
            },
            "asking" => {
                self.asking = true;
                ok()
            }
            "readonly" | "readwrite" if args.len() != 1 => {
                err(&format!("ERR wrong number of arguments for '{name}' command"))
            }
            "readonly" => {
                self.readonly = true;
                ok()
            }
            "readwrite" => {
                self.readonly = false;
                ok()
            }
            "publish" => self.publish(args),
            "wait" => self.wait(args),
            "pubsub" => self.pubsub_introspection(&req),
            "reset" => self.reset(),
            "multi" | "exec" | "discard" | "unwatch" if args.len() != 1 => {
                err(&format!("ERR wrong number of arguments for '{name}' command"))
            }
            "multi" => self.multi(),
            "exec" => self.exec(),
            "discard" => self.discard(),
            "watch" => self.watch(req),
            "unwatch" => self.unwatch(),
            "cluster" => self.cluster(args),
            "config" => self.config(&req),
            "command" => self.command(req),
            "info" => self.info_command(&req),
            "client" => self.client(args),
            "umctl" | "umread" | "umsync" | "umforward" | "umpublish" if !self.admin => no_admin(&name),
            "umforward" => self.umforward(req, asking).await,
            "umpublish" => self.publish_here(args),
            "umread" | "umsync" if !self.authenticated => err("NOAUTH Authentication required."),
            "umctl" if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"health")) => {
                Pending::Task(Box::pin(umctl::health(self.state.clone(), args[2..].to_vec())))
            }
            "umctl" if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"resetnodes")) => {
                Pending::Task(Box::pin(umctl::reset_nodes(self.state.clone())))
            }
            "umctl"
                if self.state.handover.has_predecessor()
                    && args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"setcluster") || a.eq_ignore_ascii_case(b"setrepl")) =>
            {
                // A metadata change while the process this one took over from still drains: it
                // stops first, so no connection is served under older metadata (`handover.rs`).
                let (state, proto, args) = (self.state.clone(), self.proto, args.to_vec());
                Pending::Task(Box::pin(async move {
                    if let Err(e) = state.handover.retire_predecessor().await {
                        return resp::error(&format!("ERR {e}"));
                    }
                    umctl::handle_and_start(&state, &args[1..], proto)
                }))
            }
            "umctl" => Pending::Ready(umctl::handle_and_start(&self.state, &args[1..], self.proto)),
            "umread" if args.len() >= 3 => {
                Pending::Task(Box::pin(crate::migrate::umread(self.state.clone(), args[1..].to_vec())))
            }
            "umread" => err("ERR wrong number of arguments for 'umread' command"),
            "umsync" => match args.len() {
                2 => Pending::Task(Box::pin(crate::migrate::umsync(self.state.clone(), args[1].clone()))),
                _ => err("ERR wrong number of arguments for 'umsync' command"),
            },
            _ => err(&format!(
                "ERR_COMMAND_NOT_SUPPORTED: '{}' is not supported by the moonraft proxy (it cannot be routed to one slot or changes connection state)",
                name.chars().take(64).collect::<String>()
            )),
        }
    }
}
