//! The broker's Prometheus metrics, `GET /metrics` on its HTTP port (same token as any read):
//! this member's Raft state as openraft reports it, and what its applied store holds. Read on
//! each scrape from the member's own state, without going through the leader, so every member
//! can be scraped and compared.

use super::service::Broker;
use moonraft_proxy::metrics::{counter, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Weak};

#[derive(Debug)]
struct BrokerCollector {
    broker: Weak<Broker>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("node_id", &self.node_id()).finish()
    }
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(b) = self.broker.upgrade() else { return Ok(()) };
        let m = b.raft.metrics().borrow().clone();
        let as_i64 = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        gauge(&mut e, "moonraft_broker_raft_term", "This member's current Raft term.", m.current_term as i64)?;
        gauge(
            &mut e,
            "moonraft_broker_raft_leader_id",
            "The leader's node id as this member knows it (0: none known).",
            m.current_leader.unwrap_or(0) as i64,
        )?;
        gauge(
            &mut e,
            "moonraft_broker_raft_is_leader",
            "1 on the leader, 0 elsewhere.",
            i64::from(m.current_leader == Some(b.node_id())),
        )?;
        gauge(&mut e, "moonraft_broker_raft_node_id", "This member's node id.", b.node_id() as i64)?;
        gauge(
            &mut e,
            "moonraft_broker_raft_last_log_index",
            "Index of the last entry in this member's log (-1: empty).",
            as_i64(m.last_log_index),
        )?;
        gauge(
            &mut e,
            "moonraft_broker_raft_applied_index",
            "Index of the last entry applied to this member's store (-1: none).",
            as_i64(m.last_applied.map(|l| l.index)),
        )?;
        gauge(
            &mut e,
            "moonraft_broker_raft_snapshot_index",
            "Index of the last log entry in this member's latest snapshot (-1: none).",
            as_i64(m.snapshot.map(|l| l.index)),
        )?;
        gauge(
            &mut e,
            "moonraft_broker_raft_voters",
            "Voters in the membership this member uses.",
            m.membership_config.membership().voter_ids().count() as i64,
        )?;
        if let Some(ms) = m.millis_since_quorum_ack {
            gauge(
                &mut e,
                "moonraft_broker_raft_millis_since_quorum_ack",
                "On the leader: milliseconds since a majority last acknowledged it.",
                ms as i64,
            )?;
        }
        let (clusters, nodes, proxies, failed, epoch, coordinators) = b.sm.read(|d| {
            let s = &d.store;
            (
                s.clusters.len(),
                s.clusters.values().map(|c| c.chunks.len()).sum::<usize>(),
                s.all_proxies.len(),
                s.failed_proxies.len(),
                s.global_epoch,
                s.coordinators.len(),
            )
        });
        gauge(&mut e, "moonraft_broker_clusters", "Clusters in the applied store.", clusters as i64)?;
        gauge(&mut e, "moonraft_broker_chunks", "Chunks (two proxies, four nodes) of all clusters.", nodes as i64)?;
        gauge(&mut e, "moonraft_broker_proxies", "Registered proxies.", proxies as i64)?;
        gauge(&mut e, "moonraft_broker_failed_proxies", "Proxies marked failed.", failed as i64)?;
        gauge(&mut e, "moonraft_broker_coordinators", "Coordinators with a recorded heartbeat.", coordinators as i64)?;
        counter(
            &mut e,
            "moonraft_broker_global_epoch",
            "The metadata's global epoch (grows with every change).",
            epoch,
        )?;
        Ok(())
    }
}

/// The registry behind the broker's `/metrics`.
pub fn registry(broker: &Arc<Broker>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector { broker: Arc::downgrade(broker) }));
    registry
}
