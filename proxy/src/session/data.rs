//! Data commands: routed by their keys' slot to a local node (shared pipelined connections,
//! or the client's own one for blocking commands), a replica for `READONLY` reads, another
//! proxy (active redirection), or answered with `MOVED`/`ASK`/`TRYAGAIN`.

use super::{err, redirect, InflightGuard, LastWrite, MigrationPath, Pending, Session};
use crate::cluster::Route;
use crate::command::{self, CommandSpec};
use crate::resp::{self, Request};
use crate::slot::key_slot;
use crate::slowlog::{describe_command, slowlog_args, Sample};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};
use tokio::sync::oneshot;

impl Session {
    /// Routes a data command by its keys' slot. `redirect`: forward it when another proxy
    /// serves the slot (active redirection) instead of answering `MOVED`/`ASK`.
    pub(super) async fn data_command(
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
                    let addr = &installed.table.nodes[node];
                    // Copied only when it changes: no allocation per command.
                    if !spec.is_read_only() && !matches!(&self.last_write, LastWrite::Node(n) if n == addr) {
                        self.last_write = LastWrite::Node(addr.clone());
                    }
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
                        Ok((None, addr.clone(), migration))
                    } else {
                        // The node's address is only needed for blocking commands.
                        Ok((installed.pool(node, self.proto, &self.state.registry), String::new(), migration))
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
                    // Just started, no metadata yet: a retryable answer, so a restart in a
                    // rolling upgrade does not surface errors (`docs/compatibility.md#starting-proxy`).
                    if default.is_empty() && installed.table.epoch == 0 {
                        return err("CLUSTERDOWN this proxy has no metadata yet (it just started; coordinators push it shortly)");
                    }
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
    pub(super) async fn umforward(&mut self, req: Request, asking: bool) -> Pending {
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
}
