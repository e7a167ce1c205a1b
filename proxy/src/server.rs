//! The proxy's listener.

use crate::config::ProxyConfig;
use crate::session::serve_client;
use crate::state::ProxyState;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Binds the listen address and serves clients until `UMCTL SHUTDOWN` (or the returned
/// state's shutdown signal) stops it.
pub async fn run(config: ProxyConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(&config.address).await?;
    let state = ProxyState::new(config);
    info!(address = %state.config.address, announce = %state.announce, "proxy listening");
    serve(listener, state).await
}

pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) -> std::io::Result<()> {
    let mut shutdown = state.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(state.clone(), stream));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait_for(|s| *s) => {
                info!("shutdown requested");
                return Ok(());
            }
        }
    }
}
