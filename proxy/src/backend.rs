//! Pipelined connections to Redis nodes, shared by all client sessions.
//!
//! Each connection is one task owning the socket. Commands arrive on a bounded queue; the task
//! writes everything that is queued in one `write` (coalescing many clients' commands into one
//! syscall for us and one read for Redis), and matches replies to commands in FIFO order.
//! Commands that were written when a connection breaks are failed, never re-sent: Redis may
//! already have executed them (`docs/compatibility.md#no-resend`). Commands still queued go to the next
//! connection. While a node cannot be reached, its commands fail at once and other nodes are
//! unaffected; reconnects back off from 100 ms to 2 s.

use crate::latency::LatencyHistogram;
use crate::resp::{ReplyScanner, Request};
use crate::tls::Stream;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("ERR_BACKEND_CONNECTION: {0}")]
    Unreachable(String),
    #[error(
        "ERR backend connection to {0} broke before the reply arrived; the command may or may not have been executed"
    )]
    Broken(String),
    #[error(
        "ERR backend {0} did not answer within the backend timeout; the command may or may not have been executed"
    )]
    Timeout(String),
    #[error("ERR backend queue for {0} is closed")]
    Closed(String),
}

pub type ReplyResult = Result<Bytes, BackendError>;

pub struct BackendCommand {
    pub raw: Bytes,
    pub reply: oneshot::Sender<ReplyResult>,
}

#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub queue_len: usize,
    pub max_bulk_len: usize,
    /// `AUTH [user] <password>` (encoded) sent first on every connection to a Redis node.
    pub node_auth: Option<Bytes>,
    /// `AUTH admin <password>` (or `AUTH <password>`) sent first on every connection to another
    /// proxy (migration traffic: `UMSYNC`, `UMREAD`, forwarded commands).
    pub peer_auth: Option<Bytes>,
    /// TLS towards other proxies (when proxies serve TLS); nodes are always plain.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            timeout: Duration::from_millis(3000),
            connect_timeout: Duration::from_millis(1000),
            queue_len: 4096,
            max_bulk_len: crate::resp::DEFAULT_MAX_BULK_LEN,
            node_auth: None,
            peer_auth: None,
            peer_tls: None,
        }
    }
}

/// What the proxy measured of its traffic with one Redis node or one other proxy, for
/// `/metrics`. Shared by every connection to that address (client pools of both protocols and
/// the migration copy's private pools) while any of them lives.
#[derive(Default, Debug)]
pub struct NodeStats {
    /// Connections open now.
    pub connected: AtomicI64,
    /// From writing a command (with the batch it went in) to reading its reply.
    pub round_trip: LatencyHistogram,
    /// Connection attempts that failed and connections that broke.
    pub failures: AtomicU64,
}

/// Where a node's stats are kept: by (address, is another proxy).
type StatsMap = HashMap<(String, bool), Weak<NodeStats>>;

struct Conn {
    tx: mpsc::Sender<BackendCommand>,
    failed: Arc<AtomicBool>,
}

/// The connections to one node for one protocol version.
pub struct NodePool {
    address: String,
    conns: Vec<Conn>,
    next: AtomicUsize,
}

impl std::fmt::Debug for NodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePool").field("address", &self.address).field("conns", &self.conns.len()).finish()
    }
}

impl NodePool {
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Queues a command and returns where its reply will arrive. `pin` selects the connection:
    /// a client always passes the same value so its commands to one node stay on one
    /// connection and execute in the order it sent them (round robin per *command*, as
    /// undermoon does, lets a pipelined GET overtake the SET before it). Waits only if that
    /// connection's queue is full (back-pressure).
    pub async fn send(&self, raw: Bytes, pin: usize) -> oneshot::Receiver<ReplyResult> {
        let (reply, rx) = oneshot::channel();
        let i = pin % self.conns.len();
        let conn = &self.conns[i];
        if conn.failed.load(Ordering::Relaxed) {
            let _ = reply.send(Err(BackendError::Unreachable(self.address.clone())));
            return rx;
        }
        if let Err(e) = conn.tx.send(BackendCommand { raw, reply }).await {
            let _ = e.0.reply.send(Err(BackendError::Closed(self.address.clone())));
        }
        rx
    }

    /// A connection for a caller that sends several commands which must run in order.
    pub fn next_pin(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a command on the next connection (round robin) and waits for its reply.
    pub async fn call(&self, req: &Request) -> ReplyResult {
        let pin = self.next.fetch_add(1, Ordering::Relaxed);
        self.send(req.raw.clone(), pin).await.await.unwrap_or_else(|_| Err(BackendError::Broken(self.address.clone())))
    }
}

/// Pools are shared between routing snapshots by (address, protocol) and freed when no
/// snapshot uses them any more (`docs/compatibility.md#pool-cleanup`).
pub struct BackendRegistry {
    settings: BackendSettings,
    conns_per_node: usize,
    /// By (address, protocol, is another proxy).
    pools: Mutex<HashMap<(String, u8, bool), Weak<NodePool>>>,
    /// `None` when metrics are off: connections then neither time replies nor count.
    stats: Option<Mutex<StatsMap>>,
}

impl BackendRegistry {
    pub fn new(settings: BackendSettings, conns_per_node: usize) -> Self {
        BackendRegistry {
            settings,
            conns_per_node: conns_per_node.max(1),
            pools: Mutex::new(HashMap::new()),
            stats: None,
        }
    }

    /// Also measures every connection (`node_stats`).
    pub fn with_stats(mut self) -> Self {
        self.stats = Some(Mutex::new(HashMap::new()));
        self
    }

    /// The stats of every address some pool still connects to: (address, is another proxy,
    /// stats), sorted by address.
    pub fn node_stats(&self) -> Vec<(String, bool, Arc<NodeStats>)> {
        let Some(stats) = &self.stats else { return Vec::new() };
        let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.retain(|_, w| w.strong_count() > 0);
        let mut all: Vec<_> =
            stats.iter().filter_map(|((a, peer), w)| w.upgrade().map(|s| (a.clone(), *peer, s))).collect();
        all.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        all
    }

    fn stats_for(&self, address: &str, peer: bool) -> Option<Arc<NodeStats>> {
        let mut stats = self.stats.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        let key = (address.to_owned(), peer);
        if let Some(s) = stats.get(&key).and_then(Weak::upgrade) {
            return Some(s);
        }
        let s = Arc::new(NodeStats::default());
        stats.insert(key, Arc::downgrade(&s));
        Some(s)
    }

    pub fn settings(&self) -> &BackendSettings {
        &self.settings
    }

    /// The shared pool of a Redis node.
    pub fn pool(&self, address: &str, proto: u8) -> Arc<NodePool> {
        self.shared_pool(address, proto, false)
    }

    /// The shared pool of another proxy (authenticated as a peer).
    pub fn peer_pool(&self, address: &str) -> Arc<NodePool> {
        self.shared_pool(address, 2, true)
    }

    /// Connections to another proxy speaking `proto` (forwarded client commands).
    pub fn peer_pool_for(&self, address: &str, proto: u8) -> Arc<NodePool> {
        self.shared_pool(address, proto, true)
    }

    fn shared_pool(&self, address: &str, proto: u8, peer: bool) -> Arc<NodePool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let key = (address.to_owned(), proto, peer);
        if let Some(p) = pools.get(&key).and_then(Weak::upgrade) {
            return p;
        }
        pools.retain(|_, w| w.strong_count() > 0);
        let pool = Arc::new(self.new_pool(address, proto, self.conns_per_node, peer));
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }

    /// A pool of `conns` connections of its own, not shared with client sessions: bulk work
    /// (the migration copy pipelines hundreds of commands at a time) must not queue in front
    /// of clients' commands on a shared connection.
    pub fn private_pool(&self, address: &str, conns: usize) -> Arc<NodePool> {
        Arc::new(self.new_pool(address, 2, conns.max(1), false))
    }

    fn new_pool(&self, address: &str, proto: u8, conns: usize, peer: bool) -> NodePool {
        let (auth, tls) = if peer {
            (self.settings.peer_auth.clone(), self.settings.peer_tls.clone())
        } else {
            (self.settings.node_auth.clone(), None)
        };
        let stats = self.stats_for(address, peer);
        let conns = (0..conns)
            .map(|_| {
                let (tx, rx) = mpsc::channel(self.settings.queue_len);
                let failed = Arc::new(AtomicBool::new(false));
                let target = Target { address: address.to_owned(), proto, auth: auth.clone(), tls: tls.clone() };
                tokio::spawn(run_connection(target, rx, failed.clone(), self.settings.clone(), stats.clone()));
                Conn { tx, failed }
            })
            .collect();
        NodePool { address: address.to_owned(), conns, next: AtomicUsize::new(0) }
    }
}

/// Where one connection goes and how it introduces itself.
struct Target {
    address: String,
    proto: u8,
    auth: Option<Bytes>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Encodes `AUTH [user] <password>`.
pub fn auth_command(user: Option<&str>, password: &str) -> Bytes {
    match user {
        Some(u) => Request::from_strs(&["AUTH", u, password]).raw,
        None => Request::from_strs(&["AUTH", password]).raw,
    }
}

/// Connects to a node or a proxy: TLS if `tls` is given, then `auth` (an encoded `AUTH`) if
/// given, then RESP3 when `proto` is 3.
pub async fn connect(
    address: &str,
    proto: u8,
    timeout: Duration,
    max_bulk_len: usize,
    auth: Option<&Bytes>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<Stream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let mut stream = tokio::time::timeout(timeout, Stream::over(tcp, address, tls))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    if let Some(auth) = auth {
        stream.write_all(auth).await?;
        let reply = tokio::time::timeout(timeout, read_reply(&mut stream, &mut BytesMut::new(), 1 << 16))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "AUTH timed out"))??;
        if reply.first() == Some(&b'-') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{address} refused AUTH: {}", String::from_utf8_lossy(&reply).trim_end()),
            ));
        }
    }
    if proto >= 3 {
        let hello = Request::from_strs(&["HELLO", "3"]);
        stream.write_all(&hello.raw).await?;
        let reply = tokio::time::timeout(timeout, read_reply(&mut stream, &mut BytesMut::new(), max_bulk_len))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HELLO timed out"))??;
        if reply.first() == Some(&b'-') {
            return Err(std::io::Error::other(format!(
                "node refused RESP3: {}",
                String::from_utf8_lossy(&reply).trim_end()
            )));
        }
    }
    Ok(stream)
}

/// Reads exactly one reply from `stream`, using `buf` for any bytes already read.
pub async fn read_reply<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_bulk_len: usize,
) -> std::io::Result<Bytes> {
    let mut scanner = ReplyScanner::new(max_bulk_len);
    loop {
        if let Some(n) = scanner.scan(buf).map_err(std::io::Error::other)? {
            return Ok(buf.split_to(n).freeze());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
    }
}

enum Ended {
    /// Every sender is gone: the pool was dropped.
    QueueClosed,
    Failed(BackendError, String),
}

async fn run_connection(
    target: Target,
    mut rx: mpsc::Receiver<BackendCommand>,
    failed: Arc<AtomicBool>,
    settings: BackendSettings,
    stats: Option<Arc<NodeStats>>,
) {
    let Target { address, proto, auth, tls } = target;
    let connected = |delta: i64| {
        if let Some(s) = &stats {
            s.connected.fetch_add(delta, Ordering::Relaxed);
        }
    };
    let failure = || {
        if let Some(s) = &stats {
            s.failures.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(&address, proto, settings.connect_timeout, settings.max_bulk_len, auth.as_ref(), tls.as_ref())
            .await
        {
            Ok(stream) => {
                failed.store(false, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                debug!(node = %address, proto, "backend connected");
                connected(1);
                let ended = serve(stream, &mut rx, &address, &settings, stats.as_deref()).await;
                connected(-1);
                match ended {
                    Ended::QueueClosed => return,
                    Ended::Failed(_, why) => {
                        failure();
                        warn!(node = %address, "backend connection lost: {why}")
                    }
                }
            }
            Err(e) => {
                failure();
                failed.store(true, Ordering::Relaxed);
                warn!(node = %address, "cannot connect to backend: {e}; retrying in {backoff:?}");
                // Fail what is queued (and what arrives) until the next attempt.
                let deadline = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        cmd = rx.recv() => match cmd {
                            None => return,
                            Some(c) => { let _ = c.reply.send(Err(BackendError::Unreachable(address.clone()))); }
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn serve(
    stream: Stream,
    rx: &mut mpsc::Receiver<BackendCommand>,
    address: &str,
    settings: &BackendSettings,
    stats: Option<&NodeStats>,
) -> Ended {
    match stream {
        // Owned halves: no lock between the reader and the writer on the common path.
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            serve_halves(rd, wr, rx, address, settings, stats).await
        }
        Stream::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            serve_halves(rd, wr, rx, address, settings, stats).await
        }
    }
}

async fn serve_halves<R, W>(
    mut rd: R,
    mut wr: W,
    rx: &mut mpsc::Receiver<BackendCommand>,
    address: &str,
    settings: &BackendSettings,
    stats: Option<&NodeStats>,
) -> Ended
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Each in-flight command's reply slot and, when measuring, when its batch was written
    // (one clock read per batch on this side, one per read on the other).
    let (inflight_tx, mut inflight_rx) = mpsc::unbounded_channel::<(oneshot::Sender<ReplyResult>, Option<Instant>)>();
    let pending = AtomicUsize::new(0);
    // Set when the pool was dropped (queue closed): the reader then ends once the commands
    // already written have their replies, instead of dropping them (their clients would get
    // "connection broke" for commands Redis executed).
    let queue_closed = AtomicBool::new(false);

    let writer = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            let Some(first) = rx.recv().await else {
                // SeqCst pairs with the reader: it decrements `pending`, then reads the flag;
                // we set the flag, then read `pending`. One of us sees the other's write.
                queue_closed.store(true, Ordering::SeqCst);
                if pending.load(Ordering::SeqCst) == 0 {
                    return Ended::QueueClosed;
                }
                return std::future::pending().await;
            };
            let written_at = stats.map(|_| Instant::now());
            let mut batch = Some(first);
            while let Some(cmd) = batch.take() {
                pending.fetch_add(1, Ordering::SeqCst);
                if cmd.raw.len() > 64 * 1024 {
                    // Large commands are written directly, without copying.
                    if !buf.is_empty() {
                        if let Err(e) = wr.write_all(&buf).await {
                            return Ended::Failed(BackendError::Broken(address.into()), e.to_string());
                        }
                        buf.clear();
                    }
                    let _ = inflight_tx.send((cmd.reply, written_at));
                    if let Err(e) = wr.write_all(&cmd.raw).await {
                        return Ended::Failed(BackendError::Broken(address.into()), e.to_string());
                    }
                } else {
                    buf.extend_from_slice(&cmd.raw);
                    let _ = inflight_tx.send((cmd.reply, written_at));
                }
                if buf.len() < 256 * 1024 {
                    batch = rx.try_recv().ok();
                }
            }
            if !buf.is_empty() {
                if let Err(e) = wr.write_all(&buf).await {
                    return Ended::Failed(BackendError::Broken(address.into()), e.to_string());
                }
                buf.clear();
                if buf.capacity() > 1024 * 1024 {
                    buf = BytesMut::with_capacity(16 * 1024);
                }
            }
        }
    };

    let reader = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut scanner = ReplyScanner::new(settings.max_bulk_len);
        let mut read_at = Instant::now();
        loop {
            loop {
                match scanner.scan(&buf) {
                    Ok(Some(n)) => {
                        let reply = buf.split_to(n).freeze();
                        match inflight_rx.try_recv() {
                            Ok((sender, written_at)) => {
                                if let (Some(s), Some(w)) = (stats, written_at) {
                                    s.round_trip.observe(read_at.saturating_duration_since(w));
                                }
                                let _ = sender.send(Ok(reply));
                                if pending.fetch_sub(1, Ordering::SeqCst) == 1 && queue_closed.load(Ordering::SeqCst) {
                                    return Ended::QueueClosed;
                                }
                            }
                            Err(_) => {
                                return Ended::Failed(
                                    BackendError::Broken(address.into()),
                                    "reply without a command".into(),
                                )
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Ended::Failed(BackendError::Broken(address.into()), e.to_string()),
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(32 * 1024);
            }
            match tokio::time::timeout(settings.timeout, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Ended::Failed(BackendError::Broken(address.into()), "closed by the node".into()),
                Ok(Ok(_)) => {
                    if stats.is_some() {
                        read_at = Instant::now();
                    }
                }
                Ok(Err(e)) => return Ended::Failed(BackendError::Broken(address.into()), e.to_string()),
                Err(_) => {
                    if pending.load(Ordering::Acquire) > 0 {
                        return Ended::Failed(BackendError::Timeout(address.into()), "reply timed out".into());
                    }
                }
            }
        }
    };

    let ended = tokio::select! {
        e = writer => e,
        e = reader => e,
    };
    // In-flight commands: fail them explicitly (dropping the senders would do the same).
    if let Ended::Failed(err, _) = &ended {
        while let Ok((s, _)) = inflight_rx.try_recv() {
            let _ = s.send(Err(err.clone()));
        }
    }
    ended
}
