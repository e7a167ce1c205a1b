//! Pub/sub: `SUBSCRIBE`/`PSUBSCRIBE`/`UNSUBSCRIBE`/`PUNSUBSCRIBE`/`PUBLISH` with Redis Cluster
//! semantics, sharded `SSUBSCRIBE`/`SUNSUBSCRIBE`/`SPUBLISH`, `PUBSUB` introspection and the
//! inter-proxy `UMPUBLISH`.
//!
//! **Classic channels** are not tied to a slot: in Redis Cluster a message published on any
//! node reaches subscribers on every node. Here a client's channel and pattern subscriptions
//! live on one backend connection of its own to one of its proxy's master nodes, and
//! `PUBLISH` publishes on every master node of its proxy and asks every other proxy of the
//! cluster to do the same (`UMPUBLISH`). Every subscriber is subscribed on exactly one node and
//! every node gets the message once, so each subscriber gets it once, whichever proxies the
//! publisher and the subscriber use; slot migrations do not matter.
//!
//! **Shard channels** are routed by slot like keys: `SSUBSCRIBE` on the node serving the
//! channel's slot (`MOVED`/`ASK` otherwise; with active redirection, through the proxy that
//! serves it), `SPUBLISH` as a data command. When the slot moves away, the subscription is
//! dropped and the client told with a `sunsubscribe` message, as Redis 7 does, so that it
//! subscribes again where the slot is now.
//!
//! Delivery is at most once, as in Redis: a message is lost if a node or a connection on its
//! way fails. If a client's subscription connection breaks, the client's connection is closed
//! (with an error) so that its library reconnects and subscribes again instead of waiting for
//! messages that will not come.
//!
//! A *hub* task per subscribed client owns its backend subscription connections. The session
//! keeps the client's subscription sets itself (so counts and RESP2 subscribed mode are known
//! when a command is read) and hands the hub what to send and which confirmations to push;
//! the hub pushes them to the client only once the backend has confirmed, so a message
//! published after a client saw its `subscribe` confirmation always reaches it.

use super::{err, Pending, PushItem, Session};
use crate::backend::connect;
use crate::cluster::Route;
use crate::resp::{self, Frame, Request};
use crate::slot::key_slot;
use crate::state::ProxyState;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

/// Requests a client's hub may have queued.
const HUB_QUEUE: usize = 64;
/// Backend frames a hub may have queued (the reader waits beyond this, and Redis's
/// `client-output-buffer-limit pubsub` bounds what piles up behind it).
const EVENT_QUEUE: usize = 1024;
/// How often a hub re-checks where its shard channels' slots are (besides each new table):
/// a migration's switch changes the route without a new table.
const SHARD_RECHECK: Duration = Duration::from_millis(100);

/// A subscription command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

impl Kind {
    pub(super) fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "subscribe" => Kind::Subscribe,
            "psubscribe" => Kind::PSubscribe,
            "ssubscribe" => Kind::SSubscribe,
            "unsubscribe" => Kind::Unsubscribe,
            "punsubscribe" => Kind::PUnsubscribe,
            "sunsubscribe" => Kind::SUnsubscribe,
            _ => return None,
        })
    }

    /// The command's name, which is also the kind of its confirmation messages.
    fn name(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::PSubscribe => "psubscribe",
            Kind::SSubscribe => "ssubscribe",
            Kind::Unsubscribe => "unsubscribe",
            Kind::PUnsubscribe => "punsubscribe",
            Kind::SUnsubscribe => "sunsubscribe",
        }
    }

    fn subscribes(self) -> bool {
        matches!(self, Kind::Subscribe | Kind::PSubscribe | Kind::SSubscribe)
    }
}

/// What, besides subscription commands, a RESP2 client in subscribed mode may send.
pub(super) fn allowed_when_subscribed(name: &[u8]) -> bool {
    const ALLOWED: &[&[u8]] = &[
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
        b"ping",
        b"quit",
        b"reset",
    ];
    ALLOWED.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Where a subscription connection goes: a Redis node, or (shard channels with active
/// redirection) the proxy serving the slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Target {
    address: String,
    peer: bool,
}

/// One client's subscriptions, kept by its session.
#[derive(Default)]
pub(super) struct Subscriptions {
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    shard: BTreeMap<Bytes, Target>,
    /// The node holding the channel and pattern subscriptions.
    classic: Option<Target>,
    hub: Option<mpsc::Sender<HubCmd>>,
    /// Shard channels the hub dropped because their slot moved (the session catches up).
    dropped: Arc<Mutex<Vec<Bytes>>>,
}

impl Subscriptions {
    /// RESP2 subscribed mode: any subscription at all.
    pub(super) fn active(&mut self) -> bool {
        if !self.shard.is_empty() {
            self.catch_up();
        }
        !self.channels.is_empty() || !self.patterns.is_empty() || !self.shard.is_empty()
    }

    /// Channels, patterns and shard channels subscribed (`CLIENT LIST`'s sub/psub/ssub).
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (self.channels.len(), self.patterns.len(), self.shard.len())
    }

    fn classic_count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    fn catch_up(&mut self) {
        let dropped = std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|e| e.into_inner()));
        for channel in dropped {
            self.shard.remove(&channel);
        }
    }
}

/// A confirmation (or a dropped-subscription notice) as the client's protocol encodes it.
fn notice(kind: &str, channel: Option<&Bytes>, count: i64, proto: u8) -> Bytes {
    Frame::Push(vec![
        Frame::bulk_str(kind),
        channel.map_or(Frame::Null, |c| Frame::Bulk(c.clone())),
        Frame::Integer(count),
    ])
    .to_bytes(proto)
}

/// Work for a hub.
struct HubCmd {
    /// Commands to write on subscription connections.
    sends: Vec<(Target, Vec<Bytes>)>,
    /// Push `replies` only once the (single) send is confirmed (subscribing: a message
    /// published after the client saw the confirmation must reach it); otherwise at once
    /// (unsubscribing: messages may trail, as in Redis).
    wait: bool,
    replies: Bytes,
    shard_add: Vec<(Bytes, Target, u16)>,
    shard_remove: Vec<Bytes>,
    /// Connections left with no subscription: closed (which unsubscribes whatever is left).
    release: Vec<Target>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Session {
    /// `(P|S)SUBSCRIBE` / `(P|S)UNSUBSCRIBE`.
    pub(super) fn subscription(&mut self, kind: Kind, req: &Request, asking: bool) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let args = &req.args[1..];
        if kind.subscribes() && args.is_empty() {
            return err(&format!("ERR wrong number of arguments for '{}' command", kind.name()));
        }
        self.subs.catch_up();
        let proto = self.proto;
        let mut replies = BytesMut::new();
        let mut cmd = HubCmd {
            sends: Vec::new(),
            wait: kind.subscribes(),
            replies: Bytes::new(),
            shard_add: Vec::new(),
            shard_remove: Vec::new(),
            release: Vec::new(),
            done: oneshot::channel().0,
        };
        match kind {
            Kind::Subscribe | Kind::PSubscribe => {
                let target = match &self.subs.classic {
                    Some(t) => t.clone(),
                    None => match self.state.installed.load().table.nodes.first() {
                        Some(node) => Target { address: node.clone(), peer: false },
                        None => return err("ERR_CLUSTER_NOT_FOUND"),
                    },
                };
                self.subs.classic = Some(target.clone());
                let mut fresh = Vec::new();
                for channel in args {
                    let set = if kind == Kind::Subscribe { &mut self.subs.channels } else { &mut self.subs.patterns };
                    if set.insert(channel.clone()) {
                        fresh.push(channel.clone());
                    }
                    replies.extend_from_slice(&notice(kind.name(), Some(channel), self.subs.classic_count(), proto));
                }
                if !fresh.is_empty() {
                    cmd.sends.push((target, command(kind, fresh)));
                }
            }
            Kind::Unsubscribe | Kind::PUnsubscribe => {
                let patterns = kind == Kind::PUnsubscribe;
                let all: Vec<Bytes> =
                    if patterns { &self.subs.patterns } else { &self.subs.channels }.iter().cloned().collect();
                let named: Vec<Bytes> = if args.is_empty() { all } else { args.to_vec() };
                let mut gone = Vec::new();
                for channel in &named {
                    let set = if patterns { &mut self.subs.patterns } else { &mut self.subs.channels };
                    if set.remove(channel) {
                        gone.push(channel.clone());
                    }
                    replies.extend_from_slice(&notice(kind.name(), Some(channel), self.subs.classic_count(), proto));
                }
                if named.is_empty() {
                    replies.extend_from_slice(&notice(kind.name(), None, self.subs.classic_count(), proto));
                }
                if self.subs.classic_count() == 0 {
                    cmd.release.extend(self.subs.classic.take());
                } else if let (Some(target), false) = (self.subs.classic.clone(), gone.is_empty()) {
                    cmd.sends.push((target, command(kind, gone)));
                }
            }
            Kind::SSubscribe => {
                let slot = key_slot(&args[0]);
                if args.iter().any(|c| key_slot(c) != slot) {
                    return err("CROSSSLOT Keys in request don't hash to the same slot");
                }
                let target = match self.shard_target(slot, asking) {
                    Ok(t) => t,
                    Err(reply) => return reply,
                };
                let mut fresh = Vec::new();
                for channel in args {
                    if !self.subs.shard.contains_key(channel) {
                        self.subs.shard.insert(channel.clone(), target.clone());
                        fresh.push(channel.clone());
                        cmd.shard_add.push((channel.clone(), target.clone(), slot));
                    }
                    replies.extend_from_slice(&notice(kind.name(), Some(channel), self.subs.shard.len() as i64, proto));
                }
                if !fresh.is_empty() {
                    cmd.sends.push((target, command(kind, fresh)));
                }
            }
            Kind::SUnsubscribe => {
                let named: Vec<Bytes> =
                    if args.is_empty() { self.subs.shard.keys().cloned().collect() } else { args.to_vec() };
                let mut by_target: BTreeMap<Target, Vec<Bytes>> = BTreeMap::new();
                for channel in &named {
                    if let Some(target) = self.subs.shard.remove(channel) {
                        by_target.entry(target).or_default().push(channel.clone());
                        cmd.shard_remove.push(channel.clone());
                    }
                    replies.extend_from_slice(&notice(kind.name(), Some(channel), self.subs.shard.len() as i64, proto));
                }
                if named.is_empty() {
                    replies.extend_from_slice(&notice(kind.name(), None, 0, proto));
                }
                for (target, channels) in by_target {
                    if self.subs.shard.values().any(|t| *t == target) {
                        cmd.sends.push((target, command(kind, channels)));
                    } else {
                        cmd.release.push(target);
                    }
                }
            }
        }
        cmd.replies = replies.freeze();
        if cmd.sends.is_empty() && cmd.shard_remove.is_empty() && cmd.release.is_empty() {
            // Nothing for a backend to do: the confirmations are the whole reply.
            return Pending::Ready(cmd.replies);
        }
        let hub = self.hub();
        Pending::Task(Box::pin(async move {
            let (done, finished) = oneshot::channel();
            cmd.done = done;
            if hub.send(cmd).await.is_err() {
                return resp::error("ERR this client's subscriptions were closed");
            }
            match finished.await {
                Ok(Ok(())) => Bytes::new(),
                Ok(Err(e)) => resp::error(&e),
                Err(_) => resp::error("ERR this client's subscriptions were closed"),
            }
        }))
    }

    /// Where a shard channel of `slot` is subscribed, or the reply that says where it is not.
    fn shard_target(&self, slot: u16, asking: bool) -> Result<Target, Pending> {
        let installed = self.state.installed.load();
        let redirect = self.state.config.active_redirection;
        match installed.table.route(slot, asking) {
            Route::Local(node) => Ok(Target { address: installed.table.nodes[node].clone(), peer: false }),
            Route::Moved(addr) | Route::Ask(addr) if redirect => Ok(Target { address: addr.to_owned(), peer: true }),
            Route::Moved(addr) => Err(err(&format!("MOVED {slot} {addr}"))),
            Route::Ask(addr) => Err(err(&format!("ASK {slot} {addr}"))),
            Route::TryAgain => Err(err(&format!("TRYAGAIN slot {slot} is being switched to another node"))),
            Route::NotCovered => Err(err(&format!("CLUSTERDOWN Hash slot not served: slot not covered {slot}"))),
            Route::NoCluster => Err(err("ERR_CLUSTER_NOT_FOUND")),
        }
    }

    /// This client's hub, started on first use.
    fn hub(&mut self) -> mpsc::Sender<HubCmd> {
        if let Some(hub) = self.subs.hub.as_ref().filter(|h| !h.is_closed()) {
            return hub.clone();
        }
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let hub = Hub {
            state: self.state.clone(),
            proto: self.proto,
            pushes: self.pushes.clone(),
            conns: HashMap::new(),
            events_tx,
            next_conn: 0,
            shard: BTreeMap::new(),
            dropped: self.subs.dropped.clone(),
        };
        tokio::spawn(hub.run(rx, events));
        self.subs.hub = Some(tx.clone());
        tx
    }

    /// `PUBLISH channel message`: on every master node of this proxy and, through
    /// `UMPUBLISH`, of every other proxy of the cluster. The reply counts the subscribers
    /// reached everywhere.
    pub(super) fn publish(&mut self, args: &[Bytes]) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        if args.len() != 3 {
            return err("ERR wrong number of arguments for 'publish' command");
        }
        let installed = self.state.installed.load();
        if !installed.table.has_cluster() {
            return err("ERR_CLUSTER_NOT_FOUND");
        }
        let local = Request::from_args(vec![Bytes::from_static(b"PUBLISH"), args[1].clone(), args[2].clone()]);
        let forward = Request::from_args(vec![Bytes::from_static(b"UMPUBLISH"), args[1].clone(), args[2].clone()]);
        let mut calls = Vec::new();
        for node in 0..installed.table.nodes.len() {
            if let Some(pool) = installed.pool(node, 2, &self.state.registry) {
                calls.push((pool, local.raw.clone()));
            }
        }
        for peer in &installed.table.peers {
            calls.push((self.state.registry.peer_pool(peer), forward.raw.clone()));
        }
        let pin = self.id as usize;
        Pending::Task(Box::pin(async move { resp::integer(count_receivers(calls, pin).await) }))
    }

    /// `UMPUBLISH channel message` (another proxy's `PUBLISH`): on this proxy's master nodes.
    pub(super) fn publish_here(&mut self, args: &[Bytes]) -> Pending {
        if args.len() != 3 {
            return err("ERR wrong number of arguments for 'umpublish' command");
        }
        let installed = self.state.installed.load();
        let local = Request::from_args(vec![Bytes::from_static(b"PUBLISH"), args[1].clone(), args[2].clone()]);
        let calls: Vec<_> = (0..installed.table.nodes.len())
            .filter_map(|node| installed.pool(node, 2, &self.state.registry))
            .map(|pool| (pool, local.raw.clone()))
            .collect();
        let pin = self.id as usize;
        Pending::Task(Box::pin(async move { resp::integer(count_receivers(calls, pin).await) }))
    }

    /// `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB`, as one Redis Cluster node
    /// answers them for itself: over this proxy's master nodes, merged.
    pub(super) fn pubsub_introspection(&mut self, req: &Request) -> Pending {
        let args = &req.args;
        let Some(sub) = args.get(1).map(|s| s.to_ascii_lowercase()) else {
            return err("ERR wrong number of arguments for 'pubsub' command");
        };
        use super::node_scoped::Nodes;
        match (sub.as_slice(), args.len()) {
            (b"channels" | b"shardchannels", 2 | 3) => self.ask_nodes(req, Nodes::All, 2, |replies, proto| {
                let mut names = BTreeSet::new();
                for r in replies {
                    match r {
                        Ok(Frame::Array(items)) => {
                            names.extend(items.into_iter().filter_map(|f| f.as_bytes().map(Bytes::copy_from_slice)))
                        }
                        Ok(_) => {}
                        Err(e) => return resp::error(&e),
                    }
                }
                Frame::Array(names.into_iter().map(Frame::Bulk).collect()).to_bytes(proto)
            }),
            (b"numsub" | b"shardnumsub", _) => self.ask_nodes(req, Nodes::All, 2, |replies, proto| {
                let mut counts: Vec<(Frame, i64)> = Vec::new();
                for r in replies {
                    let items = match r {
                        Ok(Frame::Array(items)) => items,
                        Ok(_) => continue,
                        Err(e) => return resp::error(&e),
                    };
                    for (i, pair) in items.chunks(2).enumerate() {
                        let n = match pair.get(1) {
                            Some(Frame::Integer(n)) => *n,
                            _ => 0,
                        };
                        match counts.get_mut(i) {
                            Some(c) => c.1 += n,
                            None => counts.push((pair[0].clone(), n)),
                        }
                    }
                }
                Frame::Array(counts.into_iter().flat_map(|(c, n)| [c, Frame::Integer(n)]).collect()).to_bytes(proto)
            }),
            (b"numpat", 2) => self.ask_nodes(req, Nodes::All, 2, |replies, _| {
                let mut total = 0;
                for r in replies {
                    match r {
                        Ok(Frame::Integer(n)) => total += n,
                        Ok(_) => {}
                        Err(e) => return resp::error(&e),
                    }
                }
                resp::integer(total)
            }),
            (b"channels" | b"shardchannels" | b"numpat", _) => {
                err(&format!("ERR wrong number of arguments for 'pubsub|{}' command", String::from_utf8_lossy(&sub)))
            }
            _ => err(&format!(
                "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(&args[1]).chars().take(64).collect::<String>()
            )),
        }
    }
}

fn command(kind: Kind, channels: Vec<Bytes>) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(channels.len() + 1);
    args.push(Bytes::from_static(kind.name().as_bytes()));
    args.extend(channels);
    args
}

/// Sends each call and adds up the integer replies (a failed one counts 0: delivery is at
/// most once, and one unreachable proxy must not fail a publish that reached the others).
async fn count_receivers(calls: Vec<(Arc<crate::backend::NodePool>, Bytes)>, pin: usize) -> i64 {
    let mut pending = Vec::with_capacity(calls.len());
    for (pool, raw) in &calls {
        pending.push(pool.send(raw.clone(), pin).await);
    }
    let mut total = 0;
    // (`calls` keeps the pools, and so their connections, until every reply is in)
    for rx in pending {
        if let Ok(Ok(reply)) = rx.await {
            if let Ok(Some((Frame::Integer(n), _))) = Frame::parse(&reply) {
                total += n;
            }
        }
    }
    total
}

/// A frame from a subscription connection (`Err`: the connection is gone, and why).
struct Event {
    conn: u64,
    frame: Result<Frame, String>,
}

/// Replies a send is waiting for on its connection.
struct Expect {
    remaining: usize,
    /// What to push, and whom to tell, once they are all in.
    then: Option<(Bytes, oneshot::Sender<Result<(), String>>)>,
}

struct HubConn {
    id: u64,
    writer: WriteHalf<crate::tls::Stream>,
    expects: VecDeque<Expect>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for HubConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The task owning one client's subscription connections.
struct Hub {
    state: Arc<ProxyState>,
    proto: u8,
    pushes: mpsc::Sender<PushItem>,
    conns: HashMap<Target, HubConn>,
    events_tx: mpsc::Sender<Event>,
    next_conn: u64,
    /// The shard channels and where they are subscribed (checked against the routing table).
    shard: BTreeMap<Bytes, (Target, u16)>,
    dropped: Arc<Mutex<Vec<Bytes>>>,
}

impl Hub {
    async fn run(mut self, mut cmds: mpsc::Receiver<HubCmd>, mut events: mpsc::Receiver<Event>) {
        let state = self.state.clone();
        let result: Result<(), String> = async {
            loop {
                let changed = state.table_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let watch_routes = !self.shard.is_empty();
                tokio::select! {
                    cmd = cmds.recv() => match cmd {
                        Some(cmd) => self.execute(cmd).await?,
                        None => return Ok(()),
                    },
                    Some(event) = events.recv() => self.on_event(event).await?,
                    _ = &mut changed, if watch_routes => self.check_routes().await?,
                    _ = tokio::time::sleep(SHARD_RECHECK), if watch_routes => self.check_routes().await?,
                }
            }
        }
        .await;
        if let Err(reason) = result {
            let _ = self.pushes.send(PushItem::Close(resp::error(&reason))).await;
        }
    }

    async fn execute(&mut self, cmd: HubCmd) -> Result<(), String> {
        for (channel, target, slot) in cmd.shard_add {
            self.shard.insert(channel, (target, slot));
        }
        for channel in &cmd.shard_remove {
            self.shard.remove(channel);
        }
        for target in &cmd.release {
            self.conns.remove(target);
        }
        let mut then = Some((cmd.replies, cmd.done));
        for (target, args) in cmd.sends {
            let conn = match self.conn(&target).await {
                Ok(c) => c,
                Err(e) => {
                    if let Some((_, done)) = then.take() {
                        let _ = done.send(Err(e.clone()));
                    }
                    return Err(e);
                }
            };
            let expect = Expect { remaining: args.len() - 1, then: if cmd.wait { then.take() } else { None } };
            if conn.writer.write_all(&Request::from_args(args).raw).await.is_err() {
                return Err(format!("ERR the subscription connection to {} broke", target.address));
            }
            conn.expects.push_back(expect);
        }
        if let Some((replies, done)) = then {
            self.push(replies).await?;
            let _ = done.send(Ok(()));
        }
        Ok(())
    }

    /// The subscription connection to `target`, opened on first use.
    async fn conn(&mut self, target: &Target) -> Result<&mut HubConn, String> {
        if !self.conns.contains_key(target) {
            let s = self.state.registry.settings();
            let (auth, tls) =
                if target.peer { (s.peer_auth.as_ref(), s.peer_tls.as_ref()) } else { (s.node_auth.as_ref(), None) };
            let stream = connect(&target.address, 2, s.connect_timeout, s.max_bulk_len, auth, tls)
                .await
                .map_err(|e| format!("ERR cannot subscribe at {}: {e}", target.address))?;
            let (rd, writer) = tokio::io::split(stream);
            let id = self.next_conn;
            self.next_conn += 1;
            let reader = tokio::spawn(read_frames(id, rd, self.events_tx.clone(), s.max_bulk_len));
            self.conns.insert(target.clone(), HubConn { id, writer, expects: VecDeque::new(), reader });
        }
        self.conns.get_mut(target).ok_or_else(|| "ERR subscription connection missing".to_owned())
    }

    async fn push(&self, bytes: Bytes) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        // The client is gone when its writer is: nothing left to do.
        self.pushes.send(PushItem::Message(bytes)).await.map_err(|_| String::new())
    }

    async fn on_event(&mut self, event: Event) -> Result<(), String> {
        let Some(target) = self.conns.iter().find(|(_, c)| c.id == event.conn).map(|(t, _)| t.clone()) else {
            return Ok(()); // from a connection already released
        };
        let items = match event.frame? {
            Frame::Array(items) | Frame::Push(items) => items,
            Frame::Error(e) => return Err(format!("ERR a node refused a subscription: {e}")),
            _ => return Ok(()),
        };
        let kind = items.first().and_then(Frame::as_bytes).map(<[u8]>::to_ascii_lowercase).unwrap_or_default();
        match kind.as_slice() {
            b"message" | b"pmessage" | b"smessage" => self.push(Frame::Push(items).to_bytes(self.proto)).await,
            b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => {
                let Some(conn) = self.conns.get_mut(&target) else { return Ok(()) };
                let Some(front) = conn.expects.front_mut() else { return Ok(()) };
                front.remaining = front.remaining.saturating_sub(1);
                if front.remaining > 0 {
                    return Ok(());
                }
                if let Some(Expect { then: Some((replies, done)), .. }) = conn.expects.pop_front() {
                    self.push(replies).await?;
                    let _ = done.send(Ok(()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Drops the shard channels whose slot is no longer served where they are subscribed,
    /// telling the client (`sunsubscribe`) so that it subscribes again where the slot is now;
    /// ends the client's subscriptions if its channel subscriptions' node left this proxy.
    async fn check_routes(&mut self) -> Result<(), String> {
        let installed = self.state.installed.load();
        let table = &installed.table;
        let moved: Vec<(Bytes, Target)> = self
            .shard
            .iter()
            .filter(|(_, (target, slot))| match table.route(*slot, false) {
                Route::Local(i) => target.peer || table.nodes.get(i) != Some(&target.address),
                Route::Moved(addr) => !target.peer || addr != target.address,
                Route::Ask(_) | Route::TryAgain => false,
                Route::NotCovered | Route::NoCluster => true,
            })
            .map(|(c, (t, _))| (c.clone(), t.clone()))
            .collect();
        drop(installed);
        for (channel, target) in moved {
            self.shard.remove(&channel);
            self.dropped.lock().unwrap_or_else(|e| e.into_inner()).push(channel.clone());
            if !self.shard.values().any(|(t, _)| *t == target) {
                self.conns.remove(&target);
            } else if let Some(conn) = self.conns.get_mut(&target) {
                let raw = Request::from_args(vec![Bytes::from_static(b"SUNSUBSCRIBE"), channel.clone()]).raw;
                if conn.writer.write_all(&raw).await.is_err() {
                    return Err(format!("ERR the subscription connection to {} broke", target.address));
                }
                conn.expects.push_back(Expect { remaining: 1, then: None });
            }
            self.push(notice("sunsubscribe", Some(&channel), self.shard.len() as i64, self.proto)).await?;
        }
        Ok(())
    }
}

/// Reads frames from a subscription connection into the hub's queue until it closes.
async fn read_frames(conn: u64, mut rd: ReadHalf<crate::tls::Stream>, events: mpsc::Sender<Event>, max_bulk: usize) {
    let mut buf = BytesMut::with_capacity(4096);
    let limit = max_bulk.saturating_add(64 * 1024);
    loop {
        loop {
            match Frame::parse(&buf) {
                Ok(Some((frame, used))) => {
                    buf.advance(used);
                    if events.send(Event { conn, frame: Ok(frame) }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ =
                        events.send(Event { conn, frame: Err(format!("ERR unreadable reply from a node: {e}")) }).await;
                    return;
                }
            }
        }
        if buf.len() > limit {
            let _ = events.send(Event { conn, frame: Err("ERR a subscription message is too large".into()) }).await;
            return;
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = events
                    .send(Event {
                        conn,
                        frame: Err(
                            "ERR the node holding this client's subscriptions closed the connection; subscribe again"
                                .into(),
                        ),
                    })
                    .await;
                return;
            }
            Ok(_) => {}
        }
    }
}
