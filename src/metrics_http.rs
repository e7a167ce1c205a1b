//! `GET /metrics` on its own listener (`metrics_address`) for the roles that have no HTTP port
//! of their own (proxies, coordinators). Brokers serve it on their `/api/v3` port.

use anyhow::{Context, Result};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What Prometheus is told it is reading: `prometheus-client` writes the OpenMetrics text format.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `address` now, so a taken or malformed address fails start-up rather than later.
pub async fn bind(address: &str) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("metrics_address: cannot listen on {address}"))
}

/// Serves `render()` as `GET /metrics` on `listener` until the process ends.
pub fn spawn(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], render()).into_response() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the /metrics listener stopped: {e}");
        }
    });
}
