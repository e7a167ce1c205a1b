//! One client connection.
//!
//! A reader parses requests and dispatches each one at once (to a backend queue, or answered
//! locally), handing the writer a *pending reply* per request in request order. The writer
//! resolves them in order and writes every reply that is already available in one write, so
//! pipelined clients get coalesced replies. Blocking commands run on a connection dedicated to
//! this client, so they really block in Redis (no polling) without stalling shared
//! connections; the connection is closed (which unblocks Redis) when the client goes away.

mod admin;
mod node_scoped;
mod pubsub;
mod redirect;
mod transaction;

use crate::backend::{connect, read_reply, BackendError, ReplyResult};
use crate::clients::{ClientInfo, LastCommand};
use crate::cluster::{Route, TaskShared, TaskState};
use crate::command::{self, CommandSpec};
use crate::resp::{self, Frame, Request, RequestParser};
use crate::slot::key_slot;
use crate::slowlog::{describe_command, slowlog_args, Sample};
use crate::state::ProxyState;
use crate::umctl;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

/// Requests dispatched but not yet answered, per client; the reader waits beyond this.
const MAX_PENDING_REPLIES: usize = 1024;
const VERSION: &str = env!("CARGO_PKG_VERSION");

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

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn no_admin(command: &str) -> Pending {
    err(&format!(
        "NOPERM this connection has no permissions to run the '{command}' command (AUTH admin <admin_password> first)"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Data,
    Admin,
}

/// What `AUTH <user> <password>` grants: `default` with `password`, `admin` with
/// `admin_password` (which also grants data commands). Both users are always compared, so
/// the time taken does not say which one was tried.
fn check_user(cfg: &crate::config::ProxyConfig, user: &[u8], password: &[u8]) -> Option<Access> {
    use crate::config::password_matches;
    let admin_ok = cfg.admin_password.as_deref().is_some_and(|p| password_matches(p, password));
    let data_ok = cfg.password.as_deref().is_some_and(|p| password_matches(p, password));
    if user.eq_ignore_ascii_case(b"admin") && admin_ok {
        Some(Access::Admin)
    } else if user.eq_ignore_ascii_case(b"default") && (data_ok || cfg.password.is_none()) {
        // Like Redis: `default` without a configured password accepts any password.
        Some(Access::Data)
    } else {
        None
    }
}

/// A client's own connection to one node, and the node's `CLIENT ID` for it (0 until known),
/// with which a blocked command on it can be unblocked from another connection.
#[derive(Default)]
struct Dedicated {
    stream: tokio::sync::Mutex<Option<crate::tls::Stream>>,
    client_id: std::sync::atomic::AtomicI64,
}

type DedicatedConn = Arc<Dedicated>;

/// Whether an exchange may open a new dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    OrConnect,
    /// Only the connection already open: state on it (WATCH) would be lost on a new one.
    Existing,
}

#[derive(Debug)]
enum ExchangeError {
    /// `Reuse::Existing` and the connection is gone (it broke or a command on it was abandoned).
    Lost,
    Unreachable,
    Broken,
}

impl ExchangeError {
    fn message(&self, node: &str) -> String {
        match self {
            ExchangeError::Lost => format!("ERR the connection to {node} holding this client's WATCH was lost"),
            ExchangeError::Unreachable => BackendError::Unreachable(node.to_owned()).to_string(),
            ExchangeError::Broken => BackendError::Broken(node.to_owned()).to_string(),
        }
    }
}

/// Requests written on a client's dedicated connection to one node, and their replies.
struct Exchange {
    conn: DedicatedConn,
    node: String,
    proto: u8,
    settings: crate::backend::BackendSettings,
    reuse: Reuse,
}

impl Exchange {
    /// Writes `raw` (holding `replies` requests) and reads that many replies.
    async fn run(self, raw: &[u8], replies: usize) -> Result<Vec<Bytes>, ExchangeError> {
        let mut slot = self.conn.stream.lock().await;
        // Taken out while in use: if this future is dropped mid-command the socket is closed
        // rather than reused with a reply still in flight.
        let mut stream = match (slot.take(), self.reuse) {
            (Some(s), _) => s,
            (None, Reuse::Existing) => return Err(ExchangeError::Lost),
            (None, Reuse::OrConnect) => {
                let s = &self.settings;
                let mut stream =
                    connect(&self.node, self.proto, s.connect_timeout, s.max_bulk_len, s.node_auth.as_ref(), None)
                        .await
                        .map_err(|_| ExchangeError::Unreachable)?;
                // Its id, so that a blocked command on it can be unblocked (`CLIENT UNBLOCK`).
                stream.write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").await.map_err(|_| ExchangeError::Broken)?;
                let id = read_reply(&mut stream, &mut BytesMut::new(), s.max_bulk_len)
                    .await
                    .map_err(|_| ExchangeError::Broken)?;
                if let Ok(Some((Frame::Integer(id), _))) = Frame::parse(&id) {
                    self.conn.client_id.store(id, Ordering::Relaxed);
                }
                stream
            }
        };
        let result = async {
            stream.write_all(raw).await?;
            let mut buf = BytesMut::new();
            let mut out = Vec::with_capacity(replies);
            for _ in 0..replies {
                out.push(read_reply(&mut stream, &mut buf, self.settings.max_bulk_len).await?);
            }
            std::io::Result::Ok(out)
        }
        .await;
        match result {
            Ok(out) => {
                *slot = Some(stream);
                Ok(out)
            }
            Err(_) => Err(ExchangeError::Broken),
        }
    }
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
    let writer = tokio::spawn(write_loop(wr, rx, pushes_rx, closing_rx, state.clone()));
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
    async fn read_loop<R: AsyncRead + Unpin + Send>(&mut self, mut rd: R, tx: mpsc::Sender<Pending>) {
        let state = self.state.clone();
        let cfg = &state.config;
        let mut parser = RequestParser::new(cfg.proto_max_bulk_len, cfg.client_query_buffer_limit);
        let mut buf = BytesMut::with_capacity(16 * 1024);
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
                        let pending = self.handle(req).await;
                        self.mirror();
                        let close = matches!(pending, Pending::Close(_));
                        if tx.send(pending).await.is_err() || close {
                            return;
                        }
                        if let Some(done) = self.blocked.take() {
                            info.blocked.store(true, Ordering::Relaxed);
                            let limit = cfg.client_query_buffer_limit;
                            let unblocked = tokio::select! {
                                go_on = wait_unblocked(&mut rd, &mut buf, done, limit) => go_on,
                                _ = info.kill.notified() => false,
                            };
                            info.blocked.store(false, Ordering::Relaxed);
                            if !unblocked {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Pending::Close(resp::error(&format!("ERR {e}")))).await;
                        return;
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let read = async {
                match idle {
                    None => Some(rd.read_buf(&mut buf).await),
                    Some(t) => tokio::time::timeout(t, rd.read_buf(&mut buf)).await.ok(),
                }
            };
            let read = tokio::select! {
                r = read => r,
                // `CLIENT KILL`
                _ = info.kill.notified() => return,
            };
            match read {
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(_)) => info.touch(),
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

    async fn handle(&mut self, req: Request) -> Pending {
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
        if let Some(spec) = command::lookup(req.name()) {
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
            "umctl" => {
                let reply = umctl::handle(&self.state, &args[1..], self.proto);
                if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"setcluster")) {
                    crate::migrate::start_tasks(&self.state);
                }
                Pending::Ready(reply)
            }
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

    /// Routes a data command by its keys' slot. `redirect`: forward it when another proxy
    /// serves the slot (active redirection) instead of answering `MOVED`/`ASK`.
    async fn data_command(
        &mut self,
        spec: &'static CommandSpec,
        req: Request,
        asking: bool,
        redirect: bool,
    ) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Password not given by AUTH command");
        }
        if self.state.config.coordinator_lease && self.state.lease.expired() {
            return err("CLUSTERDOWN this proxy lost its coordinator lease (no coordinator reached it in time, or it was failed over)");
        }
        let args = &req.args;
        if !spec.check_arity(args.len()) {
            return err(&spec.arity_error());
        }
        let keys = match spec.key_indices(args) {
            Ok(k) => k,
            Err(e) => return err(&e),
        };
        let Some(&first) = keys.first() else {
            return err(&format!("ERR missing key: '{}' needs at least one key to be routed to a slot", spec.name));
        };
        let slot = key_slot(&args[first]);
        if keys[1..].iter().any(|&k| key_slot(&args[k]) != slot) {
            if redirect && redirect::splits(spec) {
                return self.split_by_key(spec, req).await;
            }
            return err("CROSSSLOT Keys in request don't hash to the same slot");
        }
        let routed = {
            let installed = self.state.installed.load();
            match installed.table.route(slot, asking) {
                Route::Local(node) => {
                    let addr = installed.table.nodes[node].clone();
                    let mut migration = MigrationPath::None;
                    if let Some(task) = installed.table.task_for_slot(slot) {
                        if task.importing {
                            if task.state() != crate::cluster::TaskState::SwitchCommitted {
                                if spec.is_blocking(args) {
                                    return err(&format!("TRYAGAIN slot {slot} is being imported"));
                                }
                                migration = MigrationPath::Pull(task.clone());
                            }
                        } else {
                            // Count first, then re-check the state: the driver sets the state
                            // first, then waits for the count (both SeqCst), so no command
                            // slips through unseen.
                            task.shared.inflight.fetch_add(1, Ordering::SeqCst);
                            let guard = InflightGuard(task.shared.clone());
                            if task.state() != crate::cluster::TaskState::PreCheck {
                                return err(&format!("TRYAGAIN slot {slot} is being switched to another node"));
                            }
                            migration = MigrationPath::Source(guard);
                        }
                    }
                    if spec.is_blocking(args) {
                        Ok((None, addr, migration))
                    } else {
                        Ok((installed.pool(node, self.proto, &self.state.registry), addr, migration))
                    }
                }
                // Replica reads: like a Redis Cluster replica, this proxy serves reads of its
                // replica nodes' slots to clients that sent READONLY (possibly stale, as there).
                Route::Moved(_) if self.readonly && spec.is_read_only() && installed.replica_node(slot).is_some() => {
                    let node = installed.replica_node(slot).unwrap_or_default().to_owned();
                    Ok((Some(self.state.registry.pool(&node, self.proto)), node, MigrationPath::None))
                }
                // An ASK always names the slot's source, which serves it until the switch.
                Route::Moved(addr) | Route::Ask(addr) if redirect => Err(addr.to_owned()),
                Route::Moved(addr) => return err(&format!("MOVED {slot} {addr}")),
                Route::Ask(addr) => return err(&format!("ASK {slot} {addr}")),
                Route::TryAgain => return err(&format!("TRYAGAIN slot {slot} is being switched to another node")),
                Route::NotCovered => return err(&format!("CLUSTERDOWN Hash slot not served: slot not covered {slot}")),
                Route::NoCluster => {
                    let default = &self.state.config.default_redirection_address;
                    if default.is_empty() {
                        return err("ERR_CLUSTER_NOT_FOUND");
                    }
                    return err(&format!("MOVED {slot} {default}"));
                }
            }
        };
        let (pool, node, migration) = match routed {
            Ok(local) => local,
            Err(peer) => {
                if !spec.is_read_only() {
                    self.last_write = LastWrite::Forwarded;
                }
                return self.forward(&peer, req).await;
            }
        };
        if !spec.is_read_only() && !matches!(&self.last_write, LastWrite::Node(n) if *n == node) {
            self.last_write = LastWrite::Node(node.clone());
        }
        let guard = match migration {
            MigrationPath::None => None,
            MigrationPath::Source(g) => Some(g),
            MigrationPath::Pull(task) => {
                let Some(pool) = pool else { return err("TRYAGAIN slot is being imported") };
                let keys: Vec<Bytes> = keys.iter().map(|&k| args[k].clone()).collect();
                let read_only = keys.len() == 1 && spec.is_read_only_single_key();
                // Later commands of this client wait for this one, keeping its order.
                let (done_tx, done_rx) = oneshot::channel::<()>();
                self.blocked = Some(done_rx);
                let state = self.state.clone();
                let pin = self.id as usize;
                return Pending::Task(Box::pin(async move {
                    let _done = done_tx;
                    if read_only {
                        crate::migrate::read_where_it_is(state, task, pool, req, pin).await
                    } else {
                        crate::migrate::pull_then_run(state, task, pool, keys, req.raw, pin).await
                    }
                }));
            }
        };
        match pool {
            Some(pool) => {
                let sample = self.state.slowlog.should_sample().then(|| {
                    Box::new(Sample {
                        session_id: self.id,
                        client: Some(self.info.clone()),
                        args: slowlog_args(args),
                        created_wall: SystemTime::now(),
                        created: Instant::now(),
                        sent_to_backend: None,
                        command: describe_command(args),
                    })
                });
                let rx = pool.send(req.raw, self.id as usize).await;
                let sample = sample.map(|mut s| {
                    s.sent_to_backend = Some(Instant::now());
                    s
                });
                Pending::Backend { rx, sample, _guard: guard }
            }
            None => match (self.blocking(node, req, slot), guard) {
                (Pending::Task(fut), Some(g)) => Pending::Task(Box::pin(async move {
                    let _guard = g;
                    fut.await
                })),
                (p, _) => p,
            },
        }
    }

    /// `UMFORWARD <n> <command…>`: a command another proxy forwarded here (active
    /// redirection). Run as a data command; forwarded again only while `n` allows it.
    async fn umforward(&mut self, req: Request, asking: bool) -> Pending {
        let args = &req.args;
        let Some(budget) = args.get(1).and_then(|n| resp::parse_int(n)).filter(|n| *n >= 0) else {
            return err("ERR invalid redirection times");
        };
        if args.len() < 3 {
            return err("ERR missing forwarded command");
        }
        let inner = Request::from_args(args[2..].to_vec());
        let Some(spec) = command::lookup(inner.name()) else {
            return err(&format!(
                "ERR_COMMAND_NOT_SUPPORTED: '{}' cannot be forwarded",
                String::from_utf8_lossy(inner.name()).to_ascii_lowercase().chars().take(64).collect::<String>()
            ));
        };
        let redirect = budget > 0 && self.state.config.active_redirection;
        self.data_command(spec, inner, asking, redirect).await
    }

    /// Runs a blocking command on this client's dedicated connection to `node`. The writer
    /// polls the future only after every earlier reply arrived, so the command reaches Redis
    /// after the client's earlier commands; later ones wait for it (`blocked`).
    ///
    /// While it is parked, the command follows its slot: when a migration of the slot starts
    /// draining, or the slot is no longer this node's, it is released (`CLIENT UNBLOCK …
    /// ERROR`, atomic in Redis: the command either already popped, and the client gets that, or
    /// gets `TRYAGAIN` and retries where the slot is now). Otherwise a parked client would hold a
    /// migration's drain up, or stay parked on a node that no longer gets the key's writes.
    fn blocking(&mut self, node: String, req: Request, slot: u16) -> Pending {
        let exchange = self.dedicated_exchange(node.clone(), Reuse::OrConnect);
        let conn = exchange.conn.clone();
        let state = self.state.clone();
        self.after_earlier_replies(async move {
            let run = exchange.run(&req.raw, 1);
            tokio::pin!(run);
            let result = loop {
                let changed = state.table_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (task, release_now) = slot_watch(&state, slot, &node);
                let draining = async {
                    match &task {
                        Some(t) => {
                            let drained = t.draining.notified();
                            tokio::pin!(drained);
                            drained.as_mut().enable();
                            if t.state() == TaskState::PreCheck {
                                drained.await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                if release_now {
                    break release(&state, &node, &conn, &mut run).await;
                }
                tokio::select! {
                    r = &mut run => break r,
                    _ = &mut changed => continue,
                    _ = draining => break release(&state, &node, &conn, &mut run).await,
                }
            };
            match result {
                Ok(mut replies) => {
                    let reply = replies.pop().unwrap_or_default();
                    if reply.starts_with(b"-UNBLOCKED") {
                        return resp::error(&format!(
                            "TRYAGAIN slot {slot} is being moved; the blocking command was released, retry it"
                        ));
                    }
                    reply
                }
                Err(e) => resp::error(&e.message(&node)),
            }
        })
    }

    /// A reply computed by `fut` once every earlier reply of this client is written; the
    /// client's later commands wait for it (like Redis, for a blocking command).
    fn after_earlier_replies(&mut self, fut: impl Future<Output = Bytes> + Send + 'static) -> Pending {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        self.blocked = Some(done_rx);
        Pending::Task(Box::pin(async move {
            let _done = done_tx; // dropped when the future finishes or is abandoned
            fut.await
        }))
    }

    /// This client's own connection to `node` (blocking commands, WATCH and transactions),
    /// ready to be used by a future.
    fn dedicated_exchange(&mut self, node: String, reuse: Reuse) -> Exchange {
        Exchange {
            conn: self.dedicated.entry((node.clone(), self.proto)).or_default().clone(),
            node,
            proto: self.proto,
            settings: self.state.registry.settings().clone(),
            reuse,
        }
    }

    /// `AUTH <password>`, `AUTH default <password>` (data commands) or `AUTH admin
    /// <admin_password>` (everything). One error for every wrong combination, so a caller
    /// cannot tell whether the user or the password was wrong.
    fn auth(&mut self, args: &[Bytes]) -> Pending {
        let cfg = &self.state.config;
        let (user, password): (&[u8], &Bytes) = match args.len() {
            2 if cfg.password.is_none() => {
                return err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
            }
            2 => (b"default", &args[1]),
            3 => (&args[1], &args[2]),
            1 => return err("ERR wrong number of arguments for 'auth' command"),
            _ => return err("ERR syntax error"),
        };
        match check_user(cfg, user, password) {
            Some(Access::Admin) => {
                self.admin = true;
                self.authenticated = true;
                ok()
            }
            Some(Access::Data) => {
                self.authenticated = true;
                ok()
            }
            None => err(WRONGPASS),
        }
    }

    /// `RESET`: the connection as it was when it opened (no transaction, watch or
    /// subscription, RESP2, no name, the default user).
    fn reset(&mut self) -> Pending {
        self.multi = None;
        self.watching = None;
        self.dedicated.clear();
        self.subs = pubsub::Subscriptions::default();
        self.proto = 2;
        self.info.set_name(None);
        self.last_write = LastWrite::None;
        self.asking = false;
        self.readonly = false;
        self.authenticated = self.state.config.password.is_none();
        self.admin = self.state.config.admin_password.is_none();
        Pending::Ready(resp::simple("RESET"))
    }

    fn hello(&mut self, args: &[Bytes]) -> Pending {
        let mut proto = self.proto;
        let mut i = 1;
        if let Some(v) = args.get(1) {
            match resp::parse_int(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            }
            i = 2;
        }
        let mut authenticated = self.authenticated;
        let mut admin = self.admin;
        let mut name = None;
        while i < args.len() {
            if args[i].eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
                let (user, pass) = (&args[i + 1], &args[i + 2]);
                match check_user(&self.state.config, user, pass) {
                    Some(Access::Admin) => {
                        authenticated = true;
                        admin = true;
                    }
                    Some(Access::Data) => authenticated = true,
                    None => return err(WRONGPASS),
                }
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
                name = Some(args[i + 1].clone());
                i += 2;
            } else {
                return err(&format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i])));
            }
        }
        if !authenticated {
            return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        self.authenticated = true;
        self.admin = admin;
        self.proto = proto;
        if name.is_some() {
            self.info.set_name(name);
        }
        let reply = Frame::Map(vec![
            (Frame::bulk_str("server"), Frame::bulk_str("redis")),
            (Frame::bulk_str("version"), Frame::bulk_str("7.0.0")),
            (Frame::bulk_str("proto"), Frame::Integer(proto as i64)),
            (Frame::bulk_str("id"), Frame::Integer(self.id as i64)),
            (Frame::bulk_str("mode"), Frame::bulk_str("cluster")),
            (Frame::bulk_str("role"), Frame::bulk_str("master")),
            (Frame::bulk_str("modules"), Frame::Array(vec![])),
        ]);
        Pending::Ready(reply.to_bytes(proto))
    }
}

/// For a command parked on `slot` at `node`: the migration task moving the slot out, if any,
/// and whether the command must be released at once (the slot is switching, or it is no longer
/// this node's).
fn slot_watch(state: &ProxyState, slot: u16, node: &str) -> (Option<Arc<TaskShared>>, bool) {
    let installed = state.installed.load();
    let table = &installed.table;
    let task = table.task_for_slot(slot).filter(|t| !t.importing).map(|t| t.shared.clone());
    let here =
        matches!(table.route(slot, false), Route::Local(i) if table.nodes.get(i).map(String::as_str) == Some(node));
    let switching = task.as_ref().is_some_and(|t| t.state() != TaskState::PreCheck);
    (task, switching || !here)
}

/// Unblocks the command `run` is waiting for and returns its reply. Sent again until the
/// reply comes: the command (or the connection's `CLIENT ID`) may not have reached the node yet.
async fn release<F>(state: &ProxyState, node: &str, conn: &Dedicated, run: &mut Pin<&mut F>) -> F::Output
where
    F: Future,
{
    loop {
        let id = conn.client_id.load(Ordering::Relaxed);
        let unblock = Request::from_args(vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"UNBLOCK"),
            Bytes::from(id.to_string()),
            Bytes::from_static(b"ERROR"),
        ]);
        let _ = state.registry.pool(node, 2).call(&unblock).await;
        tokio::select! {
            r = run.as_mut() => return r,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Waits for a blocking command to finish while still reading (and buffering, up to `limit`)
/// the client's socket, so a client that disconnects is noticed. False: the client is gone.
async fn wait_unblocked<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    mut done: oneshot::Receiver<()>,
    limit: usize,
) -> bool {
    loop {
        if buf.len() >= limit {
            let _ = (&mut done).await;
            return true;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            _ = &mut done => return true,
            read = rd.read_buf(buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
        if out.capacity() > 1024 * 1024 {
            *out = BytesMut::with_capacity(16 * 1024);
        }
    }
    Ok(())
}

/// Awaits `fut` while writing the pushes that come meanwhile (they go between two replies, so
/// after everything already in `out`). `None`: the connection is to be closed.
async fn with_pushes<W: AsyncWrite + Unpin, F: Future>(
    wr: &mut W,
    out: &mut BytesMut,
    pushes: &mut mpsc::Receiver<PushItem>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            // Pushes first: a subscription's confirmation is queued before its command's
            // (empty) reply completes, and must be written before anything after it.
            biased;
            push = pushes.recv() => match push {
                Some(PushItem::Message(b)) => {
                    out.extend_from_slice(&b);
                    flush(wr, out).await.ok()?;
                }
                Some(PushItem::Close(b)) => {
                    out.extend_from_slice(&b);
                    let _ = flush(wr, out).await;
                    let _ = wr.shutdown().await;
                    return None;
                }
                None => return Some(fut.await),
            },
            v = &mut fut => return Some(v),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Pending>,
    mut pushes: mpsc::Receiver<PushItem>,
    mut closing: watch::Receiver<bool>,
    state: Arc<ProxyState>,
) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                match with_pushes(&mut wr, &mut out, &mut pushes, rx.recv()).await {
                    Some(Some(item)) => item,
                    Some(None) => break,
                    None => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let mut close = false;
        let reply = match item {
            Pending::Ready(b) => b,
            Pending::Close(b) => {
                close = true;
                b
            }
            Pending::Backend { mut rx, sample, _guard } => {
                let result: Option<ReplyResult> = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if flush(&mut wr, &mut out).await.is_err() {
                            return;
                        }
                        match with_pushes(&mut wr, &mut out, &mut pushes, rx).await {
                            Some(r) => r.ok(),
                            None => return,
                        }
                    }
                    Err(oneshot::error::TryRecvError::Closed) => None,
                };
                if let Some(s) = sample {
                    state.slowlog.finish(*s, Instant::now());
                }
                match result {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => resp::error(&e.to_string()),
                    None => resp::error(
                        "ERR backend connection broke before the reply arrived; the command may or may not have been executed",
                    ),
                }
            }
            Pending::Task(fut) => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                tokio::select! {
                    b = with_pushes(&mut wr, &mut out, &mut pushes, fut) => match b {
                        Some(b) => b,
                        None => return,
                    },
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
        };
        if reply.len() >= 32 * 1024 {
            if flush(&mut wr, &mut out).await.is_err() || wr.write_all(&reply).await.is_err() {
                return;
            }
        } else {
            out.extend_from_slice(&reply);
        }
        if close || out.len() >= 64 * 1024 {
            if flush(&mut wr, &mut out).await.is_err() {
                return;
            }
            if close {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
    let _ = flush(&mut wr, &mut out).await;
    let _ = wr.shutdown().await;
}
