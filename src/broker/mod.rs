//! `moonraft broker`: one member of the Raft group that holds all metadata and serves
//! `/api/v3` (HTTP) and the internal gRPC service.

pub mod api;
pub mod config;
pub mod exposition;
pub mod grpc;
pub mod grpc_api;
pub mod grpc_layer;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod service;

use anyhow::{Context, Result};
use config::{BrokerConfig, Member};
use moonraft_meta::command::Command;
use moonraft_proto::broker::broker_api_server::BrokerApiServer;
use moonraft_proto::broker::raft_admin_server::RaftAdminServer;
use moonraft_proto::raft::raft_internal_server::RaftInternalServer;
use moonraft_raft::network::GrpcNetwork;
use moonraft_raft::{storage, BrokerNode, Raft};
use service::{ApiError, Broker};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

fn raft_config(c: &BrokerConfig) -> Result<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: "moonraft".into(),
        heartbeat_interval: c.heartbeat_interval_ms,
        election_timeout_min: c.election_timeout_min_ms,
        election_timeout_max: c.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: c.max_in_snapshot_log_to_keep,
        ..Default::default()
    };
    cfg.validate().context("invalid raft timing settings")
}

/// One command to a proxy, bounded by `timeout`; `None` if it cannot be asked. With
/// `admin_password` the connection first runs `AUTH admin <password>`.
pub async fn proxy_command(
    address: &str,
    args: &[&str],
    timeout: Duration,
    login: &crate::auth::ProxyLogin,
) -> Option<moonraft_proxy::resp::Frame> {
    use moonraft_proxy::resp::{Frame, Request};
    use tokio::io::AsyncWriteExt;
    let ask = async {
        let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut stream = moonraft_proxy::tls::Stream::over(tcp, address, login.tls.as_ref()).await.ok()?;
        let mut buf = bytes::BytesMut::new();
        if let Some(p) = &login.admin_password {
            stream.write_all(&Request::from_strs(&["AUTH", "admin", p.expose()]).raw).await.ok()?;
            let reply = moonraft_proxy::backend::read_reply(&mut stream, &mut buf, 1 << 16).await.ok()?;
            if let Ok(Some((Frame::Error(e), _))) = Frame::parse(&reply) {
                tracing::warn!(proxy = %address, "AUTH admin refused: {e} (check proxy_admin_password)");
                return None;
            }
        }
        stream.write_all(&Request::from_strs(args).raw).await.ok()?;
        let reply = moonraft_proxy::backend::read_reply(&mut stream, &mut buf, 16 << 20).await.ok()?;
        Frame::parse(&reply).ok().flatten().map(|(f, _)| f)
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// `UMCTL GETEPOCH` on a proxy, bounded by `timeout`; `None` if it cannot be asked.
pub async fn proxy_epoch(address: &str, timeout: Duration, login: &crate::auth::ProxyLogin) -> Option<u64> {
    match proxy_command(address, &["UMCTL", "GETEPOCH"], timeout, login).await {
        Some(moonraft_proxy::resp::Frame::Integer(e)) if e >= 0 => Some(e as u64),
        _ => None,
    }
}

/// Initialises the group with `members` (idempotent for the same member set).
pub async fn initialize(broker: &Broker, members: &[Member]) -> Result<(), ApiError> {
    let wanted: BTreeMap<u64, BrokerNode> = members.iter().map(|m| (m.id, m.node())).collect();
    if broker.is_initialized() {
        let current: BTreeMap<u64, BrokerNode> = broker.members().into_iter().map(|(id, n, _)| (id, n)).collect();
        return if current == wanted { Ok(()) } else { Err(ApiError::AlreadyInitialized) };
    }
    let list: Vec<(u64, String, String)> =
        members.iter().map(|m| (m.id, m.raft_address.clone(), m.http_address.clone())).collect();
    let group = storage::GroupIdentity::derive(&list, &broker.config.group_name);
    broker.identity.adopt(&group).map_err(|e| ApiError::InvalidMembership(e.to_string()))?;
    match broker.raft.initialize(wanted).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ApiError::InvalidMembership(e.to_string())),
    }
}

/// Leader-only housekeeping: purge expired failure reports (reads never mutate) and record the
/// ordered-proxy mode in a fresh group.
async fn leader_duties(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(broker.config.failure_purge_interval));
    loop {
        tick.tick().await;
        if !broker.is_leader() {
            continue;
        }
        let ttl = broker.config.failure_ttl;
        let now = Broker::now();
        let (expired, fresh) = broker.sm.read(|d| {
            let expired = d.store.failures.values().flat_map(|r| r.values()).any(|t| now.saturating_sub(*t) >= ttl);
            let fresh = d.store.global_epoch == 0 && d.store.all_proxies.is_empty();
            (expired, fresh)
        });
        if expired {
            if let Err(e) = broker.write(Command::PurgeFailures { now, failure_ttl: ttl }).await {
                warn!("purging failure reports: {e}");
            }
        }
        if fresh && broker.config.enable_ordered_proxy && !broker.sm.read(|d| d.store.enable_ordered_proxy) {
            let _ = broker.write(Command::Initialize { enable_ordered_proxy: true }).await;
        }
    }
}

pub async fn run(mut config: BrokerConfig) -> Result<()> {
    config.finish().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let (log, sm) = storage::open_for(&config.data_dir, config.node_id)?;
    let identity = log.group_identity();
    let group_secret = config.credentials.group_secret().map(|s| s.expose().to_owned());
    let client_tls = config.client_tls.clone();
    let endpoint: moonraft_raft::network::EndpointFactory =
        Arc::new(move |address: &str| client_tls.endpoint(address, Duration::from_secs(1)));
    let network = GrpcNetwork { identity: identity.clone(), secret: group_secret.map(Into::into), endpoint };
    let raft = Raft::new(config.node_id, Arc::new(raft_config(&config)?), network, log, sm.clone())
        .await
        .context("cannot start raft")?;
    let http_listener = tokio::net::TcpListener::bind(&config.address)
        .await
        .with_context(|| format!("cannot listen on address {}", config.address))?;
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc_address)
        .await
        .with_context(|| format!("cannot listen on grpc_address {}", config.grpc_address))?;
    let broker = Arc::new(Broker {
        config,
        raft,
        sm,
        scale_lock: tokio::sync::Mutex::new(()),
        forward_channels: std::sync::Mutex::new(std::collections::HashMap::new()),
        identity,
        metrics: metrics::BrokerMetrics::default(),
    });
    let router = http::router(broker.clone());
    // No Nagle on Raft and forwarding traffic either.
    let grpc_incoming = tonic::transport::server::TcpIncoming::from_listener(grpc_listener, true, None)
        .map_err(|e| anyhow::anyhow!("grpc listener: {e}"))?;
    let credentials = Arc::new(broker.config.credentials.clone());
    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(id) = &broker.config.tls_identity {
        grpc_server = grpc_server.tls_config(id.grpc()).context("grpc tls")?;
    }
    let grpc = grpc_server
        .add_service(grpc_layer::Metered::new(
            crate::auth::Guarded::new(
                RaftInternalServer::new(grpc::RaftService { broker: broker.clone(), router: router.clone() })
                    .max_decoding_message_size(256 * 1024 * 1024)
                    .max_encoding_message_size(256 * 1024 * 1024),
                credentials.clone(),
            ),
            broker.clone(),
        ))
        .add_service(grpc_layer::Metered::new(
            crate::auth::Guarded::new(
                BrokerApiServer::new(grpc_api::GrpcApi { broker: broker.clone() })
                    .max_decoding_message_size(broker.config.max_body_bytes)
                    .max_encoding_message_size(256 * 1024 * 1024),
                credentials.clone(),
            ),
            broker.clone(),
        ))
        .add_service(grpc_layer::Metered::new(
            crate::auth::Guarded::new(
                RaftAdminServer::new(grpc_api::GrpcApi { broker: broker.clone() }),
                credentials.clone(),
            ),
            broker.clone(),
        ))
        .serve_with_incoming(grpc_incoming);
    info!(
        node_id = broker.node_id(),
        http = %broker.config.address,
        grpc = %broker.config.grpc_address,
        data_dir = %broker.config.data_dir.display(),
        "broker started"
    );
    let c = &broker.config.credentials;
    if !c.api_protected() {
        let raft = if c.group_secret().is_none() { " and send it Raft traffic" } else { "" };
        warn!(
            "no admin_token: anyone who reaches {} or {} can read and change all metadata{raft} (set admin_token to close it)",
            broker.config.address, broker.config.grpc_address
        );
    }
    if broker.config.unsafe_local_reads {
        warn!("unsafe_local_reads is on: reads are answered from this member's own copy and may be stale (a test setting, never for production)");
    }
    if broker.config.bootstrap {
        let members = broker.config.initial_members.clone();
        if let Err(e) = initialize(&broker, &members).await {
            warn!("bootstrap: {e} (the group was already initialised with other members)");
        }
    }
    tokio::spawn(leader_duties(broker.clone()));
    let http = async {
        match &broker.config.tls_identity {
            Some(id) => {
                let config = id.rustls().map_err(anyhow::Error::msg)?;
                crate::tls::serve_https(http_listener, router, config).await.context("https server failed")
            }
            // No Nagle: small JSON replies must not wait for a delayed ACK.
            None => axum::serve(http_listener, router).tcp_nodelay(true).await.context("http server failed"),
        }
    };
    tokio::select! {
        r = http => r?,
        r = grpc => r.context("grpc server failed")?,
    }
    let _ = broker.raft.shutdown().await;
    Ok(())
}
