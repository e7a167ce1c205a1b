//! The proxy's `/metrics` page: a `prometheus-client` collector that reads the proxy's
//! counters (`metrics.rs`), its backend connections' stats and its installed metadata on each
//! scrape.

use crate::backend::NodeStats;
use crate::metrics::{counter, gauge};
use crate::state::ProxyState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Reads the proxy's state on each scrape. Holds the state weakly: a registry outliving the
/// proxy reports nothing rather than keeping it alive.
#[derive(Debug)]
struct ProxyCollector {
    state: Weak<ProxyState>,
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self.state.upgrade() else { return Ok(()) };
        let m = &state.metrics;
        m.encode_commands(&mut encoder)?;
        encode_backends(&mut encoder, &state.registry.node_stats())?;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut encoder, "moonraft_proxy_received_bytes", "Bytes read from clients.", load(&m.bytes_in))?;
        counter(&mut encoder, "moonraft_proxy_sent_bytes", "Bytes written to clients.", load(&m.bytes_out))?;
        counter(
            &mut encoder,
            "moonraft_proxy_connections_accepted",
            "Client connections accepted.",
            load(&state.total_connections),
        )?;
        gauge(
            &mut encoder,
            "moonraft_proxy_client_connections",
            "Client connections open now.",
            state.connected_clients.load(Ordering::Relaxed) as i64,
        )?;
        counter(
            &mut encoder,
            "moonraft_proxy_migration_keys_moved",
            "Keys this proxy copied to a migration's destination (scan and pulls).",
            load(&m.migration_keys),
        )?;
        counter(
            &mut encoder,
            "moonraft_proxy_migration_bytes_moved",
            "DUMP payload bytes (compressed as Redis stores them) copied for migrations.",
            load(&m.migration_bytes),
        )?;
        counter(
            &mut encoder,
            "moonraft_proxy_migration_pulls",
            "Keys moved ahead of the copy because a client at the destination needed them.",
            load(&m.migration_pulls),
        )?;
        counter(
            &mut encoder,
            "moonraft_proxy_migration_copy_errors",
            "Times a migration copy paused on an error (retried).",
            load(&m.migration_copy_errors),
        )?;
        let installed = state.installed.load();
        let table = &installed.table;
        gauge(&mut encoder, "moonraft_proxy_epoch", "Epoch of the installed cluster metadata.", table.epoch as i64)?;
        {
            let (mut stable, mut migrating, mut importing) = (0i64, 0i64, 0i64);
            for task in table.tasks.iter() {
                let n: i64 = task.ranges.iter().map(|r| i64::from(r.end - r.start) + 1).sum();
                if task.importing {
                    importing += n;
                } else {
                    migrating += n;
                }
            }
            stable += table.local_slot_count() as i64 - migrating;
            let mut family = encoder.encode_descriptor(
                "moonraft_proxy_slots",
                "Slots this proxy serves, by state (stable, migrating away, importing).",
                None,
                MetricType::Gauge,
            )?;
            for (kind, v) in [("stable", stable.max(0)), ("migrating", migrating), ("importing", importing)] {
                ConstGauge::new(v).encode(family.encode_family(&[("state", kind)])?)?;
            }
        }
        gauge(
            &mut encoder,
            "moonraft_proxy_migration_tasks",
            "Migration tasks in the installed metadata (both directions).",
            table.tasks.len() as i64,
        )?;
        gauge(
            &mut encoder,
            "moonraft_proxy_lease_valid",
            "1 while the coordinators' write lease is valid (or leases are off), else 0.",
            i64::from(!state.lease.expired()),
        )?;
        let uptime = state.started.elapsed();
        gauge(
            &mut encoder,
            "moonraft_proxy_uptime_seconds",
            "Seconds since the proxy started.",
            uptime.as_secs() as i64,
        )?;
        Ok(())
    }
}

/// Per Redis node and per other proxy this proxy talks to (`kind` "node" or "proxy").
fn encode_backends(encoder: &mut DescriptorEncoder, stats: &[(String, bool, Arc<NodeStats>)]) -> std::fmt::Result {
    fn labels(address: &str, peer: bool) -> [(&'static str, &str); 2] {
        [("address", address), ("kind", if peer { "proxy" } else { "node" })]
    }
    {
        let mut family = encoder.encode_descriptor(
            "moonraft_proxy_backend_connections",
            "Connections open now to each Redis node (kind=node) and other proxy (kind=proxy).",
            None,
            MetricType::Gauge,
        )?;
        for (address, peer, s) in stats {
            ConstGauge::new(s.connected.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels(address, *peer))?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "moonraft_proxy_backend_connection_failures",
            "Connection attempts that failed and connections that broke, per node or proxy.",
            None,
            MetricType::Counter,
        )?;
        for (address, peer, s) in stats {
            ConstCounter::new(s.failures.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels(address, *peer))?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "moonraft_proxy_backend_round_trip_seconds",
        "From writing a command to a node or proxy to reading its reply.",
        None,
        MetricType::Histogram,
    )?;
    for (address, peer, s) in stats {
        s.round_trip.encode(family.encode_family(&labels(address, *peer))?)?;
    }
    Ok(())
}

/// A registry for the proxy's `/metrics`.
pub fn registry(state: &Arc<ProxyState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector { state: Arc::downgrade(state) }));
    registry
}
