//! Restarting a proxy without closing its port (`docs/operations.md#rolling-upgrade`).
//!
//! A proxy started with `handover_socket` listens on that Unix socket (mode 0600: whoever can
//! connect gets the listening socket). A proxy started later with the same `handover_socket`
//! finds it there and takes over instead of binding:
//!
//! 1. new → old: `MOONRAFT-HANDOVER 1`. While it is migrating slots (a migration's per-key
//!    state lives in the process), or its own predecessor still drains, the old one answers
//!    `E<reason>` and the new one asks again until `handover_timeout`.
//! 2. The old one stops accepting (new connections wait in the kernel's queue) and metadata
//!    changes (`Handover::metadata_gate`: the snapshot must be the last one), and sends `F`
//!    with its listening sockets attached (SCM_RIGHTS: client port, then `/metrics` if any),
//!    then `<length>\n` and the JSON `Transfer`: its address, the arguments of its last
//!    accepted `SETCLUSTER`/`SETREPL`, and what is left of its write lease.
//! 3. The new one installs that metadata through the same code as `UMCTL`, inherits the lease,
//!    takes the Unix socket's path and answers `ACCEPTING`; then it accepts on the same
//!    listening socket. Not one connection is refused: that socket never closed.
//!    If the new one fails or goes away before answering, the old one accepts again.
//! 4. The old one drains (`handover::Phase`): it closes each of its connections once quiet and
//!    exits when none is left, or closes the rest after `drain_timeout`. If the new process
//!    goes away meanwhile, the old one serves again.
//! 5. Before the new one applies a metadata change it sends `STOP` and waits for the old one
//!    to exit (`Handover::retire_predecessor`).

use crate::config::ProxyConfig;
use crate::handover::Phase;
use crate::state::ProxyState;
use bytes::Bytes;
use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

const HELLO: &str = "MOONRAFT-HANDOVER 1";
/// Bound on the transferred state (metadata of a large cluster is well under a megabyte).
const MAX_TRANSFER: usize = 64 << 20;
/// How long the old process gives the new one to install the state and answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long a stopping process waits for its connections to close before it exits anyway.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What the old process hands over besides its listening sockets.
#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    address: String,
    metrics_address: String,
    /// The `/metrics` listening socket follows the client port's.
    metrics_socket: bool,
    setcluster: Option<Vec<Vec<u8>>>,
    setrepl: Option<Vec<Vec<u8>>>,
    lease_remaining_ms: Option<i64>,
    /// Its lease clock now (`Lease::stamp`): coordinators still hold its stamps.
    lease_stamp: i64,
}

/// The listening sockets a proxy serves on.
pub struct Listeners {
    pub clients: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
}

/// What was taken over from a running proxy, to install once the state exists.
pub struct TakenOver {
    transfer: Transfer,
    /// This process's lease clock when it asked (the lease left is counted from there).
    asked_at: u64,
    link: UnixStream,
}

enum Asked {
    /// No proxy listens on the handover socket.
    Nobody,
    /// It answered that it cannot hand over now, and why.
    Refused(String),
    Given(TakenOver, Vec<OwnedFd>),
}

fn read_line(mut stream: &UnixStream, max: usize) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the other process closed the handover socket",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= max {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "handover: line too long"));
        }
        line.push(byte[0]);
    }
}

/// Step 1–2 from the new process's side (blocking).
fn ask(path: &str) -> std::io::Result<Asked> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Asked::Nobody),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Left by a process that is gone: nobody to take over from.
            let _ = std::fs::remove_file(path);
            return Ok(Asked::Nobody);
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(ANSWER_WAIT))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(format!("{HELLO}\n").as_bytes())?;
    let asked_at = crate::lease::now_ms();
    let mut first = [0u8; 1];
    let mut raw = [-1; 2];
    let (n, count) = stream.recv_with_fd(&mut first, &mut raw)?;
    // Owned at once, so that every error below closes them.
    // SAFETY: the kernel just installed these descriptors in this process for this message;
    // nothing else owns them.
    let fds: Vec<OwnedFd> = raw[..count.min(raw.len())].iter().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) }).collect();
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the running proxy closed the handover socket",
        ));
    }
    match first[0] {
        b'E' => Ok(Asked::Refused(read_line(&stream, 4096)?)),
        b'F' => {
            let len: usize = read_line(&stream, 32)?
                .parse()
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "handover: bad length"))?;
            if len > MAX_TRANSFER {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "handover: state too large"));
            }
            let mut body = vec![0u8; len];
            (&stream).read_exact(&mut body)?;
            let transfer: Transfer = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
            Ok(Asked::Given(TakenOver { transfer, asked_at, link: stream }, fds))
        }
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "handover: unexpected answer")),
    }
}

fn listener(fd: OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

async fn bind_metrics(config: &ProxyConfig) -> std::io::Result<Option<tokio::net::TcpListener>> {
    match config.metrics_address.as_str() {
        "" => Ok(None),
        a => Ok(Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("metrics_address: cannot listen on {a}: {e}")))?,
        )),
    }
}

async fn bind(config: &ProxyConfig) -> std::io::Result<Listeners> {
    let clients = tokio::net::TcpListener::bind(&config.address).await?;
    Ok(Listeners { clients, metrics: bind_metrics(config).await? })
}

/// The listening sockets: taken over from the proxy running at `handover_socket`, if one is,
/// else bound afresh.
pub async fn acquire(config: &ProxyConfig) -> std::io::Result<(Listeners, Option<TakenOver>)> {
    let Some(path) = config.handover_socket.clone() else {
        return Ok((bind(config).await?, None));
    };
    let deadline = Instant::now() + Duration::from_millis(config.handover_timeout);
    loop {
        let p = path.clone();
        let asked = tokio::task::spawn_blocking(move || ask(&p)).await.map_err(std::io::Error::other)??;
        match asked {
            Asked::Nobody => return Ok((bind(config).await?, None)),
            Asked::Refused(reason) if Instant::now() < deadline => {
                info!(%reason, "the running proxy cannot hand over yet; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Asked::Refused(reason) => {
                return Err(std::io::Error::other(format!(
                    "the proxy at {path} did not hand over within handover_timeout: {reason}"
                )))
            }
            Asked::Given(taken, fds) => {
                let t = &taken.transfer;
                if t.address != config.address {
                    return Err(std::io::Error::other(format!(
                        "the proxy at {path} listens on {}, not on this one's address {}",
                        t.address, config.address
                    )));
                }
                if fds.len() != 1 + usize::from(t.metrics_socket) {
                    return Err(std::io::Error::other("handover: the listening sockets did not arrive"));
                }
                let mut fds = fds.into_iter();
                let clients = fds
                    .next()
                    .map(listener)
                    .transpose()?
                    .ok_or_else(|| std::io::Error::other("handover: no socket"))?;
                let metrics = match (fds.next(), config.metrics_address.as_str()) {
                    (_, "") => None,
                    (Some(fd), a) if a == t.metrics_address => Some(listener(fd)?),
                    // Moved elsewhere (or newly asked for) in this process's configuration.
                    _ => bind_metrics(config).await?,
                };
                return Ok((Listeners { clients, metrics }, Some(taken)));
            }
        }
    }
}

/// Step 3: installs what was taken over (the same way `UMCTL` would), tells the old process
/// and keeps the link to it. Call with the runtime running, before `serve` takes the socket's
/// path and before accepting connections. An error: the old process is not draining (it may be
/// serving again), so this one must not serve.
pub fn install(state: &Arc<ProxyState>, taken: TakenOver) -> std::io::Result<()> {
    let TakenOver { transfer, asked_at, link } = taken;
    let replay = |sub: &'static [u8], args: Option<Vec<Vec<u8>>>| {
        let Some(args) = args else { return };
        let mut full = vec![Bytes::from_static(sub)];
        full.extend(args.into_iter().map(Bytes::from));
        let reply = crate::umctl::handle_and_start(state, &full, 2);
        if !reply.starts_with(b"+") {
            warn!(reply = %String::from_utf8_lossy(&reply).trim_end(), "the metadata handed over was refused");
        }
    };
    replay(b"SETREPL", transfer.setrepl);
    replay(b"SETCLUSTER", transfer.setcluster);
    state.lease.inherit(transfer.lease_remaining_ms, transfer.lease_stamp, asked_at);
    (&link).write_all(b"ACCEPTING\n")?;
    state.handover.watch_predecessor(link);
    Ok(())
}

/// Listens on the handover socket and hands this process over to the first successor that
/// asks.
pub fn serve(state: Arc<ProxyState>, path: String) -> std::io::Result<()> {
    let listener = bind_socket(&path)?;
    tokio::spawn(async move {
        let mut listener = Some(listener);
        loop {
            let Some(l) = listener.as_ref() else {
                // Handed over and draining: the successor owns the path now.
                return;
            };
            let stream = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("handover socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match hand_over(&state, stream).await {
                Outcome::NotHandedOver => {}
                Outcome::Draining(link) => {
                    listener = None;
                    if drain(&state, link).await {
                        // The successor went away: serve again, and take the path back.
                        match bind_socket(&path) {
                            Ok(l) => listener = Some(l),
                            Err(e) => warn!("handover socket {path}: cannot listen again: {e}"),
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

fn bind_socket(path: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A stale file (a process that is gone) or the predecessor's: the path is ours now.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("handover_socket: cannot listen on {path}: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

enum Outcome {
    NotHandedOver,
    Draining(UnixStream),
}

/// Steps 1–3 from the old process's side.
async fn hand_over(state: &Arc<ProxyState>, stream: tokio::net::UnixStream) -> Outcome {
    let Ok(stream) = stream.into_std().and_then(|s| s.set_nonblocking(false).map(|_| s)) else {
        return Outcome::NotHandedOver;
    };
    let st = state.clone();
    let exchange = tokio::task::spawn_blocking(move || -> std::io::Result<UnixStream> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        if read_line(&stream, 64)? != HELLO {
            (&stream).write_all(b"Eunknown handover request\n")?;
            return Err(std::io::Error::other("an unknown handover request"));
        }
        if !st.installed.load().table.tasks.is_empty() {
            (&stream).write_all(b"Ethis proxy is migrating slots; it hands over once the migration is done\n")?;
            return Err(std::io::Error::other("asked to hand over while migrating"));
        }
        if st.handover.has_predecessor() {
            // Its own predecessor would not hear of a later successor's metadata changes.
            (&stream).write_all(b"Ethis proxy is still taking over from the previous process, which drains\n")?;
            return Err(std::io::Error::other("asked to hand over while the previous process drains"));
        }
        st.handover.set_accepting(false);
        // No metadata change from here on, so the snapshot below is the last one accepted.
        *st.handover.metadata_gate() = true;
        let fds = st.handover.sockets();
        let to_vecs = |args: Option<Vec<Bytes>>| args.map(|a| a.into_iter().map(|b| b.to_vec()).collect());
        let transfer = Transfer {
            address: st.config.address.clone(),
            metrics_address: st.config.metrics_address.clone(),
            metrics_socket: fds.len() > 1,
            setcluster: to_vecs(st.handover.last_setcluster()),
            setrepl: to_vecs(st.handover.last_setrepl()),
            lease_remaining_ms: st.lease.remaining_ms(),
            lease_stamp: st.lease.stamp(),
        };
        let body = serde_json::to_vec(&transfer).map_err(std::io::Error::other)?;
        stream.send_with_fd(b"F", &fds)?;
        (&stream).write_all(format!("{}\n", body.len()).as_bytes())?;
        (&stream).write_all(&body)?;
        stream.set_read_timeout(Some(ANSWER_WAIT))?;
        match read_line(&stream, 64)?.as_str() {
            "ACCEPTING" => Ok(stream),
            other => Err(std::io::Error::other(format!("unexpected answer {other:?}"))),
        }
    })
    .await;
    match exchange {
        Ok(Ok(link)) => {
            info!("handed the port over to a new proxy process; draining this one");
            state.handover.set_phase(Phase::Draining);
            wake_sessions(state);
            Outcome::Draining(link)
        }
        Ok(Err(e)) => {
            info!("no handover: {e}");
            resume(state);
            Outcome::NotHandedOver
        }
        Err(e) => {
            warn!("no handover: {e}");
            resume(state);
            Outcome::NotHandedOver
        }
    }
}

/// Accepts connections and metadata changes again (no successor took over, or it went away).
fn resume(state: &ProxyState) {
    *state.handover.metadata_gate() = false;
    state.handover.set_accepting(true);
}

/// Makes every session look at the phase again (a blocked one only when stopping: it is not
/// quiet until its command returns).
fn wake_sessions(state: &ProxyState) {
    let stopping = state.handover.phase() == Phase::Stopping;
    for c in state.clients.all() {
        if stopping || !c.blocked.load(Ordering::Relaxed) {
            c.kill.notify_one();
        }
    }
}

/// Step 4: drains until every connection is closed (then exits), `drain_timeout` passes or
/// the successor says `STOP` (then stops and exits). Returns only if the successor went
/// away first: true, and this process is serving again.
async fn drain(state: &Arc<ProxyState>, link: UnixStream) -> bool {
    let mut said = tokio::task::spawn_blocking(move || {
        let _ = link.set_read_timeout(None);
        read_line(&link, 64).ok()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_millis(state.config.drain_timeout);
    let drained = async {
        while state.connected_clients.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = drained => stop_and_exit(state).await,
        said = &mut said => match said {
            Ok(Some(line)) if line == "STOP" => stop_and_exit(state).await,
            _ => {
                warn!("the new proxy process went away while this one was draining; serving again");
                state.handover.set_phase(Phase::Serving);
                resume(state);
                true
            }
        },
    }
}

/// Closes every connection (bounded wait) and exits the process: its successor serves.
async fn stop_and_exit(state: &Arc<ProxyState>) -> bool {
    state.handover.set_phase(Phase::Stopping);
    wake_sessions(state);
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    while state.connected_clients.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    info!(left = state.connected_clients.load(Ordering::Relaxed), "drained after handing over; exiting");
    std::process::exit(0)
}
