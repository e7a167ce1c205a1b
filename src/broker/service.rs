//! The broker's service layer: proposes commands through Raft and reads the replicated store.
//! HTTP (and later gRPC) handlers are thin adapters over it.

use super::config::{BrokerConfig, ReadMode};
use moonraft_meta::command::{Command, CommandOutput};
use moonraft_meta::{MetaError, Store};
use moonraft_raft::storage::StateMachine;
use moonraft_raft::{BrokerNode, NodeId, Raft};
use openraft::error::{ClientWriteError, RaftError};
use std::time::Duration;
use tracing::warn;

/// A stopped Raft core: storage failures are reported as such; a shutdown in progress is a
/// `RETRY` (another member answers).
fn fatal(f: openraft::error::Fatal<NodeId>) -> ApiError {
    match f {
        openraft::error::Fatal::StorageError(e) => {
            tracing::error!("raft stopped on a storage error: {e}");
            ApiError::StorageError(e.to_string())
        }
        openraft::error::Fatal::Stopped => ApiError::Retry,
        other => ApiError::StorageError(other.to_string()),
    }
}

/// Errors of the `/api/v3` surface beyond the model's own (`docs/api.md#error-codes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Meta(#[from] MetaError),
    /// Try again; the request was not applied (no leader, not the leader, nothing proposed).
    #[error("RETRY")]
    Retry,
    /// Try again, but the request may have been applied (a proposal or a forwarded call timed
    /// out): `{"error":"RETRY","outcome":"unknown"}`, so a client knows a blind retry of a
    /// non-idempotent call could apply it twice.
    #[error("RETRY")]
    RetryUnknown,
    #[error("RAFT_NOT_INITIALIZED")]
    NotInitialized,
    #[error("RAFT_ALREADY_INITIALIZED")]
    AlreadyInitialized,
    #[error("INVALID_MEMBERSHIP")]
    InvalidMembership(String),
    #[error("INVALID_REQUEST")]
    InvalidRequest(String),
    #[error("USE_RAFT_MEMBERSHIP_API")]
    UseRaftMembershipApi,
    #[error("PROXY_NOT_SYNC")]
    ProxyNotSync,
    /// This member's Raft core stopped on a storage failure (disk full, I/O error): it serves
    /// no more writes or linearizable reads until it is restarted; the others elect a leader.
    #[error("STORAGE_ERROR")]
    StorageError(String),
}

impl ApiError {
    /// The JSON error body of both surfaces (`{"error": CODE, ...}`).
    pub fn body(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ApiError::Meta(MetaError::InvalidConfig { key, value, message }) => {
                json!({"error": "INVALID_CONFIG", "key": key, "value": value, "message": message})
            }
            ApiError::Meta(MetaError::InvalidMetadata { message }) => {
                json!({"error": "INVALID_METADATA", "message": message})
            }
            ApiError::Meta(MetaError::EpochMismatch { current }) => {
                json!({"error": "EPOCH_MISMATCH", "epoch": current})
            }
            ApiError::RetryUnknown => json!({"error": "RETRY", "outcome": "unknown"}),
            ApiError::InvalidMembership(m) | ApiError::InvalidRequest(m) | ApiError::StorageError(m) => {
                json!({"error": self.to_string(), "message": m})
            }
            other => json!({"error": other.to_string()}),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::Meta(e) => e.status(),
            ApiError::Retry
            | ApiError::RetryUnknown
            | ApiError::AlreadyInitialized
            | ApiError::UseRaftMembershipApi
            // undermoon answers 500; but proxies that have not caught up yet are a state the
            // caller retries through, not a fault of this server (monitoring alerts on 5xx).
            | ApiError::ProxyNotSync => 409,
            ApiError::NotInitialized => 503,
            ApiError::InvalidMembership(_) | ApiError::InvalidRequest(_) => 400,
            ApiError::StorageError(_) => 500,
        }
    }
}

pub struct Broker {
    pub config: BrokerConfig,
    pub raft: Raft,
    pub sm: StateMachine,
    /// One scaling operation at a time (expand, shrink, auto); held on the leader only.
    pub scale_lock: tokio::sync::Mutex<()>,
    /// gRPC channels to the leader for forwarding, by raft address (they reconnect by
    /// themselves, so one per address is enough).
    pub forward_channels: std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    /// Which group this member's data dir belongs to.
    pub identity: std::sync::Arc<moonraft_raft::storage::GroupIdentity>,
    /// What this member counted of its own work (`/metrics`).
    pub metrics: super::metrics::BrokerMetrics,
}

impl Broker {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.config.node_id)
    }

    /// The current leader and its addresses, if known.
    pub fn leader(&self) -> Option<(NodeId, BrokerNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn members(&self) -> Vec<(NodeId, BrokerNode, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        membership.nodes().map(|(id, n)| (*id, n.clone(), voters.contains(id))).collect()
    }

    pub fn is_initialized(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().nodes().next().is_some()
    }

    /// A (lazily connecting, self-reconnecting) channel to the leader's gRPC address, one per
    /// address.
    pub fn leader_channel(&self, leader: &BrokerNode) -> Result<tonic::transport::Channel, String> {
        let mut channels = self.forward_channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(&leader.raft_address) {
            return Ok(c.clone());
        }
        let c = self.config.client_tls.endpoint(&leader.raft_address, Duration::from_secs(1))?.connect_lazy();
        channels.insert(leader.raft_address.clone(), c.clone());
        Ok(c)
    }

    fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.config.proposal_timeout_ms)
    }

    /// Proposes `cmd` and waits until it is committed by a majority and applied here.
    pub async fn write(&self, cmd: Command) -> Result<CommandOutput, ApiError> {
        if !self.is_initialized() {
            return Err(ApiError::NotInitialized);
        }
        let started = std::time::Instant::now();
        let result = self.propose(cmd).await;
        match &result {
            // Committed and applied, whether the model accepted the command or not.
            Ok(_) | Err(ApiError::Meta(_)) => self.metrics.proposals.observe(started.elapsed()),
            Err(_) => {
                self.metrics.proposal_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }

    async fn propose(&self, cmd: Command) -> Result<CommandOutput, ApiError> {
        match tokio::time::timeout(self.proposal_timeout(), self.raft.client_write(cmd)).await {
            // Proposed but not known to be committed: it may still be.
            Err(_) => Err(ApiError::RetryUnknown),
            Ok(Ok(resp)) => resp.data.map_err(ApiError::Meta),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(ApiError::Retry),
            // A core that stopped with the proposal in flight may have replicated it.
            Ok(Err(RaftError::Fatal(f))) => Err(match fatal(f) {
                ApiError::Retry => ApiError::RetryUnknown,
                other => other,
            }),
            Ok(Err(e)) => {
                warn!("proposal failed: {e}");
                Err(ApiError::RetryUnknown)
            }
        }
    }

    /// Reads the store; linearizable by default (the leader confirms its leadership first).
    pub async fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> Result<T, ApiError> {
        if !self.is_initialized() {
            return Err(ApiError::NotInitialized);
        }
        if self.config.read_mode == ReadMode::Linearizable && !self.config.unsafe_local_reads {
            match tokio::time::timeout(self.proposal_timeout(), self.raft.ensure_linearizable()).await {
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::Fatal(f))) => return Err(fatal(f)),
                Ok(Err(_)) | Err(_) => return Err(ApiError::Retry),
            }
        }
        Ok(self.sm.read(|d| f(&d.store)))
    }

    /// Unix seconds on this member (the leader's clock goes into failure commands).
    pub fn now() -> u64 {
        Broker::now_ms() / 1000
    }

    /// Unix milliseconds on this member.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}
