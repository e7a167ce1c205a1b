//! The coordinator's Prometheus metrics, `GET /metrics` on `metrics_address`: what it pushed
//! to proxies, what it reported to the brokers and the failovers it ran (with how long each
//! took from its first failed probe), read from its counters on each scrape.

use super::Coordinator;
use moonraft_proxy::metrics::{counter, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

struct CoordinatorCollector {
    co: Weak<Coordinator>,
}

impl std::fmt::Debug for CoordinatorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoordinatorCollector")
    }
}

impl Collector for CoordinatorCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(co) = self.co.upgrade() else { return Ok(()) };
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "moonraft_coordinator_sync_pushes",
                "Metadata pushes (UMCTL SETCLUSTER) acknowledged by proxies.",
                &co.pushes,
            ),
            (
                "moonraft_coordinator_failures_reported",
                "Failure reports sent to the brokers (refreshes included).",
                &co.reports,
            ),
            (
                "moonraft_coordinator_failures_held",
                "Failure reports held back (start-up grace, or this coordinator reaches no proxy).",
                &co.held,
            ),
            (
                "moonraft_coordinator_failures_withdrawn",
                "Failure reports withdrawn because the proxy answered again.",
                &co.withdrawals,
            ),
            (
                "moonraft_coordinator_failovers",
                "Failovers this coordinator asked for and the brokers did.",
                &co.failovers,
            ),
            (
                "moonraft_coordinator_recoveries",
                "Failed proxies returned to the pool after answering again.",
                &co.recoveries,
            ),
            ("moonraft_coordinator_probe_failures", "Health probes that found a proxy down.", &co.probe_failures),
            (
                "moonraft_coordinator_watch_events",
                "Change events received on the brokers' watch stream.",
                &co.watch_events,
            ),
            (
                "moonraft_coordinator_watch_connects",
                "Times the watch stream was opened (the first time included).",
                &co.watch_reconnects,
            ),
            (
                "moonraft_coordinator_migrations_committed",
                "Finished slot migrations this coordinator committed at the brokers.",
                &co.migrations_committed,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v.load(Ordering::Relaxed))?;
        }
        {
            let mut family = e.encode_descriptor(
                "moonraft_coordinator_proxy_probe_failures",
                "Health probes that found a proxy down, per proxy this coordinator follows now.",
                None,
                MetricType::Counter,
            )?;
            for (proxy, n) in co.probe_failures_by_proxy() {
                ConstCounter::new(n).encode(family.encode_family(&[("proxy", proxy.as_str())])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "moonraft_coordinator_broker_calls",
                "Calls to the brokers, by call and result (ok, or the gRPC code of the final failure).",
                None,
                MetricType::Counter,
            )?;
            for ((call, result), n) in co.brokers.call_counts() {
                ConstCounter::new(n).encode(family.encode_family(&[("call", call), ("result", result.as_str())])?)?;
            }
        }
        co.sync_seconds.encode(e.encode_descriptor(
            "moonraft_coordinator_sync_push_duration_seconds",
            "From a sync request (a change event, a committed migration, a new proxy) to the proxy's acknowledgement of the push that followed.",
            None,
            MetricType::Histogram,
        )?)?;
        let (followed, reached) = co.agent_counts();
        gauge(
            &mut e,
            "moonraft_coordinator_proxies",
            "Proxies this coordinator keeps in sync and probes.",
            followed as i64,
        )?;
        gauge(
            &mut e,
            "moonraft_coordinator_proxies_reached",
            "Of those, the ones whose latest probe succeeded.",
            reached as i64,
        )?;
        Ok(())
    }
}

pub fn registry(co: &Arc<Coordinator>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CoordinatorCollector { co: Arc::downgrade(co) }));
    registry.register(
        "moonraft_coordinator_failover_duration_seconds",
        "From this coordinator's first failed probe of a proxy to the brokers' acknowledgement of its failover.",
        co.failover_seconds.clone(),
    );
    registry
}
