//! `moonraft coordinator`: keeps proxies in sync with the broker group, probes them (and the
//! Redis nodes behind them), reports failures and triggers failovers
//! (`failover-and-coordinator.md`, with the improvements of issue 4).
//!
//! Per proxy there is an *agent*: a sync task (fetch the proxy's view, push `UMCTL SETREPL`
//! and `SETCLUSTER`, retry with backoff) and a probe task (`UMCTL HEALTH` every
//! `probe_interval_ms`, which also renews the proxy's write lease). Changes reach the agents
//! through the brokers' watch stream within milliseconds of a commit; a slow full reconcile
//! repairs anything missed. No agent waits for another, so one hung proxy stalls nobody.
//!
//! What the probes mean is decided in `detect.rs`: a proxy is reported only after a failure
//! window without a healthy answer (never during its start-up grace, never for this
//! coordinator's own lookup or socket errors); the report is withdrawn when it answers again,
//! and a failed proxy that answers healthily for `recovery_ms` is recovered. Each coordinator
//! sends heartbeats so that the brokers' default failure quorum is a majority of the
//! coordinators alive: one coordinator's view never fails a proxy over alone.

pub mod admin;
pub mod clients;
pub mod config;
pub mod detect;
mod metrics;
pub mod migration;
pub mod push;

use clients::{error_text, Brokers, ConnectError, ProxyConn, ResolvedAddress};
use config::CoordinatorConfig;
use detect::{Context, Detector, DetectorConfig, Probe, Verdict};
use moonraft_proto::broker as pb;
use moonraft_proxy::resp::Frame;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

/// The timing keys that `CONFIG SET` may change at runtime.
#[derive(Debug, Clone)]
pub struct Timing {
    pub proxy_timeout: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub detector: DetectorConfig,
    pub heartbeat_interval: Duration,
    pub lease_ms: u64,
    pub reconcile_interval: Duration,
    pub disable_failover: bool,
    /// How proxies are reached: `AUTH admin <password>`, TLS.
    pub proxy_login: clients::ProxyLogin,
}

impl Timing {
    fn of(c: &CoordinatorConfig) -> Timing {
        Timing {
            proxy_timeout: Duration::from_millis(c.proxy_timeout_ms),
            probe_interval: Duration::from_millis(c.probe_interval_ms),
            probe_timeout: Duration::from_millis(c.probe_timeout_ms),
            detector: DetectorConfig {
                window: Duration::from_millis(c.failure_window_ms),
                failure_probes: c.failure_probes,
                startup_grace: Duration::from_millis(c.startup_grace_ms),
                recovery: Duration::from_millis(c.recovery_ms),
                report_every: Duration::from_secs(1),
                local_error_grace: Duration::from_millis(c.local_error_grace_ms),
            },
            heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms),
            proxy_login: clients::ProxyLogin {
                admin_password: c.proxy_admin_password.clone(),
                tls: c.proxy_tls.clone(),
            },
            lease_ms: c.proxy_lease_ms,
            reconcile_interval: Duration::from_millis(c.reconcile_interval_ms),
            disable_failover: c.disable_failover,
        }
    }
}

pub struct Coordinator {
    pub config: RwLock<CoordinatorConfig>,
    pub brokers: Brokers,
    agents: Mutex<HashMap<String, Agent>>,
    /// Wakes the failure handler right after a report.
    failures_reported: Notify,
    /// Wakes the reconcile loop (watch resync, unknown proxy, after a failover).
    reconcile_now: Notify,
    pub pushes: AtomicU64,
    /// Failure reports sent (refreshes included).
    pub reports: AtomicU64,
    /// Reports held back (start-up grace, or this coordinator reaches no proxy at all).
    pub held: AtomicU64,
    /// Reports withdrawn because the proxy answered again.
    pub withdrawals: AtomicU64,
    pub failovers: AtomicU64,
    /// Failed proxies returned to the pool after answering healthily again.
    pub recoveries: AtomicU64,
    /// Seconds from this coordinator's first failed probe of a proxy to the brokers'
    /// acknowledgement of its failover.
    pub failover_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Probes that found a proxy down (not counting probes this coordinator could not make).
    pub probe_failures: AtomicU64,
    /// From a sync request (a change event, a finished migration, a new proxy) to the proxy's
    /// acknowledgement of the push that followed it.
    pub sync_seconds: moonraft_proxy::latency::LatencyHistogram,
    /// Migrations this coordinator committed at the brokers.
    pub migrations_committed: AtomicU64,
    /// Watch stream events received, and how often the stream had to be opened again.
    pub watch_events: AtomicU64,
    pub watch_reconnects: AtomicU64,
}

/// What the latest probe of a proxy said, for "does this coordinator reach anyone?".
const REACH_UNKNOWN: u8 = 0;
const REACH_YES: u8 = 1;
const REACH_NO: u8 = 2;

/// What the coordinator knows about one proxy, shared by its two tasks.
struct AgentState {
    address: String,
    /// In the broker's failed set: still synced (that fences it) and probed without a lease,
    /// so that it can be recovered when it answers again.
    failed: AtomicBool,
    /// In a cluster, per the last view fetched.
    in_cluster: AtomicBool,
    /// `REACH_*` of the latest probe that said anything about the proxy.
    reach: AtomicU8,
    resolved: ResolvedAddress,
    /// When the current run of failed probes began (`None` while the proxy answers).
    failing_since: Mutex<Option<std::time::Instant>>,
    /// Probes of this proxy that found it down.
    probe_failures: AtomicU64,
    /// When the oldest sync request not yet acknowledged by the proxy was made.
    sync_requested: Mutex<Option<std::time::Instant>>,
    /// Epoch of the last view fetched from the broker: what `UMCTL HEALTH` expects.
    expected_epoch: AtomicU64,
    nodes: Mutex<Vec<String>>,
    sync: watch::Sender<u64>,
}

struct Agent {
    state: Arc<AgentState>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Coordinator {
    pub fn timing(&self) -> Timing {
        Timing::of(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn reporter_id(&self) -> String {
        self.config.read().unwrap_or_else(|e| e.into_inner()).reporter_id.clone()
    }

    /// When this coordinator's probes of `address` began to fail, if they are failing.
    fn failing_since(&self, address: &str) -> Option<std::time::Instant> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let agent = agents.get(address)?;
        let since = *agent.state.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        since
    }

    /// Proxies this coordinator follows, and how many of them answer its probes.
    /// Each followed proxy and how many probes found it down, sorted by address.
    pub fn probe_failures_by_proxy(&self) -> Vec<(String, u64)> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = agents
            .values()
            .map(|a| (a.state.address.clone(), a.state.probe_failures.load(Ordering::Relaxed)))
            .collect();
        all.sort();
        all
    }

    pub fn agent_counts(&self) -> (usize, usize) {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let reached = agents.values().filter(|a| a.state.reach.load(Ordering::Relaxed) == REACH_YES).count();
        (agents.len(), reached)
    }

    /// One line per agent, for `UMCTL DEBUG FUTURE`.
    pub fn describe(&self) -> Vec<String> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<String> = agents
            .values()
            .map(|a| {
                format!(
                    "proxy {} epoch {} failed {}",
                    a.state.address,
                    a.state.expected_epoch.load(Ordering::Relaxed),
                    a.state.failed.load(Ordering::Relaxed)
                )
            })
            .collect();
        lines.sort();
        lines
    }

    /// Starts an agent for `address` if there is none, records its failed flag, and asks it
    /// to sync. Returns false if it had to be created.
    fn ensure_agent(self: &Arc<Self>, address: &str, failed: bool) -> bool {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = agents.get(address) {
            a.state.failed.store(failed, Ordering::Relaxed);
            a.state.request_sync();
            return true;
        }
        let (tx, rx) = watch::channel(1u64);
        let state = Arc::new(AgentState {
            address: address.to_owned(),
            failed: AtomicBool::new(failed),
            in_cluster: AtomicBool::new(false),
            reach: AtomicU8::new(REACH_UNKNOWN),
            resolved: ResolvedAddress::default(),
            expected_epoch: AtomicU64::new(0),
            nodes: Mutex::new(Vec::new()),
            failing_since: Mutex::new(None),
            probe_failures: AtomicU64::new(0),
            sync_requested: Mutex::new(Some(std::time::Instant::now())),
            sync: tx,
        });
        let tasks = [
            tokio::spawn(sync_task(self.clone(), state.clone(), rx).instrument(info_span!("sync", proxy = %address))),
            tokio::spawn(probe_task(self.clone(), state.clone()).instrument(info_span!("probe", proxy = %address))),
        ];
        agents.insert(address.to_owned(), Agent { state, tasks });
        false
    }

    /// True when, of the proxies outside the failed set whose state is known, at least two
    /// are known and none answers: then this coordinator is the likelier culprit.
    fn cut_off(&self, except: &str) -> bool {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let (mut known, mut reached) = (0, 0);
        for a in agents.values() {
            if a.state.address == except || a.state.failed.load(Ordering::Relaxed) {
                continue;
            }
            match a.state.reach.load(Ordering::Relaxed) {
                REACH_YES => {
                    known += 1;
                    reached += 1;
                }
                REACH_NO => known += 1,
                _ => {}
            }
        }
        known >= 2 && reached == 0
    }

    /// Proxies that are not in the failed set.
    fn live_proxies(&self) -> Vec<String> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.values().filter(|a| !a.state.failed.load(Ordering::Relaxed)).map(|a| a.state.address.clone()).collect()
    }

    fn trigger_sync(&self, address: &str) -> bool {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        match agents.get(address) {
            Some(a) => {
                a.state.request_sync();
                true
            }
            None => false,
        }
    }

    /// Brings the agent set in line with the registered proxies and syncs every one.
    async fn reconcile(self: &Arc<Self>) -> Result<(), tonic::Status> {
        let addresses = self
            .brokers
            .call("GetProxyAddresses", |mut c| async move { c.get_proxy_addresses(pb::Page::default()).await })
            .await?
            .addresses;
        let failed = self
            .brokers
            .call("GetFailedProxies", |mut c| async move { c.get_failed_proxies(pb::Empty {}).await })
            .await?
            .addresses;
        for a in &addresses {
            self.ensure_agent(a, failed.contains(a));
        }
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.retain(|a, _| addresses.contains(a));
        Ok(())
    }
}

enum Synced {
    Done,
    /// The broker no longer knows the proxy.
    Gone,
}

impl AgentState {
    /// Wakes the sync task; the push that follows is timed from the oldest request it serves.
    fn request_sync(&self) {
        self.sync_requested.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(std::time::Instant::now);
        self.sync.send_modify(|v| *v += 1);
    }
}

/// Whether a reply to SETREPL/SETCLUSTER counts as success (`OLD_EPOCH`: it has it already).
fn push_ok(reply: &Frame) -> Result<(), String> {
    match error_text(reply) {
        None => Ok(()),
        Some(e) if e.starts_with("OLD_EPOCH") => Ok(()),
        Some(e) => Err(e),
    }
}

async fn sync_once(co: &Coordinator, agent: &AgentState, conn: &mut Option<ProxyConn>) -> Result<Synced, String> {
    let address = agent.address.clone();
    let view = co
        .brokers
        .call("GetProxy", |mut c| {
            let proxy_address = address.clone();
            async move { c.get_proxy(pb::ProxyAddress { proxy_address }).await }
        })
        .await
        .map_err(|s| format!("broker: {}", s.message()))?;
    let Some(view) = view.proxy else { return Ok(Synced::Gone) };
    agent.expected_epoch.store(view.epoch, Ordering::Relaxed);
    agent.in_cluster.store(view.cluster_name.as_deref().is_some_and(|c| !c.is_empty()), Ordering::Relaxed);
    *agent.nodes.lock().unwrap_or_else(|e| e.into_inner()) = push::nodes(&view);
    let timing = co.timing();
    let timeout = timing.proxy_timeout;
    let compress = co.config.read().unwrap_or_else(|e| e.into_inner()).enable_compression;
    if conn.is_none() {
        *conn = Some(ProxyConn::connect_via(&agent.address, &agent.resolved, timeout, &timing.proxy_login).await?);
    }
    let Some(c) = conn.as_mut() else { return Err("no connection".into()) };
    push_ok(&c.call(&push::setrepl(&view), timeout).await?).map_err(|e| format!("SETREPL: {e}"))?;
    let setcluster = if compress { push::setcluster_compressed(&view) } else { push::setcluster(&view) };
    let mut reply = c.call(&setcluster, timeout).await?;
    if !compress && !view.replicas.is_empty() && error_text(&reply).is_some_and(|e| e.starts_with("Failed to parse")) {
        // A proxy from before replica reads does not know the REPLICA section (during a
        // rolling upgrade): give it the rest, which is all it can use.
        debug!(proxy = %agent.address, "the proxy refused the REPLICA section; pushing without it");
        let mut plain = view.clone();
        plain.replicas.clear();
        reply = c.call(&push::setcluster(&plain), timeout).await?;
    }
    push_ok(&reply).map_err(|e| format!("SETCLUSTER: {e}"))?;
    co.pushes.fetch_add(1, Ordering::Relaxed);
    if let Some(requested) = agent.sync_requested.lock().unwrap_or_else(|e| e.into_inner()).take() {
        co.sync_seconds.observe(requested.elapsed());
    }
    debug!(proxy = %agent.address, epoch = view.epoch, "metadata pushed");
    Ok(Synced::Done)
}

/// Pushes the proxy's metadata whenever asked; retries failures with backoff (100 ms → 2 s)
/// until it succeeds or a newer request arrives.
async fn sync_task(co: Arc<Coordinator>, agent: Arc<AgentState>, mut rx: watch::Receiver<u64>) {
    let mut conn: Option<ProxyConn> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        rx.borrow_and_update();
        match sync_once(&co, &agent, &mut conn).await {
            Ok(Synced::Done) => backoff = Duration::from_millis(100),
            Ok(Synced::Gone) => {
                co.reconcile_now.notify_one();
            }
            Err(e) => {
                conn = None;
                let level_warn = !agent.failed.load(Ordering::Relaxed);
                if level_warn {
                    warn!(proxy = %agent.address, "metadata sync failed (retrying in {backoff:?}): {e}");
                } else {
                    debug!(proxy = %agent.address, "metadata sync to a failed proxy failed: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = rx.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// One `UMCTL HEALTH` round trip, classified (`detect::Probe`). A healthy answer's stamp is
/// kept in `stamp` for the next probe, which hands it back to renew the lease (`lease.rs` in
/// the proxy crate says why the lease counts from the stamp).
async fn probe_once(
    agent: &AgentState,
    conn: &mut Option<ProxyConn>,
    args: &[String],
    t: &Timing,
    stamp: &mut Option<i64>,
) -> Probe {
    *stamp = None;
    // A kept connection that broke (not one that timed out) is tried once more on a new one:
    // a proxy closes idle connections when it hands its port to a new process (`takeover.rs`
    // in the proxy crate), and that is no failure of the proxy.
    let mut reused = conn.is_some();
    let reply = loop {
        if conn.is_none() {
            match ProxyConn::connect_via(&agent.address, &agent.resolved, t.probe_timeout, &t.proxy_login).await {
                Ok(c) => *conn = Some(c),
                Err(ConnectError::Local(e)) => return Probe::Local(e),
                Err(ConnectError::Proxy(e)) => return Probe::Down(format!("proxy: {e}")),
            }
        }
        let Some(c) = conn.as_mut() else { return Probe::Local("no connection".into()) };
        match c.call(args, t.probe_timeout).await {
            Err(e) if e != "timeout" && std::mem::take(&mut reused) => *conn = None,
            reply => break reply,
        }
    };
    match reply {
        Ok(reply) => match error_text(&reply) {
            Some(e) if e.starts_with("ERR_NODE_DOWN") => Probe::Down(format!("redis node down: {e}")),
            Some(e) if e.starts_with("STALE_EPOCH") => {
                // Its Redis nodes answered (checked before the epoch); the metadata push
                // lags: not a failure, and the sync is asked to catch up.
                agent.request_sync();
                Probe::Healthy
            }
            // Any other answer (even an error from a proxy without HEALTH) means the proxy
            // process is alive.
            _ => {
                if let moonraft_proxy::resp::Frame::Integer(s) = reply {
                    *stamp = Some(s);
                }
                Probe::Healthy
            }
        },
        Err(e) => {
            *conn = None;
            Probe::Down(format!("proxy: {e}"))
        }
    }
}

/// Probes the proxy with `UMCTL HEALTH` every `probe_interval_ms` (renewing its lease unless it
/// is failed) and acts on what `detect::Detector` concludes: report, hold, withdraw, recover.
async fn probe_task(co: Arc<Coordinator>, agent: Arc<AgentState>) {
    let mut conn: Option<ProxyConn> = None;
    let mut detector = Detector::default();
    let started = tokio::time::Instant::now();
    let mut last_hold_log: Option<tokio::time::Instant> = None;
    let mut stamp: Option<i64> = None;
    loop {
        let t = co.timing();
        let failed = agent.failed.load(Ordering::Relaxed);
        // No lease for a failed proxy: it must stay fenced until it is given slots again.
        let lease_ms = if failed { 0 } else { t.lease_ms };
        let mut args = vec![
            "UMCTL".to_owned(),
            "HEALTH".to_owned(),
            lease_ms.to_string(),
            agent.expected_epoch.load(Ordering::Relaxed).to_string(),
        ];
        if let Some(s) = stamp.filter(|_| lease_ms > 0) {
            args.extend(["STAMP".to_owned(), s.to_string()]);
        }
        args.extend(agent.nodes.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        let probe = probe_once(&agent, &mut conn, &args, &t, &mut stamp).await;
        match &probe {
            Probe::Healthy => {
                agent.reach.store(REACH_YES, Ordering::Relaxed);
                *agent.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Probe::Down(_) => {
                agent.reach.store(REACH_NO, Ordering::Relaxed);
                co.probe_failures.fetch_add(1, Ordering::Relaxed);
                agent.probe_failures.fetch_add(1, Ordering::Relaxed);
                agent
                    .failing_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(std::time::Instant::now);
            }
            Probe::Local(_) => {}
        }
        let ctx = Context {
            failed,
            in_cluster: agent.in_cluster.load(Ordering::Relaxed),
            cut_off: matches!(probe, Probe::Down(_)) && co.cut_off(&agent.address),
        };
        let was_failing = detector.failures() > 0;
        let now = started.elapsed();
        match detector.on_probe(&t.detector, now, &probe, ctx) {
            Verdict::Nothing => {}
            Verdict::Report(reason) => {
                if report_failure(&co, &agent, detector.failures(), &reason).await {
                    detector.reported(now);
                }
            }
            Verdict::Hold(why) => {
                co.held.fetch_add(1, Ordering::Relaxed);
                if last_hold_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                    last_hold_log = Some(tokio::time::Instant::now());
                    warn!(proxy = %agent.address, failures = detector.failures(), "not reporting a failure: {why}");
                }
            }
            Verdict::Withdraw => {
                if withdraw_failure(&co, &agent).await {
                    detector.withdrawn();
                }
            }
            Verdict::Recover => {
                if recover_proxy(&co, &agent).await {
                    detector.recovered();
                }
            }
        }
        match &probe {
            Probe::Healthy if was_failing => info!(proxy = %agent.address, "proxy answers again"),
            Probe::Down(reason) => {
                debug!(proxy = %agent.address, failures = detector.failures(), "probe failed: {reason}")
            }
            Probe::Local(reason) => {
                debug!(proxy = %agent.address, "probe could not be made, not counted against the proxy: {reason}")
            }
            _ => {}
        }
        let pause = match &probe {
            // A refused connection is certain; confirm it quickly instead of a full interval.
            Probe::Down(reason) if reason.contains("refused") => t.probe_interval.min(Duration::from_millis(50)),
            // A timeout has already waited; probe again at once.
            Probe::Down(reason) if reason.contains("timeout") => Duration::ZERO,
            _ => t.probe_interval,
        };
        tokio::time::sleep(pause).await;
    }
}

/// Reports (or refreshes the report of) a failure; true once the brokers have it.
async fn report_failure(co: &Coordinator, agent: &AgentState, failures: u32, reason: &str) -> bool {
    warn!(proxy = %agent.address, failures, "reporting failure: {reason}");
    let (proxy_address, reporter_id) = (agent.address.clone(), co.reporter_id());
    let report = co
        .brokers
        .call("ReportFailure", |mut c| {
            let req =
                pb::ReportFailureRequest { proxy_address: proxy_address.clone(), reporter_id: reporter_id.clone() };
            async move { c.report_failure(req).await }
        })
        .await;
    match report {
        Ok(_) => {
            co.reports.fetch_add(1, Ordering::Relaxed);
            co.failures_reported.notify_one();
            true
        }
        Err(s) => {
            warn!(proxy = %agent.address, "reporting the failure failed: {}", s.message());
            false
        }
    }
}

/// Withdraws this coordinator's report; true once the brokers no longer have it.
async fn withdraw_failure(co: &Coordinator, agent: &AgentState) -> bool {
    let (proxy_address, reporter_id) = (agent.address.clone(), co.reporter_id());
    let r = co
        .brokers
        .call("WithdrawFailure", |mut c| {
            let req =
                pb::ReportFailureRequest { proxy_address: proxy_address.clone(), reporter_id: reporter_id.clone() };
            async move { c.withdraw_failure(req).await }
        })
        .await;
    match r {
        Ok(reply) => {
            if reply.changed {
                co.withdrawals.fetch_add(1, Ordering::Relaxed);
                info!(proxy = %agent.address, "failure report withdrawn: the proxy answers again");
            }
            true
        }
        // An older broker without the call: the report expires by its TTL.
        Err(s) if s.code() == tonic::Code::Unimplemented => true,
        Err(s) => {
            warn!(proxy = %agent.address, "withdrawing the failure report failed: {}", s.message());
            false
        }
    }
}

/// Returns a failed proxy that answers healthily again to the pool; true once done (or found
/// not failed any more). A replaced proxy (in no cluster) has its Redis nodes emptied first
/// (`UMCTL RESETNODES`): its keys are older than its replacement's, and a cluster that gets it
/// later must not see them (a scale-out would serve them as the moved keys' values).
async fn recover_proxy(co: &Coordinator, agent: &AgentState) -> bool {
    if !agent.in_cluster.load(Ordering::Relaxed) {
        let timeout = Duration::from_secs(35);
        let reset = async {
            let t = co.timing();
            let mut c =
                ProxyConn::connect_via(&agent.address, &agent.resolved, t.proxy_timeout, &t.proxy_login).await?;
            let reply = c.call(&["UMCTL".to_owned(), "RESETNODES".to_owned()], timeout).await?;
            match error_text(&reply) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        };
        if let Err(e) = reset.await {
            warn!(proxy = %agent.address, "not recovering yet: emptying its Redis nodes failed: {e}");
            return false;
        }
    }
    let proxy_address = agent.address.clone();
    let r = co
        .brokers
        .call("RecoverProxy", |mut c| {
            let req = pb::ProxyAddress { proxy_address: proxy_address.clone() };
            async move { c.recover_proxy(req).await }
        })
        .await;
    match r {
        Ok(reply) => {
            agent.failed.store(false, Ordering::Relaxed);
            if reply.changed {
                co.recoveries.fetch_add(1, Ordering::Relaxed);
                let in_cluster = agent.in_cluster.load(Ordering::Relaxed);
                info!(
                    proxy = %agent.address,
                    "failed proxy answers healthily again: recovered ({})",
                    if in_cluster { "back in its cluster as a replica" } else { "back in the free pool; its old data is stale" }
                );
            }
            co.reconcile_now.notify_one();
            true
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => false,
        Err(s) => {
            warn!(proxy = %agent.address, "recovering the proxy failed: {}", s.message());
            false
        }
    }
}

/// Tells the brokers every `heartbeat_interval_ms` that this coordinator is alive.
async fn heartbeat_loop(co: Arc<Coordinator>) {
    let mut unimplemented_logged = false;
    loop {
        let reporter_id = co.reporter_id();
        let r = co
            .brokers
            .call("CoordinatorHeartbeat", |mut c| {
                let req = pb::ReporterId { reporter_id: reporter_id.clone() };
                async move { c.coordinator_heartbeat(req).await }
            })
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                if !unimplemented_logged {
                    unimplemented_logged = true;
                    warn!("the brokers do not take coordinator heartbeats (older version): their failure quorum is what they are configured with");
                }
            }
            Err(s) => debug!("heartbeat: {}", s.message()),
        }
        tokio::time::sleep(co.timing().heartbeat_interval).await;
    }
}

/// Fails over every proxy the brokers consider failed (quorum of reporters within the TTL).
async fn failure_handler(co: Arc<Coordinator>) {
    loop {
        tokio::select! {
            _ = co.failures_reported.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if co.timing().disable_failover {
            continue;
        }
        let failed =
            match co.brokers.call("GetFailures", |mut c| async move { c.get_failures(pb::Empty {}).await }).await {
                Ok(f) => f.addresses,
                Err(s) => {
                    warn!("reading failures: {}", s.message());
                    continue;
                }
            };
        let mut changed = false;
        for address in failed {
            let a = address.clone();
            let r = co
                .brokers
                .call("FailoverProxy", |mut c| {
                    let proxy_address = a.clone();
                    async move { c.failover_proxy(pb::ProxyAddress { proxy_address }).await }
                })
                .await;
            match r {
                Ok(reply) => {
                    changed = true;
                    if let Some(p) = reply.proxy {
                        co.failovers.fetch_add(1, Ordering::Relaxed);
                        if let Some(since) = co.failing_since(&address) {
                            co.failover_seconds.observe(since.elapsed().as_secs_f64());
                        }
                        info!(proxy = %address, replacement = %p.address, cluster = ?p.cluster_name, "failed over");
                    }
                }
                Err(s) => warn!(proxy = %address, "failover: {} (retrying next round)", s.message()),
            }
        }
        if changed {
            co.reconcile_now.notify_one();
        }
    }
}

async fn reconcile_loop(co: Arc<Coordinator>) {
    loop {
        if let Err(s) = co.reconcile().await {
            warn!("reconcile: {}", s.message());
        }
        let interval = co.timing().reconcile_interval;
        tokio::select! {
            _ = co.reconcile_now.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Follows the brokers' watch stream and syncs exactly the proxies each change names.
async fn watch_loop(co: Arc<Coordinator>) {
    loop {
        if let Some((address, channel)) = co.brokers.current_channel(0) {
            let mut client = co.brokers.client(channel);
            match client.watch(pb::WatchRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    info!(broker = %address, "watching metadata changes");
                    co.watch_reconnects.fetch_add(1, Ordering::Relaxed);
                    loop {
                        match stream.message().await {
                            Ok(Some(change)) => {
                                co.watch_events.fetch_add(1, Ordering::Relaxed);
                                if change.resync {
                                    co.reconcile_now.notify_one();
                                    continue;
                                }
                                for p in &change.proxies {
                                    co.trigger_sync(p);
                                }
                                // A proxy added, removed, failed or recovered: refresh the
                                // agent set and each agent's failed flag.
                                if !change.proxies.is_empty() {
                                    co.reconcile_now.notify_one();
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                debug!(broker = %address, "watch stream ended: {}", s.message());
                                break;
                            }
                        }
                    }
                }
                Err(s) => debug!(broker = %address, "watch: {}", s.message()),
            }
        }
        co.brokers.advance();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(mut config: CoordinatorConfig) -> anyhow::Result<()> {
    config.finish().map_err(anyhow::Error::msg)?;
    config.brokers =
        crate::broker_addr::resolve(&config.brokers, &config.broker_tls).await.map_err(anyhow::Error::msg)?;
    let brokers =
        Brokers::new(&config.brokers, config.token.as_ref(), config.broker_tls.clone()).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&config.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on address {}: {e}", config.address))?;
    let metrics = match config.metrics_address.as_str() {
        "" => None,
        a => Some(crate::metrics_http::bind(a).await?),
    };
    info!(address = %config.address, reporter_id = %config.reporter_id, brokers = ?config.brokers, "coordinator started");
    if config.admin_password.is_none() {
        warn!(
            "no admin_password: anyone who reaches {} can reconfigure this coordinator (CONFIG SET brokers)",
            config.address
        );
    }

    let co = Arc::new(Coordinator {
        config: RwLock::new(config),
        brokers,
        agents: Mutex::new(HashMap::new()),
        failures_reported: Notify::new(),
        reconcile_now: Notify::new(),
        pushes: AtomicU64::new(0),
        reports: AtomicU64::new(0),
        held: AtomicU64::new(0),
        withdrawals: AtomicU64::new(0),
        failovers: AtomicU64::new(0),
        recoveries: AtomicU64::new(0),
        failover_seconds: prometheus_client::metrics::histogram::Histogram::new([
            0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
        ]),
        probe_failures: AtomicU64::new(0),
        sync_seconds: Default::default(),
        migrations_committed: AtomicU64::new(0),
        watch_events: AtomicU64::new(0),
        watch_reconnects: AtomicU64::new(0),
    });
    if let Some(listener) = metrics {
        let registry = metrics::registry(&co);
        crate::metrics_http::spawn(listener, Arc::new(move || moonraft_proxy::metrics::render(&registry)));
    }
    tokio::spawn(watch_loop(co.clone()));
    tokio::spawn(reconcile_loop(co.clone()));
    tokio::spawn(failure_handler(co.clone()));
    tokio::spawn(heartbeat_loop(co.clone()));
    tokio::spawn(migration::migration_loop(co.clone()));
    admin::serve(co, listener).await;
    Ok(())
}
