//! Raft RPCs between brokers over gRPC (`RaftInternal`, proto/raft.proto). Requests and
//! replies are openraft's own types serialized as JSON inside a bytes field, so the wire
//! format follows the openraft version without hand-written conversions.

use crate::storage::GroupIdentity;
use crate::{BrokerNode, NodeId, TypeConfig};
use moonraft_proto::raft::raft_internal_client::RaftInternalClient;
use moonraft_proto::raft::RaftMessage;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Creates one connection object per peer; channels connect lazily and reconnect by
/// themselves.
/// Makes the endpoint for a peer's raft address (plain or TLS, decided by the binary).
pub type EndpointFactory = Arc<dyn Fn(&str) -> Result<Endpoint, String> + Send + Sync>;

#[derive(Clone)]
pub struct GrpcNetwork {
    pub identity: Arc<GroupIdentity>,
    pub endpoint: EndpointFactory,
    /// The group secret, sent as `authorization: Bearer <secret>` on every RPC (members with
    /// a `cluster_secret` refuse Raft traffic without it).
    pub secret: Option<Arc<str>>,
}

/// gRPC metadata key carrying the sender's group id on every Raft RPC.
pub const GROUP_HEADER: &str = "x-moonraft-group";

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> PeerConnection {
        PeerConnection {
            target,
            address: node.raft_address.clone(),
            client: None,
            identity: self.identity.clone(),
            // Built once per peer, not on every RPC.
            authorization: self.secret.as_ref().and_then(|s| format!("Bearer {s}").parse().ok()),
            endpoint: self.endpoint.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    address: String,
    client: Option<RaftInternalClient<Channel>>,
    identity: Arc<GroupIdentity>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    endpoint: EndpointFactory,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    fn client(&mut self) -> Result<RaftInternalClient<Channel>, TransportError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = (self.endpoint)(&self.address)
            .map_err(|e| TransportError(format!("bad raft address {}: {e}", self.address)))?;
        let client = RaftInternalClient::new(endpoint.connect_lazy());
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BrokerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(timeout);
        if let Some(v) = self.identity.get().and_then(|id| id.parse().ok()) {
            request.metadata_mut().insert(GROUP_HEADER, v);
        }
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let err = TransportError(format!("{rpc:?} to {}: {status}", self.address));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
        };
        let result: Result<Resp, E> =
            serde_json::from_slice(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BrokerNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BrokerNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BrokerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Server side: decode a request, hand it to the local Raft, encode its result.
pub async fn serve_raft_rpc(raft: &crate::Raft, kind: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
    let bad = |e: serde_json::Error| format!("malformed {kind} request: {e}");
    let encoded = match kind {
        "append_entries" => {
            let req: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(payload).map_err(bad)?;
            serde_json::to_vec(&raft.append_entries(req).await)
        }
        "vote" => {
            let req: VoteRequest<NodeId> = serde_json::from_slice(payload).map_err(bad)?;
            serde_json::to_vec(&raft.vote(req).await)
        }
        "install_snapshot" => {
            let req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(payload).map_err(bad)?;
            serde_json::to_vec(&raft.install_snapshot(req).await)
        }
        other => return Err(format!("unknown raft rpc {other}")),
    };
    encoded.map_err(|e| format!("cannot encode {kind} reply: {e}"))
}
