//! A client's own connections to nodes: blocking commands, `WATCH` and transactions run
//! there (not on the shared pipelined ones), and later commands of the client wait for them.

use super::{Pending, Session};
use crate::backend::{connect, read_reply, BackendError};
use crate::cluster::{Route, TaskShared, TaskState};
use crate::resp::{self, Frame, Request};
use crate::state::ProxyState;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A client's own connection to one node, and the node's `CLIENT ID` for it (0 until known),
/// with which a blocked command on it can be unblocked from another connection.
#[derive(Default)]
pub(super) struct Dedicated {
    stream: tokio::sync::Mutex<Option<crate::tls::Stream>>,
    client_id: std::sync::atomic::AtomicI64,
}

pub(super) type DedicatedConn = Arc<Dedicated>;

/// Whether an exchange may open a new dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reuse {
    OrConnect,
    /// Only the connection already open: state on it (WATCH) would be lost on a new one.
    Existing,
}

#[derive(Debug)]
pub(super) enum ExchangeError {
    /// `Reuse::Existing` and the connection is gone (it broke or a command on it was abandoned).
    Lost,
    Unreachable,
    Broken,
}

impl ExchangeError {
    pub(super) fn message(&self, node: &str) -> String {
        match self {
            ExchangeError::Lost => format!("ERR the connection to {node} holding this client's WATCH was lost"),
            ExchangeError::Unreachable => BackendError::Unreachable(node.to_owned()).to_string(),
            ExchangeError::Broken => BackendError::Broken(node.to_owned()).to_string(),
        }
    }
}

/// Requests written on a client's dedicated connection to one node, and their replies.
pub(super) struct Exchange {
    conn: DedicatedConn,
    node: String,
    proto: u8,
    settings: crate::backend::BackendSettings,
    reuse: Reuse,
}

impl Exchange {
    /// Writes `raw` (holding `replies` requests) and reads that many replies.
    pub(super) async fn run(self, raw: &[u8], replies: usize) -> Result<Vec<Bytes>, ExchangeError> {
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

impl Session {
    /// Runs a blocking command on this client's dedicated connection to `node`. The writer
    /// polls the future only after every earlier reply arrived, so the command reaches Redis
    /// after the client's earlier commands; later ones wait for it (`blocked`).
    ///
    /// While it is parked, the command follows its slot: when a migration of the slot starts
    /// draining, or the slot is no longer this node's, it is released (`CLIENT UNBLOCK …
    /// ERROR`, atomic in Redis: the command either already popped, and the client gets that, or
    /// gets `TRYAGAIN` and retries where the slot is now). Otherwise a parked client would hold a
    /// migration's drain up, or stay parked on a node that no longer gets the key's writes.
    pub(super) fn blocking(&mut self, node: String, req: Request, slot: u16) -> Pending {
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
    pub(super) fn after_earlier_replies(&mut self, fut: impl Future<Output = Bytes> + Send + 'static) -> Pending {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        self.blocked = Some(done_rx);
        Pending::Task(Box::pin(async move {
            let _done = done_tx; // dropped when the future finishes or is abandoned
            fut.await
        }))
    }

    /// This client's own connection to `node` (blocking commands, WATCH and transactions),
    /// ready to be used by a future.
    pub(super) fn dedicated_exchange(&mut self, node: String, reuse: Reuse) -> Exchange {
        Exchange {
            conn: self.dedicated.entry((node.clone(), self.proto)).or_default().clone(),
            node,
            proto: self.proto,
            settings: self.state.registry.settings().clone(),
            reuse,
        }
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
pub(super) async fn wait_unblocked<R: AsyncRead + Unpin>(
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
