//! Coordinator configuration (undermoon's keys plus moonraft's timing keys; `docs/failover.md` explains them),
//! set key by key from strings like the proxy's and the broker's.

use moonraft_proxy::config::{boolean, check_address};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Admin port (Redis protocol: `CONFIG GET/SET`, `INFO`, `UMCTL DEBUG FUTURE`).
    pub address: String,
    /// Where `GET /metrics` (Prometheus) is served; empty: not served.
    pub metrics_address: String,
    /// The brokers' gRPC addresses (`grpc_address`); any member answers, the list is tried in
    /// turn when one is down.
    pub brokers: Vec<String>,
    pub reporter_id: String,
    pub thread_number: usize,
    /// Connect and per-command timeout towards proxies (metadata pushes, migration polls).
    pub proxy_timeout_ms: u64,
    /// How often each proxy is probed (`UMCTL HEALTH`).
    pub probe_interval_ms: u64,
    /// How long one probe may take before it counts as failed.
    pub probe_timeout_ms: u64,
    /// Consecutive failed probes before a proxy is reported (and see `failure_window_ms`).
    pub failure_probes: u32,
    /// A proxy is reported only after no healthy answer for this long: a blip, a restart or a
    /// pause shorter than this is not a failure.
    pub failure_window_ms: u64,
    /// A proxy that has not answered healthily since this coordinator started watching it (just
    /// registered, still starting, its Redis still loading) is not reported for this long.
    pub startup_grace_ms: u64,
    /// A failed proxy that answers healthily for this long returns to the free pool.
    pub recovery_ms: u64,
    /// Errors on this coordinator's side (its name lookups, its sockets) are not held against
    /// a proxy until they have lasted this long without a healthy answer.
    pub local_error_grace_ms: u64,
    /// How often the coordinator tells the brokers it is alive (the default failure quorum is a
    /// majority of the live coordinators).
    pub heartbeat_interval_ms: u64,
    /// The write lease granted with each successful probe (0: no lease). Must be shorter than
    /// `failure_window_ms` so a failed-over proxy has stopped serving before its slots move.
    pub proxy_lease_ms: u64,
    /// Full reconcile of every proxy's metadata (the watch stream does the fast path).
    pub reconcile_interval_ms: u64,
    pub disable_failover: bool,
    pub enable_compression: bool,
    /// Bearer token for the brokers (their `admin_token`: coordinators write).
    pub token: Option<crate::auth::Secret>,
    /// `AUTH admin <password>` on every connection to a proxy (their `admin_password`).
    pub proxy_admin_password: Option<crate::auth::Secret>,
    /// Needed (`AUTH <password>`) on the admin port for anything but `PING`.
    pub admin_password: Option<crate::auth::Secret>,
    /// The CA the brokers' certificates are verified against (`tls_ca`); unset: plain TCP.
    pub broker_tls: crate::tls::ClientTls,
    /// The CA the proxies' certificates are verified against (`proxy_tls_ca`), for proxies that
    /// serve TLS; unset: plain TCP.
    pub proxy_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub log: String,
    /// `text` (the default) or `json`: one JSON object per log line, for log collectors.
    pub log_format: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            address: "127.0.0.1:6699".into(),
            metrics_address: String::new(),
            brokers: vec!["127.0.0.1:7800".into()],
            reporter_id: String::new(),
            thread_number: 2,
            proxy_timeout_ms: 1000,
            probe_interval_ms: 200,
            probe_timeout_ms: 500,
            failure_probes: 2,
            failure_window_ms: 1000,
            startup_grace_ms: 30_000,
            recovery_ms: 2000,
            local_error_grace_ms: 30_000,
            heartbeat_interval_ms: 1000,
            proxy_lease_ms: 750,
            reconcile_interval_ms: 2000,
            disable_failover: false,
            enable_compression: false,
            token: None,
            proxy_admin_password: None,
            admin_password: None,
            broker_tls: crate::tls::ClientTls::default(),
            proxy_tls: None,
            log: "info".into(),
            log_format: "text".into(),
        }
    }
}

pub const COORDINATOR_KEYS: &[&str] = &[
    "address",
    "metrics_address",
    "broker_address",
    "reporter_id",
    "thread_number",
    "proxy_timeout",
    "proxy_timeout_ms",
    "probe_interval_ms",
    "probe_timeout_ms",
    "failure_probes",
    "failure_window_ms",
    "startup_grace_ms",
    "recovery_ms",
    "local_error_grace_ms",
    "heartbeat_interval_ms",
    "proxy_lease_ms",
    "reconcile_interval_ms",
    "disable_failover",
    "enable_compression",
    "token",
    "token_file",
    "proxy_admin_password",
    "proxy_admin_password_file",
    "admin_password",
    "admin_password_file",
    "tls_ca",
    "proxy_tls_ca",
    "log",
    "log_format",
];

fn num(v: &str) -> Result<u64, String> {
    v.trim().parse().map_err(|_| format!("expected a non-negative integer, got {v:?}"))
}

fn positive(v: &str) -> Result<u64, String> {
    match num(v)? {
        0 => Err(format!("expected a positive integer, got {v:?}")),
        n => Ok(n),
    }
}

/// `a:1,b:2`, or a TOML array `["a:1", "b:2"]`.
pub fn parse_addresses(v: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = v
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err("expected at least one broker address".into());
    }
    for a in &list {
        check_address(a)?;
    }
    Ok(list)
}

impl CoordinatorConfig {
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "address" => {
                check_address(value)?;
                self.address = value.to_owned();
            }
            "metrics_address" => {
                if !value.is_empty() {
                    check_address(value)?;
                }
                self.metrics_address = value.to_owned();
            }
            "broker_address" => self.brokers = parse_addresses(value)?,
            "reporter_id" => self.reporter_id = value.to_owned(),
            "thread_number" => self.thread_number = positive(value)? as usize,
            // The spec's key, in seconds.
            "proxy_timeout" => self.proxy_timeout_ms = positive(value)? * 1000,
            "proxy_timeout_ms" => self.proxy_timeout_ms = positive(value)?,
            "probe_interval_ms" => self.probe_interval_ms = positive(value)?,
            "probe_timeout_ms" => self.probe_timeout_ms = positive(value)?,
            "failure_probes" => self.failure_probes = positive(value)?.min(1000) as u32,
            "failure_window_ms" => self.failure_window_ms = positive(value)?,
            "startup_grace_ms" => self.startup_grace_ms = num(value)?,
            "recovery_ms" => self.recovery_ms = num(value)?,
            "local_error_grace_ms" => self.local_error_grace_ms = num(value)?,
            "heartbeat_interval_ms" => self.heartbeat_interval_ms = positive(value)?,
            "proxy_lease_ms" => self.proxy_lease_ms = num(value)?,
            "reconcile_interval_ms" => self.reconcile_interval_ms = positive(value)?,
            "disable_failover" => self.disable_failover = boolean(value)?,
            "enable_compression" => self.enable_compression = boolean(value)?,
            "token" => self.token = crate::auth::Secret::new(value),
            "token_file" => self.token = crate::auth::Secret::new(&crate::auth::read_secret_file(value)?),
            "proxy_admin_password" => self.proxy_admin_password = crate::auth::Secret::new(value),
            "proxy_admin_password_file" => {
                self.proxy_admin_password = crate::auth::Secret::new(&crate::auth::read_secret_file(value)?)
            }
            "admin_password" => self.admin_password = crate::auth::Secret::new(value),
            "admin_password_file" => {
                self.admin_password = crate::auth::Secret::new(&crate::auth::read_secret_file(value)?)
            }
            "tls_ca" => {
                self.broker_tls = crate::tls::ClientTls::load((!value.is_empty()).then(|| std::path::Path::new(value)))?
            }
            "proxy_tls_ca" => self.proxy_tls = crate::auth::proxy_tls(value)?,
            "log" => self.log = value.to_owned(),
            "log_format" => match value {
                "text" | "json" => self.log_format = value.to_owned(),
                _ => return Err(format!("expected text or json, got {value:?}")),
            },
            other => return Err(format!("unknown key {other}")),
        }
        Ok(())
    }

    /// Checks the keys together and fills defaults that depend on others.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.reporter_id.is_empty() {
            self.reporter_id = self.address.clone();
        }
        // A proxy is reported no sooner than `failure_window_ms` after its last healthy answer,
        // which is the last time it could have renewed its lease: the lease must have run out
        // by then.
        if self.proxy_lease_ms >= self.failure_window_ms {
            return Err(format!(
                "proxy_lease_ms ({}) must be shorter than failure_window_ms ({}): a proxy must lose its lease before it can be failed over",
                self.proxy_lease_ms, self.failure_window_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists_and_the_lease_rule() {
        let mut c = CoordinatorConfig::default();
        c.set("broker_address", r#"["127.0.0.1:7800", "127.0.0.1:7900"]"#).unwrap();
        assert_eq!(c.brokers, vec!["127.0.0.1:7800", "127.0.0.1:7900"]);
        c.set("broker_address", "a:1,b:2").unwrap();
        assert_eq!(c.brokers.len(), 2);
        assert!(c.set("broker_address", "").is_err());
        assert!(c.set("broker_address", "nohost").is_err());
        c.finish().unwrap();
        assert_eq!(c.reporter_id, c.address);
        c.set("proxy_lease_ms", "5000").unwrap();
        assert!(c.finish().unwrap_err().contains("shorter than failure_window_ms"));
        c.set("failure_window_ms", "6000").unwrap();
        c.finish().unwrap();
        c.set("proxy_timeout", "3").unwrap();
        assert_eq!(c.proxy_timeout_ms, 3000);
        assert!(c.set("nope", "1").is_err());
    }
}
