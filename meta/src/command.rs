//! Raft log commands (`docs/architecture.md#how-an-api-call-flows-brokers`) and their deterministic application.
//!
//! A command carries everything that could differ between members (the leader's clock, the
//! default cluster config), so applying the same log gives byte-identical stores everywhere.
//! Results, errors included, are part of that determinism.

use crate::error::MetaError;
use crate::failover::FailoverOutcome;
use crate::slots::Range;
use crate::store::{ClusterConfig, RegisterProxy, SlotTag, Store, META_VERSION};
use crate::view::{cluster_nodes, Node};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Initialize {
        enable_ordered_proxy: bool,
    },
    AddProxy(RegisterProxy),
    RemoveProxy {
        address: String,
    },
    AddFailure {
        address: String,
        reporter_id: String,
        now: u64,
    },
    PurgeFailures {
        now: u64,
        failure_ttl: u64,
    },
    WithdrawFailure {
        address: String,
        reporter_id: String,
    },
    CoordinatorAlive {
        reporter_id: String,
        now_ms: u64,
        forget_after_ms: u64,
    },
    RecoverProxy {
        address: String,
    },
    ReplaceFailedProxy {
        address: String,
    },
    CommitMigration {
        cluster_name: String,
        range_list: Vec<Range>,
        tag: SlotTag,
    },
    CreateCluster {
        name: String,
        node_number: u64,
        default_config: ClusterConfig,
    },
    RemoveCluster {
        name: String,
    },
    AddNodes {
        name: String,
        node_number: u64,
    },
    ScaleUpNodes {
        name: String,
        cluster_node_number: u64,
    },
    DeleteFreeNodes {
        name: String,
    },
    ExpandSlots {
        name: String,
    },
    ShrinkSlots {
        name: String,
        new_node_number: u64,
    },
    AutoPhase1 {
        name: String,
        node_number: u64,
    },
    AutoPhase2 {
        name: String,
        node_number: u64,
    },
    /// `expected_epoch`: apply only if the cluster is at that epoch (a compare-and-set).
    ChangeConfig {
        name: String,
        changes: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_epoch: Option<u64>,
    },
    BalanceMasters {
        name: String,
    },
    ForceEpoch {
        new_epoch: u64,
    },
    RecoverEpoch {
        observed_max_epoch: u64,
    },
    RestoreStore {
        store: Box<Store>,
    },
}

/// What `AutoPhase1` decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoStep {
    /// Nothing more to do (same size, or a shrink was started).
    Done,
    /// Nodes were added: wait until these proxies reach `epoch`, then run `AutoPhase2`.
    WaitForProxies { proxies: Vec<String>, epoch: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Done,
    AddedNodes(Vec<Node>),
    Failover(FailoverOutcome),
    Auto(AutoStep),
    /// Whether the command changed anything (`WithdrawFailure`, `RecoverProxy`).
    Changed(bool),
}

pub type CommandResult = Result<CommandOutput, MetaError>;

impl Store {
    /// Applies one command. Failing commands leave the store unchanged, except the documented
    /// partial effects (re-registering a known proxy clears its failed state; a failover
    /// without replacement keeps the promotion).
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        use Command::*;
        let done = |r: Result<(), MetaError>| r.map(|()| CommandOutput::Done);
        match cmd {
            Initialize { enable_ordered_proxy } => {
                if self.global_epoch == 0 && self.all_proxies.is_empty() && self.clusters.is_empty() {
                    self.version = META_VERSION.to_owned();
                    self.enable_ordered_proxy = *enable_ordered_proxy;
                }
                Ok(CommandOutput::Done)
            }
            AddProxy(req) => done(self.register_proxy(req.clone())),
            RemoveProxy { address } => done(self.delete_proxy(address)),
            AddFailure { address, reporter_id, now } => {
                self.report_failure(address, reporter_id, *now);
                Ok(CommandOutput::Done)
            }
            PurgeFailures { now, failure_ttl } => {
                self.purge_failures(*now, *failure_ttl);
                Ok(CommandOutput::Done)
            }
            WithdrawFailure { address, reporter_id } => {
                Ok(CommandOutput::Changed(self.withdraw_failure(address, reporter_id)))
            }
            CoordinatorAlive { reporter_id, now_ms, forget_after_ms } => {
                self.coordinator_alive(reporter_id, *now_ms, *forget_after_ms);
                Ok(CommandOutput::Done)
            }
            RecoverProxy { address } => self.recover_proxy(address).map(CommandOutput::Changed),
            ReplaceFailedProxy { address } => self.failover(address).map(CommandOutput::Failover),
            CommitMigration { cluster_name, range_list, tag } => {
                done(self.commit_migration(cluster_name, range_list, tag))
            }
            CreateCluster { name, node_number, default_config } => {
                done(self.create_cluster(name, *node_number, default_config.clone()))
            }
            RemoveCluster { name } => done(self.delete_cluster(name)),
            AddNodes { name, node_number } => {
                let added = self.add_nodes(name, *node_number)?;
                Ok(CommandOutput::AddedNodes(self.nodes_of_chunks(name, added)))
            }
            ScaleUpNodes { name, cluster_node_number } => {
                let added = self.add_nodes_up_to(name, *cluster_node_number)?;
                Ok(CommandOutput::AddedNodes(self.nodes_of_chunks(name, added)))
            }
            DeleteFreeNodes { name } => done(self.delete_free_nodes(name)),
            ExpandSlots { name } => done(self.expand(name)),
            ShrinkSlots { name, new_node_number } => done(self.shrink(name, *new_node_number)),
            AutoPhase1 { name, node_number } => {
                // Several steps: run them on a copy so a failure changes nothing.
                let mut next = self.clone();
                let step = next.auto_phase1(name, *node_number)?;
                *self = next;
                Ok(CommandOutput::Auto(step))
            }
            AutoPhase2 { name, node_number } => {
                let info = crate::view::cluster_info(self, name, 0).ok_or(MetaError::ClusterNotFound)?;
                if (info.node_number_with_slots as u64) < *node_number {
                    self.expand(name)?;
                }
                Ok(CommandOutput::Done)
            }
            ChangeConfig { name, changes, expected_epoch } => {
                if let Some(expected) = expected_epoch {
                    let current = self.clusters.get(name).map(|c| c.epoch).ok_or(MetaError::ClusterNotFound)?;
                    if current != *expected {
                        return Err(MetaError::EpochMismatch { current });
                    }
                }
                done(self.change_config(name, changes))
            }
            BalanceMasters { name } => done(self.balance_masters(name)),
            ForceEpoch { new_epoch } => done(self.force_epoch(*new_epoch)),
            RecoverEpoch { observed_max_epoch } => {
                // A proxy cannot push the epoch past MAX_EPOCH (where `+ 1` could overflow).
                let observed = (*observed_max_epoch).min(crate::store::MAX_EPOCH);
                let epoch = observed.saturating_add(2).max(self.global_epoch + 1);
                self.global_epoch = epoch;
                for c in self.clusters.values_mut() {
                    c.epoch = epoch;
                }
                Ok(CommandOutput::Done)
            }
            RestoreStore { store } => done(self.restore((**store).clone())),
        }
    }

    fn nodes_of_chunks(&self, name: &str, chunks: std::ops::Range<usize>) -> Vec<Node> {
        let Some(c) = self.clusters.get(name) else { return Vec::new() };
        cluster_nodes(c).into_iter().skip(chunks.start * 4).take(chunks.len() * 4).collect()
    }

    /// The steps of `auto` (`docs/allocation.md#scale-in-the-shrink-plan`).
    fn auto_phase1(&mut self, name: &str, node_number: u64) -> Result<AutoStep, MetaError> {
        let cluster = self.clusters.get(name);
        if !crate::store::valid_cluster_name(name) {
            return Err(MetaError::InvalidClusterName);
        }
        let cluster = cluster.ok_or(MetaError::ClusterNotFound)?;
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        match self.delete_free_nodes(name) {
            Ok(()) | Err(MetaError::FreeNodeNotFound) => {}
            Err(e) => return Err(e),
        }
        let current = self.clusters.get(name).map(|c| c.node_number() as u64).unwrap_or(0);
        if node_number == current {
            return Ok(AutoStep::Done);
        }
        if node_number < current {
            self.shrink(name, node_number)?;
            return Ok(AutoStep::Done);
        }
        self.add_nodes(name, node_number - current)?;
        let cluster = self.clusters.get(name).ok_or(MetaError::ClusterNotFound)?;
        Ok(AutoStep::WaitForProxies { proxies: cluster.proxies().cloned().collect(), epoch: cluster.epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(i: u16) -> Command {
        Command::AddProxy(RegisterProxy {
            proxy_address: format!("h{i}:6000"),
            nodes: [format!("h{i}:7000"), format!("h{i}:7001")],
            host: None,
            index: None,
        })
    }

    #[test]
    fn commands_roundtrip_through_json() {
        let cmds = vec![
            Command::Initialize { enable_ordered_proxy: false },
            reg(1),
            Command::CreateCluster { name: "c".into(), node_number: 4, default_config: ClusterConfig::default() },
            Command::CommitMigration { cluster_name: "c".into(), range_list: vec![(0, 1).into()], tag: SlotTag::None },
        ];
        for c in cmds {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
        }
        let r: CommandResult =
            Err(MetaError::InvalidConfig { key: "k".into(), value: "v".into(), message: "m".into() });
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<CommandResult>(&json).unwrap(), r);
    }

    #[test]
    fn auto_scales_out_in_two_phases_and_in_with_cleanup() {
        let mut s = Store::default();
        for i in 0..8 {
            s.apply(&reg(i)).unwrap();
        }
        let create =
            Command::CreateCluster { name: "c".into(), node_number: 4, default_config: ClusterConfig::default() };
        s.apply(&create).unwrap();
        let out = s.apply(&Command::AutoPhase1 { name: "c".into(), node_number: 8 }).unwrap();
        let CommandOutput::Auto(AutoStep::WaitForProxies { proxies, epoch }) = out else { panic!("{out:?}") };
        assert_eq!(proxies.len(), 4);
        assert_eq!(epoch, s.clusters["c"].epoch);
        s.apply(&Command::AutoPhase2 { name: "c".into(), node_number: 8 }).unwrap();
        assert!(s.clusters["c"].is_migrating());
        assert_eq!(
            s.apply(&Command::AutoPhase1 { name: "c".into(), node_number: 8 }),
            Err(MetaError::MigrationRunning)
        );
        // a failed phase 1 changes nothing (too many nodes requested after cleanup)
        let mut t = Store::default();
        for i in 0..4 {
            t.apply(&reg(i)).unwrap();
        }
        t.apply(&create).unwrap();
        t.apply(&Command::AddNodes { name: "c".into(), node_number: 4 }).unwrap();
        let before = t.clone();
        assert_eq!(
            t.apply(&Command::AutoPhase1 { name: "c".into(), node_number: 16 }),
            Err(MetaError::NoAvailableResource)
        );
        assert_eq!(t, before);
        // shrink back via auto, and the next call removes the drained chunk
        let out = t.apply(&Command::AutoPhase1 { name: "c".into(), node_number: 4 }).unwrap();
        assert_eq!(out, CommandOutput::Auto(AutoStep::Done));
        assert_eq!(t.clusters["c"].chunks.len(), 1, "the unused added chunk was removed");
    }

    #[test]
    fn recover_epoch() {
        let mut s = Store::default();
        s.apply(&reg(1)).unwrap();
        s.apply(&Command::RecoverEpoch { observed_max_epoch: 10 }).unwrap();
        assert_eq!(s.global_epoch, 12);
        s.apply(&Command::RecoverEpoch { observed_max_epoch: 0 }).unwrap();
        assert_eq!(s.global_epoch, 13);
    }

    #[test]
    fn epochs_stay_far_from_overflow() {
        use crate::store::MAX_EPOCH;
        let mut s = Store::default();
        assert_eq!(s.apply(&Command::ForceEpoch { new_epoch: u64::MAX }), Err(MetaError::EpochTooLarge));
        assert_eq!(s.apply(&Command::ForceEpoch { new_epoch: MAX_EPOCH + 1 }), Err(MetaError::EpochTooLarge));
        assert_eq!(s.global_epoch, 0, "a refused epoch changes nothing");
        s.apply(&Command::ForceEpoch { new_epoch: MAX_EPOCH }).unwrap();
        // A proxy reporting a huge epoch cannot push the store towards u64::MAX either.
        let mut t = Store::default();
        t.apply(&Command::RecoverEpoch { observed_max_epoch: u64::MAX }).unwrap();
        assert_eq!(t.global_epoch, MAX_EPOCH + 2);
        let doc = Store { global_epoch: MAX_EPOCH + 1, ..Store::default() };
        assert!(matches!(Store::default().restore(doc), Err(MetaError::InvalidMetadata { .. })));
    }
}
