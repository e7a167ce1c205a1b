//! What a broker member counts of its own work: requests by surface, route and status with
//! their latency, forwarded requests, proposals and watch streams; and the request ids that
//! tie a request's log lines together. `exposition.rs` serves them on `/metrics`.

use moonraft_proxy::latency::LatencyHistogram;
use moonraft_proxy::metrics::{counter, gauge};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Requests of one endpoint (HTTP: method and route; gRPC: the RPC's path).
#[derive(Default)]
struct EndpointStats {
    /// By status (HTTP status code, or gRPC status code name).
    statuses: BTreeMap<String, u64>,
    latency: LatencyHistogram,
}

/// Which surface a request came in on.
#[derive(Clone, Copy)]
pub enum Surface {
    Http,
    Grpc,
}

/// What this member counted of its own work. Endpoints are labelled by route template (never
/// by the path a client sent), so their number stays bounded.
#[derive(Default)]
pub struct BrokerMetrics {
    http: Mutex<BTreeMap<(String, String), EndpointStats>>,
    grpc: Mutex<BTreeMap<String, EndpointStats>>,
    /// From proposing a command to its being committed by a majority and applied here.
    pub proposals: LatencyHistogram,
    /// Proposals that did not end in an applied entry (not the leader, timeout, stopped core).
    pub proposal_failures: AtomicU64,
    /// Requests this member sent on to the leader: [surface][0 answered, 1 failed].
    forwarded: [[AtomicU64; 2]; 2],
    /// gRPC `Watch` streams open now.
    pub watch_subscribers: AtomicI64,
    /// Requests given an id by this member so far.
    request_ids: AtomicU64,
}

/// The header (HTTP) and metadata key (gRPC) carrying a request's id: the caller's if it sent
/// a usable one, else one this member makes. It is in every log line of the request (its
/// span), on the leader too when the request is forwarded, and in the response.
pub const REQUEST_ID: &str = "x-moonraft-request-id";

/// A caller's request id is used if it is 1–64 characters of `[A-Za-z0-9._:-]`.
fn usable_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len()) && id.iter().all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
}

impl BrokerMetrics {
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let e = http.entry((method.to_owned(), route.to_owned())).or_default();
        *e.statuses.entry(status.to_string()).or_default() += 1;
        e.latency.observe(elapsed);
    }

    pub fn grpc_request(&self, path: &str, code: &str, elapsed: Duration) {
        let mut grpc = self.grpc.lock().unwrap_or_else(|e| e.into_inner());
        let e = grpc.entry(path.to_owned()).or_default();
        *e.statuses.entry(code.to_owned()).or_default() += 1;
        e.latency.observe(elapsed);
    }

    /// The caller's request id, or a new one: `<node id>-<process start, hex ms>-<sequence>`,
    /// unique across this member's restarts.
    pub fn request_id(&self, node_id: u64, given: Option<&[u8]>) -> String {
        if let Some(id) = given.filter(|id| usable_request_id(id)) {
            return String::from_utf8_lossy(id).into_owned();
        }
        static STARTED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let started = STARTED_MS.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        });
        format!("{node_id}-{started:x}-{}", self.request_ids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn forwarded(&self, surface: Surface, answered: bool) {
        self.forwarded[surface as usize][usize::from(!answered)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The request families (HTTP, gRPC, forwarding, proposals, watch streams).
pub(super) fn encode_requests(e: &mut DescriptorEncoder, m: &BrokerMetrics) -> std::fmt::Result {
    let http = m.http.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut family = e.encode_descriptor(
            "moonraft_broker_http_requests",
            "HTTP requests this member answered, by method, route and status (forwarded ones too).",
            None,
            MetricType::Counter,
        )?;
        for ((method, route), stats) in http.iter() {
            for (status, n) in &stats.statuses {
                let labels = [("method", method.as_str()), ("route", route.as_str()), ("status", status.as_str())];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    {
        let mut family = e.encode_descriptor(
            "moonraft_broker_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route.",
            None,
            MetricType::Histogram,
        )?;
        for ((method, route), stats) in http.iter() {
            stats.latency.encode(family.encode_family(&[("method", method.as_str()), ("route", route.as_str())])?)?;
        }
    }
    drop(http);
    let grpc = m.grpc.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut family = e.encode_descriptor(
            "moonraft_broker_grpc_requests",
            "gRPC calls this member answered, by method and status code (Raft traffic included).",
            None,
            MetricType::Counter,
        )?;
        for (method, stats) in grpc.iter() {
            for (code, n) in &stats.statuses {
                ConstCounter::new(*n)
                    .encode(family.encode_family(&[("method", method.as_str()), ("code", code.as_str())])?)?;
            }
        }
    }
    {
        let mut family = e.encode_descriptor(
            "moonraft_broker_grpc_request_duration_seconds",
            "Time to a gRPC call's response headers (for Watch: to the stream's start), by method.",
            None,
            MetricType::Histogram,
        )?;
        for (method, stats) in grpc.iter() {
            stats.latency.encode(family.encode_family(&[("method", method.as_str())])?)?;
        }
    }
    drop(grpc);
    {
        let mut family = e.encode_descriptor(
            "moonraft_broker_forwarded_requests",
            "Requests sent on to the leader, by surface and result (answered by the leader, or failed on the way).",
            None,
            MetricType::Counter,
        )?;
        for (s, surface) in ["http", "grpc"].iter().enumerate() {
            for (r, result) in ["answered", "failed"].iter().enumerate() {
                let v = m.forwarded[s][r].load(Ordering::Relaxed);
                ConstCounter::new(v).encode(family.encode_family(&[("surface", *surface), ("result", *result)])?)?;
            }
        }
    }
    {
        let encoder = e.encode_descriptor(
            "moonraft_broker_proposal_duration_seconds",
            "From proposing a metadata change to its being committed by a majority and applied on this member (the leader).",
            None,
            MetricType::Histogram,
        )?;
        m.proposals.encode(encoder)?;
    }
    counter(
        e,
        "moonraft_broker_proposal_failures",
        "Proposals that ended without an applied entry (lost leadership, timeout, stopped core).",
        m.proposal_failures.load(Ordering::Relaxed),
    )?;
    gauge(
        e,
        "moonraft_broker_watch_subscribers",
        "gRPC Watch streams open now.",
        m.watch_subscribers.load(Ordering::Relaxed),
    )?;
    Ok(())
}
