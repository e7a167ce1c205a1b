//! The broker's Prometheus metrics, `GET /metrics` on its HTTP port (same token as any read):
//! this member's Raft state as openraft reports it, what its applied store and its RocksDB
//! hold, and the requests it served. Read on each scrape from the member's own state, without
//! going through the leader, so every member can be scraped and compared.

use super::metrics::encode_requests;
use super::service::Broker;
use moonraft_proxy::metrics::{counter, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
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
        // On the leader: what each member has of the log, and so what a majority has (the
        // commit index; openraft does not report it, and followers do not know it).
        if let Some(replication) = &m.replication {
            let matched = |id: &u64| -> i64 {
                if *id == b.node_id() {
                    as_i64(m.last_log_index)
                } else {
                    as_i64(replication.get(id).copied().flatten().map(|l| l.index))
                }
            };
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let mut indexes: Vec<i64> = voters.iter().map(matched).collect();
            indexes.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(committed) = indexes.get(voters.len() / 2) {
                gauge(
                    &mut e,
                    "moonraft_broker_raft_committed_index",
                    "On the leader: the highest log index a majority of the voters has.",
                    *committed,
                )?;
            }
            let mut family = e.encode_descriptor(
                "moonraft_broker_raft_matched_index",
                "On the leader: the last log index each member is known to have (replication lag).",
                None,
                MetricType::Gauge,
            )?;
            let ids: std::collections::BTreeSet<u64> = replication.keys().copied().chain([b.node_id()]).collect();
            for id in ids {
                let node = id.to_string();
                ConstGauge::new(matched(&id)).encode(family.encode_family(&[("node", node.as_str())])?)?;
            }
        }
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
        let storage = b.sm.storage_stats();
        gauge(
            &mut e,
            "moonraft_broker_snapshot_bytes",
            "Size of this member's latest snapshot (the store document).",
            storage.snapshot_bytes as i64,
        )?;
        counter(
            &mut e,
            "moonraft_broker_snapshots",
            "Snapshots this member built or installed since it started.",
            storage.snapshots,
        )?;
        gauge(
            &mut e,
            "moonraft_broker_rocksdb_live_data_bytes",
            "RocksDB's estimate of the live data in this member's data dir (log, vote, snapshot).",
            storage.live_data_bytes as i64,
        )?;
        gauge(
            &mut e,
            "moonraft_broker_rocksdb_sst_bytes",
            "Size of RocksDB's table files in this member's data dir.",
            storage.sst_bytes as i64,
        )?;
        gauge(
            &mut e,
            "moonraft_broker_rocksdb_memtable_bytes",
            "RocksDB memtables in this member's process (written, not yet flushed to table files).",
            storage.memtable_bytes as i64,
        )?;
        encode_requests(&mut e, &b.metrics)?;
        Ok(())
    }
}

/// The registry behind the broker's `/metrics`.
pub fn registry(broker: &Arc<Broker>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector { broker: Arc::downgrade(broker) }));
    registry
}
