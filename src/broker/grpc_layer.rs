//! The layer every gRPC service of a broker runs behind: each call gets a request id (the
//! caller's `x-moonraft-request-id`, or a new one) and a span carrying it, and is counted by
//! method and status code and timed (`metrics.rs`).

use super::metrics::REQUEST_ID;
use super::service::Broker;
use std::sync::Arc;

type GrpcRequest = axum::http::Request<tonic::body::BoxBody>;
type GrpcResponse = axum::http::Response<tonic::body::BoxBody>;

/// A gRPC service whose calls are counted by method and status code and timed. Outside the
/// credential check, so refused calls are counted too.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    broker: Arc<Broker>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, broker: Arc<Broker>) -> Metered<S> {
        Metered { inner, broker }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<GrpcRequest> for Metered<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse, Error = std::convert::Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GrpcRequest) -> Self::Future {
        let start = std::time::Instant::now();
        let path = req.uri().path().to_owned();
        let broker = self.broker.clone();
        let id = broker.metrics.request_id(broker.node_id(), req.headers().get(REQUEST_ID).map(|v| v.as_bytes()));
        let header = axum::http::HeaderValue::from_str(&id).ok();
        if let Some(v) = &header {
            req.headers_mut().insert(REQUEST_ID, v.clone());
        }
        let span = tracing::info_span!("grpc", id = %id, method = %path);
        let call = tracing::Instrument::instrument(self.inner.call(req), span);
        Box::pin(async move {
            let mut resp = call.await?;
            if let Some(v) = header {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            // A call that failed before its first message carries its status in the headers
            // ("trailers only"); one that answered has it in the trailers, and it is OK.
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            // Only the service's own methods are labelled by name: a client can send any path.
            let method = if code == tonic::Code::Unimplemented { "unknown" } else { path.as_str() };
            broker.metrics.grpc_request(method, &format!("{code:?}"), start.elapsed());
            Ok(resp)
        })
    }
}
