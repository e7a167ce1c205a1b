//! Transactions: `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH`, with every key in one slot (as
//! in Redis Cluster).
//!
//! The proxy queues the commands itself (answering `+QUEUED`) and, at `EXEC`, writes
//! `MULTI`, the queued commands and `EXEC` in one go on this client's dedicated connection to
//! the slot's node — the connection its `WATCH` ran on, so Redis checks the watched keys. Errors
//! while queueing (a key of another slot, a wrong arity, a slot this proxy does not serve)
//! answer at once and make `EXEC` fail with `EXECABORT`, as Redis does. Just before the batch is
//! written, the slot's route is checked again: if it moved to another node, failed over, or is
//! being migrated in a way that cannot take a write here, `EXEC` fails with `EXECABORT` naming
//! the slot, and nothing was run.

use super::{err, ok, ExchangeError, InflightGuard, Pending, Reuse, Session};
use crate::cluster::{Route, TaskState};
use crate::command;
use crate::resp::{self, Request};
use crate::slot::key_slot;
use crate::state::ProxyState;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;

/// Queued commands between `MULTI` and `EXEC` (raw requests, at most this many).
const MAX_QUEUED: usize = 100_000;

/// Where a transaction runs: one slot, on the local node that served it when the first key
/// (or watched key) was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    slot: u16,
    node: String,
}

#[derive(Debug, Default)]
pub(super) struct Multi {
    queued: Vec<Bytes>,
    queued_bytes: usize,
    target: Option<Target>,
    /// Why `EXEC` must abort (an error while queueing), if it must.
    aborted: Option<String>,
}

impl Multi {
    /// Commands queued so far.
    pub(super) fn queued_count(&self) -> usize {
        self.queued.len()
    }
}

/// Commands that act at once even inside `MULTI` (Redis queues everything else).
fn runs_inside_multi(name: &[u8]) -> bool {
    [&b"exec"[..], b"discard", b"multi", b"watch", b"quit", b"unwatch"].iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Commands without keys that may be queued (they run on the transaction's node).
fn keyless_queueable(name: &[u8]) -> bool {
    [&b"ping"[..], b"echo", b"time"].iter().any(|n| name.eq_ignore_ascii_case(n))
}

impl Session {
    /// True when `req` must be queued rather than run (the client is inside `MULTI`).
    pub(super) fn queues(&self, req: &Request) -> bool {
        self.multi.is_some() && !runs_inside_multi(req.name())
    }

    pub(super) fn multi(&mut self) -> Pending {
        if self.multi.is_some() {
            return err("ERR MULTI calls can not be nested");
        }
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        self.multi = Some(Multi::default());
        ok()
    }

    /// Queues one command of a transaction, or refuses it (then `EXEC` aborts).
    pub(super) fn queue(&mut self, req: Request) -> Pending {
        let reply = self.check_queueable(&req);
        let Some(multi) = self.multi.as_mut() else { return err("ERR not in a transaction") };
        match reply {
            Ok(target) => {
                if multi.queued.len() >= MAX_QUEUED
                    || multi.queued_bytes + req.raw.len() > self.state.config.client_query_buffer_limit
                {
                    let e = "ERR transaction too large for the proxy (too many or too big queued commands)";
                    multi.aborted = Some(e.into());
                    return err(e);
                }
                if let Some(t) = target {
                    multi.target = Some(t);
                }
                multi.queued_bytes += req.raw.len();
                multi.queued.push(req.raw);
                Pending::Ready(resp::simple("QUEUED"))
            }
            Err(e) => {
                multi.aborted = Some(e.clone());
                err(&e)
            }
        }
    }

    /// The target a queued command adds (its slot), or the error that refuses it.
    fn check_queueable(&self, req: &Request) -> Result<Option<Target>, String> {
        if !self.authenticated {
            return Err("NOAUTH Authentication required.".into());
        }
        let Some(spec) = command::lookup(req.name()) else {
            if keyless_queueable(req.name()) {
                return Ok(None);
            }
            return Err(format!(
                "ERR '{}' cannot be queued in a transaction through the proxy (only commands on keys of one slot, PING, ECHO and TIME can)",
                String::from_utf8_lossy(req.name()).to_ascii_lowercase().chars().take(64).collect::<String>()
            ));
        };
        let args = &req.args;
        if !spec.check_arity(args.len()) {
            return Err(spec.arity_error());
        }
        let keys = spec.key_indices(args)?;
        let Some(&first) = keys.first() else { return Ok(None) };
        let slot = key_slot(&args[first]);
        let current = self.multi.as_ref().and_then(|m| m.target.clone()).or_else(|| self.watching.clone());
        if keys.iter().any(|&k| key_slot(&args[k]) != slot) || current.as_ref().is_some_and(|t| t.slot != slot) {
            return Err("CROSSSLOT Keys in request don't hash to the same slot".into());
        }
        if let Some(t) = current {
            return Ok(Some(t));
        }
        self.local_target(slot).map(Some)
    }

    /// The local node serving `slot` now, or the redirection/error a client gets instead.
    fn local_target(&self, slot: u16) -> Result<Target, String> {
        if self.state.config.coordinator_lease && self.state.lease.expired() {
            return Err("CLUSTERDOWN this proxy lost its coordinator lease".into());
        }
        let installed = self.state.installed.load();
        match installed.table.route(slot, false) {
            Route::Local(i) => Ok(Target { slot, node: installed.table.nodes[i].clone() }),
            Route::Moved(addr) => Err(format!("MOVED {slot} {addr}")),
            Route::Ask(addr) => Err(format!("ASK {slot} {addr}")),
            Route::TryAgain => Err(format!("TRYAGAIN slot {slot} is being switched to another node")),
            Route::NotCovered => Err(format!("CLUSTERDOWN Hash slot not served: slot not covered {slot}")),
            Route::NoCluster => Err("ERR_CLUSTER_NOT_FOUND".into()),
        }
    }

    pub(super) fn discard(&mut self) -> Pending {
        if self.multi.take().is_none() {
            return err("ERR DISCARD without MULTI");
        }
        self.unwatch_reply(Bytes::from_static(resp::OK))
    }

    pub(super) fn unwatch(&mut self) -> Pending {
        self.unwatch_reply(Bytes::from_static(resp::OK))
    }

    /// Forgets the watched keys (also on the node, where the connection still holds them) and
    /// answers `reply`.
    fn unwatch_reply(&mut self, reply: Bytes) -> Pending {
        let Some(target) = self.watching.take() else { return Pending::Ready(reply) };
        let exchange = self.dedicated_exchange(target.node, Reuse::Existing);
        self.after_earlier_replies(async move {
            // A lost connection holds no WATCH either.
            let _ = exchange.run(b"*1\r\n$7\r\nUNWATCH\r\n", 1).await;
            reply
        })
    }

    pub(super) fn watch(&mut self, req: Request) -> Pending {
        if self.multi.is_some() {
            return err("ERR WATCH inside MULTI is not allowed");
        }
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let args = &req.args;
        if args.len() < 2 {
            return err("ERR wrong number of arguments for 'watch' command");
        }
        let slot = key_slot(&args[1]);
        if args[2..].iter().any(|k| key_slot(k) != slot) || self.watching.as_ref().is_some_and(|t| t.slot != slot) {
            return err("CROSSSLOT Keys in request don't hash to the same slot");
        }
        let target = match self.watching.clone() {
            Some(t) => t,
            None => match self.local_target(slot) {
                Ok(t) => t,
                Err(e) => return err(&e),
            },
        };
        // The first WATCH may open the connection; later ones must find the same one.
        let reuse = if self.watching.is_some() { Reuse::Existing } else { Reuse::OrConnect };
        self.watching = Some(target.clone());
        let exchange = self.dedicated_exchange(target.node.clone(), reuse);
        self.after_earlier_replies(async move {
            match exchange.run(&req.raw, 1).await {
                Ok(mut replies) => replies.pop().unwrap_or_default(),
                Err(e) => resp::error(&e.message(&target.node)),
            }
        })
    }

    pub(super) fn exec(&mut self) -> Pending {
        let Some(multi) = self.multi.take() else { return err("ERR EXEC without MULTI") };
        let watching = self.watching.take();
        if let Some(reason) = multi.aborted {
            let reply = resp::error(&format!("EXECABORT Transaction discarded because of previous errors: {reason}"));
            self.watching = watching;
            return self.unwatch_reply(reply);
        }
        let target = multi.target.or_else(|| watching.clone());
        let Some(target) = target else {
            // Only keyless commands (or none): nothing ties them to a node; run them on any.
            return self.exec_anywhere(multi.queued);
        };
        self.last_write = super::LastWrite::Node(target.node.clone());
        let reuse = if watching.is_some() { Reuse::Existing } else { Reuse::OrConnect };
        let exchange = self.dedicated_exchange(target.node.clone(), reuse);
        let state = self.state.clone();
        let n = multi.queued.len();
        let batch = in_multi_exec(&multi.queued);
        self.after_earlier_replies(async move {
            // Checked when the batch is about to be written, after the client's earlier
            // commands: the slot must still be this node's.
            let _guard = match still_served(&state, &target) {
                Ok(g) => g,
                Err(why) => {
                    if watching.is_some() {
                        let _ = exchange.run(b"*1\r\n$7\r\nUNWATCH\r\n", 1).await;
                    }
                    return resp::error(&format!("EXECABORT Transaction discarded: {why}; retry it"));
                }
            };
            match exchange.run(&batch, n + 2).await {
                Ok(mut replies) => replies.pop().unwrap_or_default(),
                Err(ExchangeError::Lost) => resp::error(&format!(
                    "EXECABORT Transaction discarded: the connection to {} holding WATCH was lost; retry it",
                    target.node
                )),
                Err(e) => resp::error(&e.message(&target.node)),
            }
        })
    }

    /// A transaction of keyless commands only (`PING`, `ECHO`, `TIME`): run on the first node.
    fn exec_anywhere(&mut self, queued: Vec<Bytes>) -> Pending {
        if queued.is_empty() {
            return Pending::Ready(Bytes::from_static(b"*0\r\n"));
        }
        let node = self.state.installed.load().table.nodes.first().cloned();
        let Some(node) = node else { return err("ERR_CLUSTER_NOT_FOUND") };
        let n = queued.len();
        let batch = in_multi_exec(&queued);
        let exchange = self.dedicated_exchange(node.clone(), Reuse::OrConnect);
        self.after_earlier_replies(async move {
            match exchange.run(&batch, n + 2).await {
                Ok(mut replies) => replies.pop().unwrap_or_default(),
                Err(e) => resp::error(&e.message(&node)),
            }
        })
    }
}

/// `MULTI`, the queued requests and `EXEC`, written together.
fn in_multi_exec(queued: &[Bytes]) -> Bytes {
    let mut batch = BytesMut::with_capacity(queued.iter().map(Bytes::len).sum::<usize>() + 32);
    batch.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
    for raw in queued {
        batch.extend_from_slice(raw);
    }
    batch.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
    batch.freeze()
}

/// Whether `target.slot` is still served by `target.node` here in a way that takes a write
/// now. A slot migrating out is counted in flight (the migration waits for it, like for any
/// command) while it may still be written here.
fn still_served(state: &ProxyState, target: &Target) -> Result<Option<InflightGuard>, String> {
    if state.config.coordinator_lease && state.lease.expired() {
        return Err("this proxy lost its coordinator lease".into());
    }
    let installed = state.installed.load();
    let table = &installed.table;
    let slot = target.slot;
    match table.route(slot, false) {
        Route::Local(i) if table.nodes.get(i) == Some(&target.node) => {}
        _ => return Err(format!("slot {slot} moved to another node during the transaction")),
    }
    let Some(task) = table.task_for_slot(slot) else { return Ok(None) };
    if task.importing {
        if task.state() != TaskState::SwitchCommitted {
            return Err(format!("slot {slot} is being imported"));
        }
        return Ok(None);
    }
    task.shared.inflight.fetch_add(1, Ordering::SeqCst);
    let guard = InflightGuard(task.shared.clone());
    if task.state() != TaskState::PreCheck {
        return Err(format!("slot {slot} is being switched to another node"));
    }
    Ok(Some(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_commands_act_at_once_inside_multi() {
        for name in ["EXEC", "discard", "Multi", "watch", "QUIT", "unwatch"] {
            assert!(runs_inside_multi(name.as_bytes()), "{name}");
        }
        for name in ["set", "get", "ping", "cluster", "execute"] {
            assert!(!runs_inside_multi(name.as_bytes()), "{name}");
        }
    }
}
