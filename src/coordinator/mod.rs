//! `moonraft coordinator`: keeps proxies in sync with the broker group, probes them (and the
//! Redis nodes behind them), reports failures and triggers failovers
//! (`failover-and-coordinator.md`, with the improvements of issue 4).
//!
//! Per proxy there is an *agent*: a sync task (fetch the proxy's view, push `UMCTL SETREPL`
//! and `SETCLUSTER`, retry with backoff) and a probe task (`UMCTL HEALTH` every
//! `probe_interval_ms`, which also renews the proxy's write lease). Changes reach the agents
//! through the brokers' watch stream within milliseconds of a commit; a slow full reconcile
//! repairs anything missed. No agent waits for another, so one hung proxy stalls nobody.

pub mod admin;
pub mod clients;
pub mod config;
pub mod migration;
pub mod push;

use clients::{error_text, Brokers, ProxyConn};
use config::CoordinatorConfig;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proxy::resp::Frame;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The timing keys that `CONFIG SET` may change at runtime.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub proxy_timeout: Duration,
    pub probe_interval: Duration,
    pub failure_probes: u32,
    pub lease_ms: u64,
    pub reconcile_interval: Duration,
    pub disable_failover: bool,
}

impl Timing {
    fn of(c: &CoordinatorConfig) -> Timing {
        Timing {
            proxy_timeout: Duration::from_millis(c.proxy_timeout_ms),
            probe_interval: Duration::from_millis(c.probe_interval_ms),
            failure_probes: c.failure_probes,
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
    pub reports: AtomicU64,
    pub failovers: AtomicU64,
}

/// What the coordinator knows about one proxy, shared by its two tasks.
struct AgentState {
    address: String,
    /// In the broker's failed set: still synced (that fences it), no longer probed.
    failed: AtomicBool,
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
            a.state.sync.send_modify(|v| *v += 1);
            return true;
        }
        let (tx, rx) = watch::channel(1u64);
        let state = Arc::new(AgentState {
            address: address.to_owned(),
            failed: AtomicBool::new(failed),
            expected_epoch: AtomicU64::new(0),
            nodes: Mutex::new(Vec::new()),
            sync: tx,
        });
        let tasks = [
            tokio::spawn(sync_task(self.clone(), state.clone(), rx)),
            tokio::spawn(probe_task(self.clone(), state.clone())),
        ];
        agents.insert(address.to_owned(), Agent { state, tasks });
        false
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
                a.state.sync.send_modify(|v| *v += 1);
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
    *agent.nodes.lock().unwrap_or_else(|e| e.into_inner()) = push::nodes(&view);
    let timeout = co.timing().proxy_timeout;
    let compress = co.config.read().unwrap_or_else(|e| e.into_inner()).enable_compression;
    if conn.is_none() {
        *conn = Some(ProxyConn::connect(&agent.address, timeout).await?);
    }
    let Some(c) = conn.as_mut() else { return Err("no connection".into()) };
    push_ok(&c.call(&push::setrepl(&view), timeout).await?).map_err(|e| format!("SETREPL: {e}"))?;
    let setcluster = if compress { push::setcluster_compressed(&view) } else { push::setcluster(&view) };
    push_ok(&c.call(&setcluster, timeout).await?).map_err(|e| format!("SETCLUSTER: {e}"))?;
    co.pushes.fetch_add(1, Ordering::Relaxed);
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

/// Probes the proxy with `UMCTL HEALTH`; after `failure_probes` failures in a row reports it
/// (again at most once a second while it stays down) and wakes the failure handler.
async fn probe_task(co: Arc<Coordinator>, agent: Arc<AgentState>) {
    let mut conn: Option<ProxyConn> = None;
    let mut failures = 0u32;
    let mut last_report: Option<tokio::time::Instant> = None;
    loop {
        let t = co.timing();
        if agent.failed.load(Ordering::Relaxed) {
            conn = None;
            failures = 0;
            tokio::time::sleep(t.probe_interval).await;
            continue;
        }
        let mut args = vec![
            "UMCTL".to_owned(),
            "HEALTH".to_owned(),
            t.lease_ms.to_string(),
            agent.expected_epoch.load(Ordering::Relaxed).to_string(),
        ];
        args.extend(agent.nodes.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        let result = async {
            if conn.is_none() {
                conn = Some(ProxyConn::connect(&agent.address, t.proxy_timeout).await?);
            }
            match conn.as_mut() {
                Some(c) => c.call(&args, t.proxy_timeout).await,
                None => Err("no connection".into()),
            }
        }
        .await;
        let failure = match result {
            Ok(reply) => match error_text(&reply) {
                Some(e) if e.starts_with("ERR_NODE_DOWN") => Some(format!("redis node down: {e}")),
                Some(e) if e.starts_with("STALE_EPOCH") => {
                    agent.sync.send_modify(|v| *v += 1);
                    None
                }
                // Any other answer (even an error from a proxy without HEALTH) means the
                // proxy process is alive.
                _ => None,
            },
            Err(e) => {
                conn = None;
                Some(format!("proxy: {e}"))
            }
        };
        let Some(reason) = failure else {
            if failures > 0 {
                info!(proxy = %agent.address, "proxy answers again");
            }
            failures = 0;
            tokio::time::sleep(t.probe_interval).await;
            continue;
        };
        failures += 1;
        debug!(proxy = %agent.address, failures, "probe failed: {reason}");
        if failures >= t.failure_probes && last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_report = Some(tokio::time::Instant::now());
            warn!(proxy = %agent.address, failures, "reporting failure: {reason}");
            let (proxy_address, reporter_id) = (agent.address.clone(), co.reporter_id());
            let report = co
                .brokers
                .call("ReportFailure", |mut c| {
                    let req = pb::ReportFailureRequest {
                        proxy_address: proxy_address.clone(),
                        reporter_id: reporter_id.clone(),
                    };
                    async move { c.report_failure(req).await }
                })
                .await;
            match report {
                Ok(_) => {
                    co.reports.fetch_add(1, Ordering::Relaxed);
                    co.failures_reported.notify_one();
                }
                Err(s) => warn!(proxy = %agent.address, "reporting the failure failed: {}", s.message()),
            }
        }
        // A refused connection is certain; confirm it quickly instead of a full interval.
        let pause =
            if reason.contains("refused") { t.probe_interval.min(Duration::from_millis(50)) } else { t.probe_interval };
        tokio::time::sleep(pause).await;
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
            let mut client = BrokerApiClient::new(channel);
            match client.watch(pb::WatchRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    info!(broker = %address, "watching metadata changes");
                    loop {
                        match stream.message().await {
                            Ok(Some(change)) => {
                                if change.resync {
                                    co.reconcile_now.notify_one();
                                    continue;
                                }
                                let mut unknown = false;
                                for p in &change.proxies {
                                    unknown |= !co.trigger_sync(p);
                                }
                                if unknown {
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
    let brokers = Brokers::new(&config.brokers).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&config.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on address {}: {e}", config.address))?;
    info!(address = %config.address, reporter_id = %config.reporter_id, brokers = ?config.brokers, "coordinator started");

    let co = Arc::new(Coordinator {
        config: RwLock::new(config),
        brokers,
        agents: Mutex::new(HashMap::new()),
        failures_reported: Notify::new(),
        reconcile_now: Notify::new(),
        pushes: AtomicU64::new(0),
        reports: AtomicU64::new(0),
        failovers: AtomicU64::new(0),
    });
    tokio::spawn(watch_loop(co.clone()));
    tokio::spawn(reconcile_loop(co.clone()));
    tokio::spawn(failure_handler(co.clone()));
    tokio::spawn(migration::migration_loop(co.clone()));
    admin::serve(co, listener).await;
    Ok(())
}
