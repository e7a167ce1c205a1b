//! moonraft's server proxy: the Redis Cluster data plane in front of plain Redis nodes.

pub mod backend;
pub mod background;
pub mod clients;
pub mod cluster;
pub mod command;
pub mod config;
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
pub mod tls;
pub mod umctl;

pub use config::ProxyConfig;
