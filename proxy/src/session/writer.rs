//! The writing half of a client connection: replies in request order, coalesced into as few
//! writes as possible, with pub/sub pushes between them.

use super::{Pending, PushItem};
use crate::backend::ReplyResult;
use crate::metrics::{Meter, ProxyMetrics};
use crate::resp;
use crate::state::ProxyState;
use bytes::BytesMut;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut, metrics: &ProxyMetrics) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        metrics.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
        if out.capacity() > super::MAX_IDLE_BUFFER {
            *out = BytesMut::with_capacity(super::START_BUFFER);
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
    metrics: &ProxyMetrics,
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
                    flush(wr, out, metrics).await.ok()?;
                }
                Some(PushItem::Close(b)) => {
                    out.extend_from_slice(&b);
                    let _ = flush(wr, out, metrics).await;
                    let _ = wr.shutdown().await;
                    return None;
                }
                None => return Some(fut.await),
            },
            v = &mut fut => return Some(v),
        }
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<(Pending, Meter)>,
    mut pushes: mpsc::Receiver<PushItem>,
    mut closing: watch::Receiver<bool>,
    state: Arc<ProxyState>,
    info: Arc<crate::clients::ClientInfo>,
) {
    let mut out = BytesMut::with_capacity(super::START_BUFFER);
    loop {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                if flush(&mut wr, &mut out, &state.metrics).await.is_err() {
                    return;
                }
                match with_pushes(&mut wr, &mut out, &mut pushes, &state.metrics, rx.recv()).await {
                    Some(Some(item)) => item,
                    Some(None) => break,
                    None => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let (item, meter) = item;
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
                        if flush(&mut wr, &mut out, &state.metrics).await.is_err() {
                            return;
                        }
                        match with_pushes(&mut wr, &mut out, &mut pushes, &state.metrics, rx).await {
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
                if flush(&mut wr, &mut out, &state.metrics).await.is_err() {
                    return;
                }
                tokio::select! {
                    b = with_pushes(&mut wr, &mut out, &mut pushes, &state.metrics, fut) => match b {
                        Some(b) => b,
                        None => return,
                    },
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
        };
        state.metrics.finish(meter, &reply);
        if info.owed.fetch_sub(1, Ordering::Relaxed) == 1 && state.handover.phase() != crate::handover::Phase::Serving {
            // Owed nothing now: the reader, parked on a read, looks again whether the
            // connection is quiet (a draining proxy closes it then, `handover.rs`).
            info.kill.notify_one();
        }
        if reply.len() >= 32 * 1024 {
            if flush(&mut wr, &mut out, &state.metrics).await.is_err() || wr.write_all(&reply).await.is_err() {
                return;
            }
            state.metrics.bytes_out.fetch_add(reply.len() as u64, Ordering::Relaxed);
        } else {
            out.extend_from_slice(&reply);
        }
        if close || out.len() >= 64 * 1024 {
            if flush(&mut wr, &mut out, &state.metrics).await.is_err() {
                return;
            }
            if close {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
    let _ = flush(&mut wr, &mut out, &state.metrics).await;
    let _ = wr.shutdown().await;
}
