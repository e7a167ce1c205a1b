//! moonraft's server proxy: the Redis Cluster data plane in front of plain Redis nodes.

pub mod backend;
pub mod background;
pub mod clients;
pub mod cluster;
pub mod command;
pub mod config;
pub mod exposition;
pub mod handover;
pub mod latency;
pub mod lease;
pub mod metrics;
pub mod migrate;
pub mod replication;
pub mod resp;
pub mod server;
mod session;
pub mod slot;
pub mod slowlog;
pub mod state;
pub mod takeover;
pub mod tls;
pub mod umctl;

pub use config::ProxyConfig;

static BUILD_VERSION: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Sets the version `INFO` reports (the binary's build stamp, `<package>+<commit>`); the first
/// call wins.
pub fn set_build_version(version: &'static str) {
    let _ = BUILD_VERSION.set(version);
}

/// The build stamp the binary set, else this crate's package version.
pub fn build_version() -> &'static str {
    BUILD_VERSION.get().copied().unwrap_or(env!("CARGO_PKG_VERSION"))
}
