//! What a proxy process knows about handing its port over to a successor, or having taken it
//! over from a predecessor (the protocol itself is `takeover.rs`).
//!
//! A restart through the handover socket never closes the listening socket: the old process
//! passes it to the new one, stops accepting, and *drains* (its open connections are closed
//! once quiet; see `Phase`). Two rules keep the two processes from disagreeing:
//!
//! - The new process takes the old one's metadata (the last accepted `SETCLUSTER`/`SETREPL`)
//!   and what is left of its write lease, so both serve exactly the same routing.
//! - Before the new process accepts a metadata change it makes the old one stop (and waits
//!   until it has exited, bounded), so no connection is ever served under older metadata
//!   than the newest one accepted.

use bytes::Bytes;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

/// How long a draining process lets a connection sit quiet (nothing half-read, no reply
/// owed) before it closes it: long enough for a client that just connected to send its
/// first command, short enough that the drain ends soon.
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// How long the new process waits for the old one to exit before a metadata change.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// Where this process is in handing its port over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The normal state.
    Serving = 0,
    /// A successor accepts new connections; this process closes each of its own once it is
    /// quiet (not mid-request, not in `MULTI`, not subscribed, not blocked).
    Draining = 1,
    /// Close every connection now (the successor is about to change metadata, or the drain
    /// timed out); the process exits once they are gone.
    Stopping = 2,
}

/// The process this one took over from, while it still drains.
struct Predecessor {
    stop: Arc<Notify>,
    gone: watch::Receiver<bool>,
}

/// Handover state of one proxy process (`ProxyState::handover`).
pub struct Handover {
    phase: AtomicU8,
    /// False while a successor is being handed the listening socket, and while draining.
    accepting: watch::Sender<bool>,
    /// The client port's and the `/metrics` port's listening sockets, once serving.
    sockets: std::sync::OnceLock<Vec<RawFd>>,
    last_setcluster: Mutex<Option<Vec<Bytes>>>,
    last_setrepl: Mutex<Option<Vec<Bytes>>>,
    predecessor: Mutex<Option<Predecessor>>,
    /// True once this process has started handing its metadata over: from then on it accepts
    /// no metadata change (the successor would not get it). Held while one is applied.
    metadata_closed: Mutex<bool>,
}

impl Default for Handover {
    fn default() -> Handover {
        Handover {
            phase: AtomicU8::new(Phase::Serving as u8),
            accepting: watch::channel(true).0,
            sockets: std::sync::OnceLock::new(),
            last_setcluster: Mutex::new(None),
            last_setrepl: Mutex::new(None),
            predecessor: Mutex::new(None),
            metadata_closed: Mutex::new(false),
        }
    }
}

impl Handover {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Whether the accept loop takes new connections, and a way to wait for that to change.
    pub fn accepting(&self) -> watch::Receiver<bool> {
        self.accepting.subscribe()
    }

    pub fn set_accepting(&self, on: bool) {
        self.accepting.send_replace(on);
    }

    /// Records the listening sockets a successor is to be given (client port first; once).
    pub fn set_sockets(&self, fds: Vec<RawFd>) {
        let _ = self.sockets.set(fds);
    }

    pub fn sockets(&self) -> Vec<RawFd> {
        self.sockets.get().cloned().unwrap_or_default()
    }

    /// The gate of metadata changes: `UMCTL SETCLUSTER`/`SETREPL` hold it while they apply and
    /// refuse when it is closed (`true`); a handover closes it before taking its snapshot.
    pub fn metadata_gate(&self) -> std::sync::MutexGuard<'_, bool> {
        self.metadata_closed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the arguments of the last accepted `UMCTL SETCLUSTER` (after the sub-command).
    pub fn record_setcluster(&self, args: &[Bytes]) {
        *self.last_setcluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(args.to_vec());
    }

    /// Remembers the arguments of the last accepted `UMCTL SETREPL` (after the sub-command).
    pub fn record_setrepl(&self, args: &[Bytes]) {
        *self.last_setrepl.lock().unwrap_or_else(|e| e.into_inner()) = Some(args.to_vec());
    }

    pub fn last_setcluster(&self) -> Option<Vec<Bytes>> {
        self.last_setcluster.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn last_setrepl(&self) -> Option<Vec<Bytes>> {
        self.last_setrepl.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the connection to the process this one took over from: its end of file says the
    /// predecessor has exited; `retire_predecessor` asks it to stop first. Needs a runtime.
    pub fn watch_predecessor(&self, stream: std::os::unix::net::UnixStream) {
        let (gone_tx, gone) = watch::channel(false);
        let stop = Arc::new(Notify::new());
        let asked = stop.clone();
        tokio::spawn(async move {
            let stream = stream.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(stream));
            if let Ok(mut stream) = stream {
                let mut buf = [0u8; 64];
                let mut stop_sent = false;
                loop {
                    tokio::select! {
                        // The predecessor sends nothing more: any end (EOF, error) means it is gone.
                        read = stream.read(&mut buf) => if !matches!(read, Ok(n) if n > 0) { break },
                        _ = asked.notified(), if !stop_sent => {
                            stop_sent = true;
                            if stream.write_all(b"STOP\n").await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            let _ = gone_tx.send(true);
        });
        *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = Some(Predecessor { stop, gone });
    }

    /// True while the process this one took over from may still serve connections.
    pub fn has_predecessor(&self) -> bool {
        let p = self.predecessor.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().is_some_and(|p| !*p.gone.borrow())
    }

    /// Makes the predecessor close its connections and exit, and waits for it (bounded):
    /// called before a metadata change is applied. An error: it did not go in time.
    pub async fn retire_predecessor(&self) -> Result<(), String> {
        let link = {
            let p = self.predecessor.lock().unwrap_or_else(|e| e.into_inner());
            p.as_ref().map(|p| (p.stop.clone(), p.gone.clone()))
        };
        let Some((stop, mut gone)) = link else { return Ok(()) };
        stop.notify_one();
        let stopped = tokio::time::timeout(RETIRE_WAIT, gone.wait_for(|g| *g)).await.is_ok();
        match stopped {
            true => {
                *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            false => Err(format!(
                "the proxy process this one took over from has not exited within {} s; metadata changes wait for it",
                RETIRE_WAIT.as_secs()
            )),
        }
    }
}
