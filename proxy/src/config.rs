//! Proxy configuration (undermoon's keys plus ours; README, "`moonraft proxy`"). Values are set by key from strings so the binary can
//! layer a TOML file, `MOONRAFT_<KEY>` variables and `--<key-with-dashes>` flags over the
//! defaults; an invalid value is reported with its key.

use std::net::ToSocketAddrs;

/// `Debug` leaves the passwords out (see the impl below).
#[derive(Clone, PartialEq)]
pub struct ProxyConfig {
    pub address: String,
    pub announce_address: String,
    /// Where `GET /metrics` (Prometheus) is served; empty: not served.
    pub metrics_address: String,
    pub slowlog_len: usize,
    pub slowlog_log_slower_than: i64,
    pub slowlog_sample_rate: u64,
    pub thread_number: usize,
    pub backend_conn_num: usize,
    /// Accepted for compatibility; backend writes are always coalesced (see `backend.rs`).
    pub backend_batch_strategy: String,
    pub backend_flush_size: usize,
    pub backend_low_flush_interval: u64,
    pub backend_high_flush_interval: u64,
    /// Milliseconds; 0 disables the idle timeout.
    pub session_timeout: u64,
    /// Milliseconds.
    pub backend_timeout: u64,
    pub password: Option<String>,
    /// `AUTH admin <admin_password>` unlocks `UMCTL`, the inter-proxy commands (`UMSYNC`,
    /// `UMREAD`) and `CONFIG SET`; unset: they are open (undermoon compatibility).
    pub admin_password: Option<String>,
    /// Sent as `AUTH [backend_user] <backend_password>` on every connection to the Redis nodes
    /// (their `requirepass` or ACL user), and set as `masterauth` for replication.
    pub backend_password: Option<String>,
    pub backend_user: Option<String>,
    /// PEM files: with `tls_cert` + `tls_key` the client port speaks TLS only; `tls_ca` (needed
    /// with them) verifies other proxies, which then speak TLS too (see `tls.rs`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ca: Option<String>,
    pub active_redirection: bool,
    pub max_redirections: u64,
    pub default_redirection_address: String,
    pub cluster_nodes_version: String,
    /// Largest bulk string accepted from a client or a node.
    pub proto_max_bulk_len: usize,
    /// Largest whole request accepted from a client.
    pub client_query_buffer_limit: usize,
    /// Re-assert replication roles (REPLICAOF) this often, milliseconds.
    pub replication_interval: u64,
    /// Honour the write lease coordinators grant with `UMCTL HEALTH` (see `lease.rs`).
    pub coordinator_lease: bool,
    /// Nice value (0–19) of the thread that copies keys during a migration (see
    /// `background.rs`): 19 lets the copy use only CPU that clients leave idle, 0 runs it with
    /// the same priority as client traffic.
    pub migration_copy_nice: i32,
    /// A Unix socket through which a new proxy process takes over this one's port and state
    /// (a restart that refuses no connection, see `handover.rs`); `None`: restarts close the port.
    pub handover_socket: Option<String>,
    /// Milliseconds a starting proxy waits for the running one to hand over (it refuses while
    /// it is migrating slots).
    pub handover_timeout: u64,
    /// Milliseconds a proxy that handed over keeps serving its open connections; those still
    /// busy then are closed.
    pub drain_timeout: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
    /// `text` (the default) or `json`: one JSON object per log line, for log collectors.
    pub log_format: String,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| if p.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("ProxyConfig")
            .field("address", &self.address)
            .field("announce_address", &self.announce_address)
            .field("password", &hidden(&self.password))
            .field("admin_password", &hidden(&self.admin_password))
            .field("backend_password", &hidden(&self.backend_password))
            .field("backend_user", &self.backend_user)
            .field("tls_cert", &self.tls_cert)
            .finish_non_exhaustive()
    }
}

/// Equality of a presented password with a configured one, in time independent of where they
/// differ (the length is not secret).
pub fn password_matches(configured: &str, presented: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    configured.as_bytes().ct_eq(presented).into()
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            address: "127.0.0.1:5299".into(),
            announce_address: String::new(),
            metrics_address: String::new(),
            slowlog_len: 1024,
            slowlog_log_slower_than: 50000,
            slowlog_sample_rate: 1000,
            thread_number: 2,
            backend_conn_num: 2,
            backend_batch_strategy: "disabled".into(),
            backend_flush_size: 1024,
            backend_low_flush_interval: 200_000,
            backend_high_flush_interval: 600_000,
            session_timeout: 0,
            backend_timeout: 3000,
            password: None,
            admin_password: None,
            backend_password: None,
            backend_user: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            active_redirection: false,
            max_redirections: 0,
            default_redirection_address: String::new(),
            cluster_nodes_version: "v2".into(),
            proto_max_bulk_len: crate::resp::DEFAULT_MAX_BULK_LEN,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            replication_interval: 5000,
            coordinator_lease: true,
            migration_copy_nice: 19,
            handover_socket: None,
            handover_timeout: 60_000,
            drain_timeout: 10_000,
            log: "info".into(),
            log_format: "text".into(),
        }
    }
}

/// Every key the proxy accepts, in documentation order.
pub const PROXY_KEYS: &[&str] = &[
    "address",
    "announce_address",
    "metrics_address",
    "slowlog_len",
    "slowlog_log_slower_than",
    "slowlog_sample_rate",
    "thread_number",
    "backend_conn_num",
    "backend_batch_strategy",
    "backend_flush_size",
    "backend_low_flush_interval",
    "backend_high_flush_interval",
    "session_timeout",
    "backend_timeout",
    "password",
    "admin_password",
    "backend_password",
    "backend_user",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "active_redirection",
    "max_redirections",
    "default_redirection_address",
    "cluster_nodes_version",
    "proto_max_bulk_len",
    "client_query_buffer_limit",
    "replication_interval",
    "coordinator_lease",
    "migration_copy_nice",
    "handover_socket",
    "handover_timeout",
    "drain_timeout",
    "log",
    "log_format",
];

fn positive<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(x) if x > T::default() => Ok(x),
        _ => Err(format!("expected a positive integer, got {v:?}")),
    }
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim().parse::<T>().map_err(|_| format!("expected an integer, got {v:?}"))
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// `true/false`, `1/0`, `yes/no`, `on/off` (case-insensitive).
pub fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

/// `host:port` with exactly one colon and a valid port (IPv6 literals are not supported, as in
/// undermoon).
pub fn check_address(v: &str) -> Result<(), String> {
    let (host, port) = v.split_once(':').ok_or_else(|| format!("expected host:port, got {v:?}"))?;
    if host.is_empty() || port.contains(':') || port.parse::<u16>().is_err() {
        return Err(format!("expected host:port, got {v:?}"));
    }
    Ok(())
}

impl ProxyConfig {
    /// Sets one key from its string form. Errors describe the expected value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "address" => {
                check_address(value)?;
                self.address = value.to_owned();
            }
            "announce_address" => {
                if !value.is_empty() {
                    check_address(value)?;
                }
                self.announce_address = value.to_owned();
            }
            "metrics_address" => {
                if !value.is_empty() {
                    check_address(value)?;
                }
                self.metrics_address = value.to_owned();
            }
            "slowlog_len" => self.slowlog_len = positive(value)?,
            "slowlog_log_slower_than" => self.slowlog_log_slower_than = number(value)?,
            "slowlog_sample_rate" => self.slowlog_sample_rate = number(value)?,
            "thread_number" => self.thread_number = positive(value)?,
            "backend_conn_num" => self.backend_conn_num = positive(value)?,
            "backend_batch_strategy" => match value {
                "disabled" | "fixed" | "dynamic" => self.backend_batch_strategy = value.to_owned(),
                _ => return Err(format!("expected disabled, fixed or dynamic, got {value:?}")),
            },
            "backend_flush_size" => self.backend_flush_size = positive(value)?,
            "backend_low_flush_interval" => self.backend_low_flush_interval = positive(value)?,
            "backend_high_flush_interval" => self.backend_high_flush_interval = positive(value)?,
            "session_timeout" => self.session_timeout = number(value)?,
            "backend_timeout" => self.backend_timeout = positive(value)?,
            "password" => self.password = non_empty(value),
            "admin_password" => self.admin_password = non_empty(value),
            "backend_password" => self.backend_password = non_empty(value),
            "backend_user" => self.backend_user = non_empty(value),
            "tls_cert" => self.tls_cert = non_empty(value),
            "tls_key" => self.tls_key = non_empty(value),
            "tls_ca" => self.tls_ca = non_empty(value),
            "active_redirection" => self.active_redirection = boolean(value)?,
            "max_redirections" => self.max_redirections = number(value)?,
            "default_redirection_address" => {
                if !value.is_empty() {
                    check_address(value)?;
                }
                self.default_redirection_address = value.to_owned();
            }
            "cluster_nodes_version" => match value {
                "v1" | "v2" => self.cluster_nodes_version = value.to_owned(),
                _ => return Err(format!("expected v1 or v2, got {value:?}")),
            },
            "proto_max_bulk_len" => self.proto_max_bulk_len = positive(value)?,
            "client_query_buffer_limit" => self.client_query_buffer_limit = positive(value)?,
            "replication_interval" => self.replication_interval = positive(value)?,
            "coordinator_lease" => self.coordinator_lease = boolean(value)?,
            "migration_copy_nice" => match number::<i32>(value)? {
                n @ 0..=19 => self.migration_copy_nice = n,
                n => return Err(format!("expected a nice value from 0 to 19, got {n}")),
            },
            "handover_socket" => self.handover_socket = non_empty(value),
            "handover_timeout" => self.handover_timeout = number(value)?,
            "drain_timeout" => self.drain_timeout = number(value)?,
            "log" => self.log = value.to_owned(),
            "log_format" => match value {
                "text" | "json" => self.log_format = value.to_owned(),
                _ => return Err(format!("expected text or json, got {value:?}")),
            },
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// The announce address (defaults to the listen address).
    pub fn announce(&self) -> &str {
        if self.announce_address.is_empty() {
            &self.address
        } else {
            &self.announce_address
        }
    }

    /// Checks that do not belong to a single key.
    pub fn validate(&self) -> Result<(), String> {
        if self.address.to_socket_addrs().map(|mut a| a.next().is_none()).unwrap_or(true) {
            return Err(format!("address: cannot resolve {:?}", self.address));
        }
        self.tls_server()?;
        self.tls_peers()?;
        Ok(())
    }

    /// The TLS configuration of the client port, if `tls_cert`/`tls_key` are set.
    pub fn tls_server(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                if self.tls_ca.is_none() {
                    return Err("tls_cert needs tls_ca too: proxies verify each other when they pull keys".into());
                }
                let (cert, key) = (crate::tls::read_pem(cert, "tls_cert")?, crate::tls::read_pem(key, "tls_key")?);
                crate::tls::server_config(&cert, &key, &[]).map(Some)
            }
            _ => Err("tls_cert and tls_key go together".into()),
        }
    }

    /// The TLS configuration towards other proxies: when this proxy serves TLS, so do they.
    pub fn tls_peers(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        match (&self.tls_cert, &self.tls_ca) {
            (Some(_), Some(ca)) => crate::tls::client_config(&crate::tls::read_pem(ca, "tls_ca")?).map(Some),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_reject() {
        let mut c = ProxyConfig::default();
        for key in PROXY_KEYS {
            // every documented key is known to `set`
            assert!(!c.set(key, "").unwrap_err_or_ok().contains("unknown key"), "{key}");
        }
        let mut c = ProxyConfig::default();
        c.set("address", "127.0.0.1:6001").unwrap();
        assert_eq!(c.announce(), "127.0.0.1:6001");
        assert!(c.set("address", "nope").is_err());
        assert!(c.set("address", "::1:80").is_err());
        assert!(c.set("thread_number", "0").is_err());
        assert!(c.set("backend_timeout", "-5").is_err());
        assert!(c.set("cluster_nodes_version", "v3").is_err());
        c.set("password", "secret").unwrap();
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.migration_copy_nice, 19);
        c.set("migration_copy_nice", "0").unwrap();
        assert_eq!(c.migration_copy_nice, 0);
        assert!(c.set("migration_copy_nice", "20").is_err());
        assert!(c.set("migration_copy_nice", "-1").is_err());
    }

    trait ErrOrOk {
        fn unwrap_err_or_ok(self) -> String;
    }
    impl ErrOrOk for Result<(), String> {
        fn unwrap_err_or_ok(self) -> String {
            self.err().unwrap_or_default()
        }
    }
}
