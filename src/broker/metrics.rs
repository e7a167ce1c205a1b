//! The broker's Prometheus metrics, `GET /metrics` on its HTTP port (same token as any read):
//! this member's Raft state as openraft reports it, what its applied store and its RocksDB
//! hold, and the requests it served. Read on each scrape from the member's own state, without
//! going through the leader, so every member can be scraped and compared.

use super::service::Broker;
use moonraft_proxy::latency::LatencyHistogram;
use moonraft_proxy::metrics::{counter, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
        let started = STARTED_MS.get_or_init(Broker::now_ms);
        format!("{node_id}-{started:x}-{}", self.request_ids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn forwarded(&self, surface: Surface, answered: bool) {
        self.forwarded[surface as usize][usize::from(!answered)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts an open `Watch` stream for as long as it lives.
pub struct WatchSubscription(Arc<Broker>);

impl WatchSubscription {
    pub fn new(broker: Arc<Broker>) -> Self {
        broker.metrics.watch_subscribers.fetch_add(1, Ordering::Relaxed);
        WatchSubscription(broker)
    }

    pub fn broker(&self) -> &Broker {
        &self.0
    }
}

impl Drop for WatchSubscription {
    fn drop(&mut self) {
        self.0.metrics.watch_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn encode_requests(e: &mut DescriptorEncoder, m: &BrokerMetrics) -> std::fmt::Result {
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

type GrpcRequest = axum::http::Request<tonic::body::BoxBody>;
type GrpcResponse = axum::http::Response<tonic::body::BoxBody>;

/// A gRPC service whose calls are counted by method and status code and timed. Outside the
/// credential check, so refused calls are counted too.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    broker: Arc<Broker>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, broker: Arc<Broker>) -> Metered<S> {
        Metered { inner, broker }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<GrpcRequest> for Metered<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse, Error = std::convert::Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GrpcRequest) -> Self::Future {
        let start = std::time::Instant::now();
        let path = req.uri().path().to_owned();
        let broker = self.broker.clone();
        let id = broker.metrics.request_id(broker.node_id(), req.headers().get(REQUEST_ID).map(|v| v.as_bytes()));
        let header = axum::http::HeaderValue::from_str(&id).ok();
        if let Some(v) = &header {
            req.headers_mut().insert(REQUEST_ID, v.clone());
        }
        let span = tracing::info_span!("grpc", id = %id, method = %path);
        let call = tracing::Instrument::instrument(self.inner.call(req), span);
        Box::pin(async move {
            let mut resp = call.await?;
            if let Some(v) = header {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            // A call that failed before its first message carries its status in the headers
            // ("trailers only"); one that answered has it in the trailers, and it is OK.
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            // Only the service's own methods are labelled by name: a client can send any path.
            let method = if code == tonic::Code::Unimplemented { "unknown" } else { path.as_str() };
            broker.metrics.grpc_request(method, &format!("{code:?}"), start.elapsed());
            Ok(resp)
        })
    }
}
