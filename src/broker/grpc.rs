//! The broker's gRPC server (`RaftInternal`: Raft RPCs and request forwarding) and the
//! forwarding client used by followers.

use super::http::execute_forwarded;
use super::service::Broker;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use moonraft_proto::raft::raft_internal_client::RaftInternalClient;
use moonraft_proto::raft::raft_internal_server::RaftInternal;
use moonraft_proto::raft::{ForwardRequest, ForwardResponse, Header, RaftMessage};
use moonraft_raft::network::{serve_raft_rpc, GROUP_HEADER};
use moonraft_raft::BrokerNode;
use std::sync::Arc;
use std::time::Duration;
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

/// A (lazily connecting, self-reconnecting) channel to the leader's gRPC address, one per
/// address.
pub fn leader_channel(broker: &Broker, leader: &BrokerNode) -> Result<tonic::transport::Channel, String> {
    let mut channels = broker.forward_channels.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = channels.get(&leader.raft_address) {
        return Ok(c.clone());
    }
    let c = broker.config.client_tls.endpoint(&leader.raft_address, Duration::from_secs(1))?.connect_lazy();
    channels.insert(leader.raft_address.clone(), c.clone());
    Ok(c)
}

/// Sends an HTTP request to the leader over gRPC and rebuilds its response.
pub async fn forward(broker: &Broker, leader: &BrokerNode, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, broker.config.max_body_bytes).await.map_err(|e| e.to_string())?;
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| *n != axum::http::header::HOST && *n != axum::http::header::CONTENT_LENGTH)
        .map(|(n, v)| Header { name: n.as_str().to_owned(), value: v.as_bytes().to_vec() })
        .collect();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let msg = ForwardRequest { method: parts.method.as_str().to_owned(), path_and_query, headers, body: body.to_vec() };
    let timeout = broker.config.forward_wait(super::config::ForwardedCall::of_path(parts.uri.path()));
    let channel = leader_channel(broker, leader)?;
    let mut client = RaftInternalClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(msg);
    request.set_timeout(timeout);
    crate::auth::BearerToken::new(broker.config.credentials.group_secret())?.apply(&mut request);
    let reply = client.forward(request).await.map_err(|e| e.to_string())?.into_inner();
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status as u16).map_err(|e| e.to_string())?;
    for h in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(&h.value)) {
            if n != axum::http::header::CONTENT_LENGTH && n != axum::http::header::TRANSFER_ENCODING {
                resp.headers_mut().insert(n, v);
            }
        }
    }
    Ok(resp)
}
