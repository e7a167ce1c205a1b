//! The broker's internal gRPC server (`RaftInternal`): Raft RPCs between members, and the
//! leader's side of forwarding (a follower's HTTP request, run through the same router). The
//! follower's side is `http::forward`.

use super::http::execute_forwarded;
use super::service::Broker;
use axum::http::Method;
use axum::Router;
use moonraft_proto::raft::raft_internal_server::RaftInternal;
use moonraft_proto::raft::{ForwardRequest, ForwardResponse, Header, RaftMessage};
use moonraft_raft::network::{serve_raft_rpc, GROUP_HEADER};
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

pub struct RaftService {
    pub broker: Arc<Broker>,
    pub router: Router,
}

impl RaftService {
    async fn raft_rpc(&self, kind: &str, req: GrpcRequest<RaftMessage>) -> Result<GrpcResponse<RaftMessage>, Status> {
        // A sender without an id has not been initialised yet (nothing to protect).
        let sender_group = req.metadata().get(GROUP_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(theirs) = sender_group {
            if let Err(e) = self.broker.identity.adopt(&theirs) {
                tracing::warn!("refused a {kind} RPC: {e}");
                return Err(Status::failed_precondition(e.to_string()));
            }
        }
        let payload = serve_raft_rpc(&self.broker.raft, kind, &req.into_inner().payload)
            .await
            .map_err(Status::invalid_argument)?;
        Ok(GrpcResponse::new(RaftMessage { payload }))
    }
}

#[tonic::async_trait]
impl RaftInternal for RaftService {
    async fn append_entries(&self, req: GrpcRequest<RaftMessage>) -> Result<GrpcResponse<RaftMessage>, Status> {
        self.raft_rpc("append_entries", req).await
    }

    async fn vote(&self, req: GrpcRequest<RaftMessage>) -> Result<GrpcResponse<RaftMessage>, Status> {
        self.raft_rpc("vote", req).await
    }

    async fn install_snapshot(&self, req: GrpcRequest<RaftMessage>) -> Result<GrpcResponse<RaftMessage>, Status> {
        self.raft_rpc("install_snapshot", req).await
    }

    async fn forward(&self, req: GrpcRequest<ForwardRequest>) -> Result<GrpcResponse<ForwardResponse>, Status> {
        let f = req.into_inner();
        let method = Method::from_bytes(f.method.as_bytes()).map_err(|_| Status::invalid_argument("bad method"))?;
        let headers = f.headers.into_iter().map(|h| (h.name, h.value)).collect();
        let resp = execute_forwarded(self.router.clone(), method, f.path_and_query, headers, f.body).await;
        let status = resp.status().as_u16() as u32;
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| Header { name: n.as_str().to_owned(), value: v.as_bytes().to_vec() })
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| Status::internal(format!("reading the response: {e}")))?;
        Ok(GrpcResponse::new(ForwardResponse { status, headers, body: body.to_vec() }))
    }
}
