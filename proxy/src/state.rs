//! Shared proxy state: the current routing snapshot with its backend pools, the replication
//! controller, epochs, counters and the slow log.

use crate::backend::{auth_command, BackendRegistry, BackendSettings, NodePool};
use crate::cluster::{ClusterTable, SetCluster};
use crate::config::ProxyConfig;
use crate::replication::{Replication, SetRepl};
use crate::slowlog::SlowLog;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::info;

/// One routing snapshot plus connections to its local nodes. Requests in flight keep the
/// snapshot they started with; a new SETCLUSTER swaps in a new one atomically.
pub struct Installed {
    pub table: ClusterTable,
    pools_resp2: Vec<Arc<NodePool>>,
    pools_resp3: OnceLock<Vec<Arc<NodePool>>>,
    /// Per slot, which of `replica_nodes` (index + 1; 0: none) may serve reads of it to
    /// clients that sent `READONLY`. Empty when this proxy holds no such replica.
    replica_slots: Vec<u8>,
    replica_nodes: Vec<String>,
}

impl Installed {
    fn new(table: ClusterTable, registry: &BackendRegistry, announce: &str) -> Installed {
        let pools_resp2 = table.nodes.iter().map(|n| registry.pool(n, 2)).collect();
        let mut replica_slots = Vec::new();
        let mut replica_nodes: Vec<String> = Vec::new();
        for entry in table.meta.replicas.iter().filter(|r| r.proxy == announce) {
            if replica_nodes.len() >= u8::MAX as usize {
                break;
            }
            replica_nodes.push(entry.node.clone());
            replica_slots.resize(crate::slot::SLOT_COUNT, 0);
            for r in &entry.ranges {
                for slot in r.start..=r.end {
                    replica_slots[slot as usize] = replica_nodes.len() as u8;
                }
            }
        }
        Installed { table, pools_resp2, pools_resp3: OnceLock::new(), replica_slots, replica_nodes }
    }

    /// The local replica node that may serve reads of `slot` (replica reads after `READONLY`).
    pub fn replica_node(&self, slot: u16) -> Option<&str> {
        let i = *self.replica_slots.get(slot as usize)?;
        self.replica_nodes.get((i as usize).checked_sub(1)?).map(String::as_str)
    }

    /// The pool for local node `node` speaking protocol `proto` (RESP3 pools are opened on
    /// first use by a RESP3 client).
    pub fn pool(&self, node: usize, proto: u8, registry: &BackendRegistry) -> Option<Arc<NodePool>> {
        if proto >= 3 {
            let pools = self.pools_resp3.get_or_init(|| self.table.nodes.iter().map(|n| registry.pool(n, 3)).collect());
            pools.get(node).cloned()
        } else {
            self.pools_resp2.get(node).cloned()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    OldEpoch,
    NotMyMeta,
}

pub struct ProxyState {
    pub config: ProxyConfig,
    pub announce: String,
    pub installed: ArcSwap<Installed>,
    /// Notified after every new routing table is installed.
    pub table_changed: tokio::sync::Notify,
    /// Serialises metadata updates (check epoch, build, swap).
    meta_lock: Mutex<()>,
    pub replication: Mutex<Replication>,
    pub registry: BackendRegistry,
    pub slowlog: SlowLog,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub next_session_id: AtomicU64,
    pub connected_clients: AtomicUsize,
    pub total_commands: AtomicU64,
    pub total_connections: AtomicU64,
    /// The client connections, for `CLIENT LIST`/`KILL`.
    pub clients: crate::clients::Clients,
    /// The write lease granted by coordinators.
    pub lease: crate::lease::Lease,
    /// Handing the port over to a successor process, or having taken it over (`handover.rs`).
    pub handover: crate::handover::Handover,
    /// Pools kept for the nodes `UMCTL HEALTH` pings (replicas have no other pool); replaced
    /// by each probe's node list, so it stays as small as that list.
    pub health_pools: Mutex<std::collections::HashMap<String, Arc<crate::backend::NodePool>>>,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::ProxyMetrics,
    pub started: std::time::Instant,
    /// `redis_version` of the Redis nodes behind this proxy, learned from the first local node
    /// after each routing table is installed (`None` until one answered).
    pub redis_version: Mutex<Option<String>>,
}

impl ProxyState {
    pub fn new(config: ProxyConfig) -> Arc<ProxyState> {
        let settings = BackendSettings {
            timeout: Duration::from_millis(config.backend_timeout),
            max_bulk_len: config.proto_max_bulk_len,
            node_auth: config.backend_password.as_deref().map(|p| auth_command(config.backend_user.as_deref(), p)),
            // Proxies of one deployment share their passwords: the admin one opens everything.
            peer_auth: match (&config.admin_password, &config.password) {
                (Some(admin), _) => Some(auth_command(Some("admin"), admin)),
                (None, Some(data)) => Some(auth_command(None, data)),
                (None, None) => None,
            },
            peer_tls: config.tls_peers().unwrap_or_else(|e| {
                tracing::error!("TLS towards other proxies is off: {e}");
                None
            }),
            ..BackendSettings::default()
        };
        let measured = !config.metrics_address.is_empty();
        let mut registry = BackendRegistry::new(settings, config.backend_conn_num);
        if measured {
            registry = registry.with_stats();
        }
        let installed = Installed::new(ClusterTable::empty(), &registry, "");
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let metrics = crate::metrics::ProxyMetrics::new(measured);
        Arc::new(ProxyState {
            announce: config.announce().to_owned(),
            slowlog: SlowLog::new(config.slowlog_len, config.slowlog_log_slower_than, config.slowlog_sample_rate),
            config,
            installed: ArcSwap::from_pointee(installed),
            table_changed: tokio::sync::Notify::new(),
            meta_lock: Mutex::new(()),
            replication: Mutex::new(Replication::default()),
            registry,
            shutdown,
            next_session_id: AtomicU64::new(1),
            connected_clients: AtomicUsize::new(0),
            total_commands: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            clients: crate::clients::Clients::default(),
            metrics,
            started: std::time::Instant::now(),
            redis_version: Mutex::new(None),
            lease: crate::lease::Lease::default(),
            handover: crate::handover::Handover::default(),
            health_pools: Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.installed.load().table.epoch
    }

    /// Applies `UMCTL SETCLUSTER` (`docs/protocol.md#setcluster`). The target check replaces undermoon's
    /// announce-host check (nodes may live on other hosts, see decisions.md).
    pub fn set_cluster(&self, cmd: SetCluster) -> Result<(), MetaError> {
        if let Some(target) = &cmd.flags.target {
            if target != &self.announce {
                return Err(MetaError::NotMyMeta);
            }
        }
        let _guard = self.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.installed.load_full();
        if cmd.epoch <= current.table.epoch && !cmd.flags.force {
            return Err(MetaError::OldEpoch);
        }
        let table = ClusterTable::build(cmd.epoch, cmd.meta, Some(&current.table));
        info!(
            cluster = %table.meta.name,
            epoch = table.epoch,
            nodes = table.nodes.len(),
            peers = table.peers.len(),
            tasks = table.tasks.len(),
            "cluster metadata installed"
        );
        self.installed.store(Arc::new(Installed::new(table, &self.registry, &self.announce)));
        self.table_changed.notify_waiters();
        Ok(())
    }

    /// Applies `UMCTL SETREPL` (`docs/protocol.md#setrepl`).
    pub fn set_repl(&self, cmd: SetRepl) -> Result<(), MetaError> {
        if let Some(target) = &cmd.flags.target {
            if target != &self.announce {
                return Err(MetaError::NotMyMeta);
            }
        }
        let mut repl = self.replication.lock().unwrap_or_else(|e| e.into_inner());
        if cmd.epoch <= repl.epoch && !cmd.flags.force {
            return Err(MetaError::OldEpoch);
        }
        let interval = Duration::from_millis(self.config.replication_interval);
        let login = crate::replication::NodeLogin::of(&self.config, self.registry.settings().node_auth.clone());
        repl.apply(cmd, interval, login);
        Ok(())
    }
}

/// The Redis version this proxy reports (HELLO, INFO): the nodes' own once learned; before any
/// node has answered, the oldest Redis the proxy supports.
pub fn redis_version(state: &ProxyState) -> String {
    state.redis_version.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "7.0.0".to_owned())
}

/// Asks the first local node for its `redis_version` (in the background; a node that does not
/// answer leaves the previous value).
pub fn learn_redis_version(state: &Arc<ProxyState>) {
    let Some(node) = state.installed.load().table.nodes.first().cloned() else { return };
    let state = state.clone();
    tokio::spawn(async move {
        let pool = state.registry.pool(&node, 2);
        let req = crate::resp::Request::from_strs(&["INFO", "server"]);
        let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), pool.call(&req)).await else { return };
        let text = String::from_utf8_lossy(&reply);
        if let Some(v) = text.lines().find_map(|l| l.trim_end().strip_prefix("redis_version:")) {
            *state.redis_version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.to_owned());
        }
    });
}
