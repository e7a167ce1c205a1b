//! Broker configuration (README, "`moonraft broker`"), set key by key from strings like the proxy's.

use moonraft_meta::store::ClusterConfig;
use moonraft_proxy::config::boolean;
use moonraft_raft::BrokerNode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub id: u64,
    pub raft_address: String,
    pub http_address: String,
}

impl Member {
    pub fn node(&self) -> BrokerNode {
        BrokerNode { raft_address: self.raft_address.clone(), http_address: self.http_address.clone() }
    }
}

/// Calls whose longest duration on the leader differs (see `BrokerConfig::forward_wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedCall {
    AutoScale,
    Membership,
    Other,
}

impl ForwardedCall {
    /// By `/api/v3` path.
    pub fn of_path(path: &str) -> ForwardedCall {
        if path.starts_with("/api/v3/clusters/migrations/auto/") {
            ForwardedCall::AutoScale
        } else if path.starts_with("/api/v3/raft/") {
            ForwardedCall::Membership
        } else {
            ForwardedCall::Other
        }
    }

    /// By gRPC method name.
    pub fn of_method(method: &str) -> ForwardedCall {
        match method {
            "auto_scale" => ForwardedCall::AutoScale,
            "add_learner" | "change_membership" => ForwardedCall::Membership,
            _ => ForwardedCall::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Linearizable,
    Stale,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub address: String,
    pub advertise_http_address: String,
    pub grpc_address: String,
    pub advertise_grpc_address: String,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    pub initial_members: Vec<Member>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    pub proposal_timeout_ms: u64,
    pub forward_timeout_ms: u64,
    pub read_mode: ReadMode,
    /// TEST ONLY, breaks safety on purpose: every member answers reads from its own copy,
    /// without asking the leader and without the linearizable-read round. Exists so the
    /// fault-injection harness (`jepsen/`) can show that it catches stale reads.
    pub unsafe_local_reads: bool,
    pub failure_purge_interval: u64,
    pub failure_ttl: u64,
    /// Distinct reporters needed to fail a proxy over; 0 (the default): a majority of the
    /// coordinators alive (heartbeat younger than `coordinator_ttl_ms`), at least 1.
    pub failure_quorum: u64,
    /// A coordinator counts as alive this long after its latest heartbeat.
    pub coordinator_ttl_ms: u64,
    pub migration_limit: u64,
    pub enable_ordered_proxy: bool,
    /// Default config of new clusters, as the string fields of `PATCH /clusters/config`.
    pub cluster_defaults: BTreeMap<String, String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long `auto` waits for proxies to reach the new epoch (undermoon waited forever:
    /// `docs/compatibility.md#bounded-auto-wait`).
    pub auto_sync_timeout_ms: u64,
    /// Mixed into the group id derived at initialisation; give groups that are re-created on
    /// the same addresses distinct names so that leftover data dirs are recognised as foreign.
    pub group_name: String,
    /// Tokens of `/api/v3` and the public gRPC services, and the secret members present to
    /// each other (`crate::auth`). All unset: open, as undermoon's broker was.
    pub credentials: crate::auth::Credentials,
    /// How to reach proxies when asking them anything (`UMCTL GETEPOCH` while recovering the
    /// epoch): `proxy_admin_password` (`AUTH admin …`) and `proxy_tls_ca`.
    pub proxy_login: crate::auth::ProxyLogin,
    /// `tls_cert` + `tls_key`: both listeners serve TLS only.
    pub tls_identity: Option<crate::tls::ServerIdentity>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// `tls_ca`: what this member verifies the other members against (required with TLS).
    pub client_tls: crate::tls::ClientTls,
    pub log: String,
    /// `text` (the default) or `json`: one JSON object per log line, for log collectors.
    pub log_format: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            address: "127.0.0.1:7799".into(),
            advertise_http_address: String::new(),
            grpc_address: "127.0.0.1:7800".into(),
            advertise_grpc_address: String::new(),
            data_dir: PathBuf::from("./broker-data"),
            bootstrap: false,
            initial_members: Vec::new(),
            // Faster than the spec's 200/1000/2000 so that losing the leader costs < 2 s of
            // writes (measured by scripts/bench-broker.py); still 5 heartbeats per timeout.
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            proposal_timeout_ms: 5000,
            forward_timeout_ms: 5000,
            read_mode: ReadMode::Linearizable,
            unsafe_local_reads: false,
            failure_purge_interval: 10,
            failure_ttl: 60,
            failure_quorum: 0,
            coordinator_ttl_ms: 5000,
            migration_limit: 1,
            enable_ordered_proxy: false,
            cluster_defaults: BTreeMap::new(),
            max_body_bytes: 16 * 1024 * 1024,
            auto_sync_timeout_ms: 60_000,
            group_name: String::new(),
            credentials: crate::auth::Credentials::default(),
            proxy_login: crate::auth::ProxyLogin::default(),
            tls_identity: None,
            tls_cert: None,
            tls_key: None,
            client_tls: crate::tls::ClientTls::default(),
            log: "info".into(),
            log_format: "text".into(),
        }
    }
}

pub const BROKER_KEYS: &[&str] = &[
    "node_id",
    "address",
    "advertise_http_address",
    "grpc_address",
    "advertise_grpc_address",
    "data_dir",
    "bootstrap",
    "initial_members",
    "heartbeat_interval_ms",
    "election_timeout_min_ms",
    "election_timeout_max_ms",
    "snapshot_logs_since_last",
    "max_in_snapshot_log_to_keep",
    "proposal_timeout_ms",
    "forward_timeout_ms",
    "read_mode",
    "unsafe_local_reads",
    "failure_purge_interval",
    "failure_ttl",
    "failure_quorum",
    "coordinator_ttl_ms",
    "migration_limit",
    "enable_ordered_proxy",
    "compression_strategy",
    "migration_max_migration_time",
    "migration_max_blocking_time",
    "migration_scan_interval",
    "migration_scan_count",
    "max_body_bytes",
    "auto_sync_timeout_ms",
    "group_name",
    "admin_token",
    "admin_token_file",
    "read_token",
    "read_token_file",
    "cluster_secret",
    "cluster_secret_file",
    "proxy_admin_password",
    "proxy_tls_ca",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "log",
    "log_format",
];

/// mem-broker keys that no longer apply: accepted with a warning.
pub const IGNORED_KEYS: &[&str] = &[
    "replica_addresses",
    "sync_meta_interval",
    "storage_type",
    "recover_from_meta_file",
    "meta_filename",
    "auto_update_meta_file",
    "update_meta_file_interval",
    "storage_name",
    "storage_password",
    "http_storage_address",
    "refresh_interval",
    "debug",
];

fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("expected a non-negative integer, got {v:?}"))
}

fn positive(v: &str) -> Result<u64, String> {
    match num::<u64>(v)? {
        0 => Err(format!("expected a positive integer, got {v:?}")),
        n => Ok(n),
    }
}

/// A token: printable ASCII without spaces (it travels in an HTTP header); empty = unset.
fn token(v: &str) -> Result<Option<crate::auth::Secret>, String> {
    let secret = crate::auth::Secret::new(v);
    if let Some(s) = &secret {
        if !s.expose().bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token must be printable ASCII without spaces".into());
        }
    }
    Ok(secret)
}

/// `initial_members` as JSON, as a TOML array of tables, or as `id=raft_addr/http_addr,…`.
pub fn parse_members(v: &str) -> Result<Vec<Member>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(m) = serde_json::from_str::<Vec<Member>>(v) {
        return Ok(m);
    }
    #[derive(Deserialize)]
    struct Wrap {
        v: Vec<Member>,
    }
    if let Ok(w) = toml::from_str::<Wrap>(&format!("v = {v}")) {
        return Ok(w.v);
    }
    v.split(',')
        .map(|item| {
            let (id, addrs) = item.trim().split_once('=').ok_or("expected id=raft_address/http_address")?;
            let (raft, http) = addrs.split_once('/').ok_or("expected id=raft_address/http_address")?;
            Ok(Member { id: positive(id)?, raft_address: raft.to_owned(), http_address: http.to_owned() })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e: String| {
            format!("{e} (initial_members: JSON, TOML array of {{id, raft_address, http_address}}, or id=raft/http,…)")
        })
}

impl BrokerConfig {
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "node_id" => self.node_id = positive(value)?,
            "address" => {
                moonraft_proxy::config::check_address(value)?;
                self.address = value.to_owned();
            }
            "advertise_http_address" => self.advertise_http_address = value.to_owned(),
            "grpc_address" => {
                moonraft_proxy::config::check_address(value)?;
                self.grpc_address = value.to_owned();
            }
            "advertise_grpc_address" => self.advertise_grpc_address = value.to_owned(),
            "data_dir" => self.data_dir = PathBuf::from(value),
            "bootstrap" => self.bootstrap = boolean(value)?,
            "initial_members" => self.initial_members = parse_members(value)?,
            "heartbeat_interval_ms" => self.heartbeat_interval_ms = positive(value)?,
            "election_timeout_min_ms" => self.election_timeout_min_ms = positive(value)?,
            "election_timeout_max_ms" => self.election_timeout_max_ms = positive(value)?,
            "snapshot_logs_since_last" => self.snapshot_logs_since_last = positive(value)?,
            "max_in_snapshot_log_to_keep" => self.max_in_snapshot_log_to_keep = num(value)?,
            "proposal_timeout_ms" => self.proposal_timeout_ms = positive(value)?,
            "forward_timeout_ms" => self.forward_timeout_ms = positive(value)?,
            "unsafe_local_reads" => self.unsafe_local_reads = boolean(value)?,
            "read_mode" => {
                self.read_mode = match value {
                    "linearizable" => ReadMode::Linearizable,
                    "stale" => ReadMode::Stale,
                    _ => return Err(format!("expected linearizable or stale, got {value:?}")),
                }
            }
            "failure_purge_interval" => self.failure_purge_interval = positive(value)?,
            "failure_ttl" => self.failure_ttl = positive(value)?,
            "failure_quorum" => self.failure_quorum = num(value)?,
            "coordinator_ttl_ms" => self.coordinator_ttl_ms = positive(value)?,
            "migration_limit" => self.migration_limit = num(value)?,
            "enable_ordered_proxy" => self.enable_ordered_proxy = boolean(value)?,
            "compression_strategy"
            | "migration_max_migration_time"
            | "migration_max_blocking_time"
            | "migration_scan_interval"
            | "migration_scan_count" => {
                let mut probe = self.cluster_defaults.clone();
                probe.insert(key.to_owned(), value.to_owned());
                cluster_config(&probe)?;
                self.cluster_defaults = probe;
            }
            "max_body_bytes" => self.max_body_bytes = positive(value)? as usize,
            "auto_sync_timeout_ms" => self.auto_sync_timeout_ms = positive(value)?,
            "group_name" => self.group_name = value.to_owned(),
            "admin_token" => self.credentials.admin = token(value)?,
            "admin_token_file" => self.credentials.admin = token(&crate::auth::read_secret_file(value)?)?,
            "read_token" => self.credentials.read = token(value)?,
            "read_token_file" => self.credentials.read = token(&crate::auth::read_secret_file(value)?)?,
            "cluster_secret" => self.credentials.group = token(value)?,
            "cluster_secret_file" => self.credentials.group = token(&crate::auth::read_secret_file(value)?)?,
            "proxy_admin_password" => self.proxy_login.admin_password = crate::auth::Secret::new(value),
            "proxy_tls_ca" => self.proxy_login.tls = crate::auth::proxy_tls(value)?,
            "tls_cert" => self.tls_cert = (!value.is_empty()).then(|| PathBuf::from(value)),
            "tls_key" => self.tls_key = (!value.is_empty()).then(|| PathBuf::from(value)),
            "tls_ca" => {
                let ca = (!value.is_empty()).then(|| std::path::Path::new(value));
                self.client_tls = crate::tls::ClientTls::load(ca)?;
            }
            "log" => self.log = value.to_owned(),
            "log_format" => match value {
                "text" | "json" => self.log_format = value.to_owned(),
                _ => return Err(format!("expected text or json, got {value:?}")),
            },
            // Accepted (start-up reports them once logging is set up).
            k if IGNORED_KEYS.contains(&k) => {}
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// Checks across keys; fills the advertise addresses.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id: required (a positive integer unique in the group)".into());
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err("election_timeout_min_ms must be smaller than election_timeout_max_ms".into());
        }
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return Err("heartbeat_interval_ms must be smaller than election_timeout_min_ms".into());
        }
        let c = &self.credentials;
        if c.read.is_some() && c.admin.is_none() {
            return Err("read_token needs admin_token too (otherwise nobody could write)".into());
        }
        if c.read.is_some() && c.read == c.admin {
            return Err("read_token and admin_token must differ".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                self.tls_identity = Some(crate::tls::ServerIdentity::load(cert, key)?);
                if !self.client_tls.enabled() {
                    return Err("tls_cert needs tls_ca too: members verify each other's certificates".into());
                }
            }
            (None, None) => {}
            _ => return Err("tls_cert and tls_key go together".into()),
        }
        if self.advertise_http_address.is_empty() {
            self.advertise_http_address = self.address.clone();
        }
        if self.advertise_grpc_address.is_empty() {
            self.advertise_grpc_address = self.grpc_address.clone();
        }
        if self.bootstrap && !self.initial_members.iter().any(|m| m.id == self.node_id) {
            return Err(format!("initial_members: must include this member (node_id {})", self.node_id));
        }
        Ok(())
    }

    /// How long a follower waits for the leader's answer to a forwarded call: at least
    /// `forward_timeout_ms`, and longer than the call itself may take on the leader (`auto`
    /// waits for proxies, membership changes for the new members), so that a slow call is
    /// never answered `RETRY` while the leader carries on with it — the client's retry would
    /// then meet `NODE_NUMBER_CHANGING` or apply twice.
    pub fn forward_wait(&self, call: ForwardedCall) -> std::time::Duration {
        let proposal = self.proposal_timeout_ms;
        let longest = match call {
            ForwardedCall::AutoScale => 2 * proposal + self.auto_sync_timeout_ms,
            ForwardedCall::Membership => 4 * proposal,
            // Reads and writes: one proposal (or read round); `recover_epoch` asks proxies
            // first (1 s).
            ForwardedCall::Other => proposal + 1000,
        };
        std::time::Duration::from_millis(self.forward_timeout_ms.max(longest + 2000))
    }

    /// The rule `GET /failures` applies to the coordinators' reports.
    pub fn failure_rule(&self) -> moonraft_meta::store::FailureRule {
        moonraft_meta::store::FailureRule {
            ttl_secs: self.failure_ttl,
            quorum: self.failure_quorum,
            coordinator_ttl_ms: self.coordinator_ttl_ms,
        }
    }

    /// How long a silent coordinator stays on record: as long as a report of its could still
    /// count, so that it is known to be dead rather than unknown.
    pub fn forget_coordinator_after_ms(&self) -> u64 {
        self.failure_ttl.saturating_mul(1000).saturating_add(self.coordinator_ttl_ms)
    }

    pub fn default_cluster_config(&self) -> ClusterConfig {
        cluster_config(&self.cluster_defaults).unwrap_or_default()
    }
}

/// Applies string fields to the default cluster config with the same rules as
/// `PATCH /clusters/config`.
fn cluster_config(fields: &BTreeMap<String, String>) -> Result<ClusterConfig, String> {
    // Reuse the model's validation on a scratch cluster.
    let scratch = moonraft_meta::store::ClusterStore {
        name: "defaults".into(),
        epoch: 0,
        config: ClusterConfig::default(),
        chunks: Vec::new(),
    };
    let mut store = moonraft_meta::Store::default();
    store.clusters.insert(scratch.name.clone(), scratch);
    store.change_config("defaults", fields).map_err(|e| match e {
        moonraft_meta::MetaError::InvalidConfig { key, value, message } => format!("{key}={value:?}: {message}"),
        other => other.to_string(),
    })?;
    Ok(store.clusters.get("defaults").map(|c| c.config.clone()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_three_forms() {
        let want = vec![
            Member { id: 1, raft_address: "a:7800".into(), http_address: "a:7799".into() },
            Member { id: 2, raft_address: "b:7800".into(), http_address: "b:7799".into() },
        ];
        let json = r#"[{"id":1,"raft_address":"a:7800","http_address":"a:7799"},{"id":2,"raft_address":"b:7800","http_address":"b:7799"}]"#;
        assert_eq!(parse_members(json).unwrap(), want);
        let toml = r#"[{ id = 1, raft_address = "a:7800", http_address = "a:7799" }, { id = 2, raft_address = "b:7800", http_address = "b:7799" }]"#;
        assert_eq!(parse_members(toml).unwrap(), want);
        assert_eq!(parse_members("1=a:7800/a:7799, 2=b:7800/b:7799").unwrap(), want);
        assert!(parse_members("x").is_err());
    }

    #[test]
    fn a_forwarded_call_waits_longer_than_it_can_take_on_the_leader() {
        let c = BrokerConfig::default();
        let s = |call| c.forward_wait(call).as_millis() as u64;
        assert!(s(ForwardedCall::AutoScale) > c.auto_sync_timeout_ms + 2 * c.proposal_timeout_ms);
        assert!(s(ForwardedCall::Membership) > 4 * c.proposal_timeout_ms);
        assert!(s(ForwardedCall::Other) > c.proposal_timeout_ms);
        assert_eq!(ForwardedCall::of_path("/api/v3/clusters/migrations/auto/a/8"), ForwardedCall::AutoScale);
        assert_eq!(ForwardedCall::of_path("/api/v3/raft/learners"), ForwardedCall::Membership);
        assert_eq!(ForwardedCall::of_method("change_membership"), ForwardedCall::Membership);
        assert_eq!(ForwardedCall::of_method("get_cluster"), ForwardedCall::Other);
    }

    #[test]
    fn validation() {
        let mut c = BrokerConfig::default();
        assert!(c.finish().is_err(), "node_id is required");
        c.set("node_id", "1").unwrap();
        c.set("migration_scan_count", "0").unwrap_err();
        c.set("compression_strategy", "set_get_only").unwrap();
        assert_eq!(
            c.default_cluster_config().compression_strategy,
            moonraft_meta::store::CompressionStrategy::SetGetOnly
        );
        c.set("bootstrap", "true").unwrap();
        assert!(c.finish().is_err(), "bootstrap needs this member in initial_members");
        c.set("initial_members", "1=127.0.0.1:7800/127.0.0.1:7799").unwrap();
        c.finish().unwrap();
        assert_eq!(c.advertise_http_address, "127.0.0.1:7799");
        c.set("sync_meta_interval", "10").unwrap();
        assert!(c.set("nope", "1").is_err());
    }
}
