//! The proxy's listener.

use crate::config::ProxyConfig;
use crate::session::{serve_client, serve_tls_client};
use crate::state::ProxyState;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Binds the listen address and serves clients until `UMCTL SHUTDOWN` (or the returned
/// state's shutdown signal) stops it.
pub async fn run(config: ProxyConfig) -> std::io::Result<()> {
    run_with(config, |_| {}).await
}

/// Like `run`, calling `started` with the proxy's state once it listens (the binary starts its
/// `/metrics` listener there).
pub async fn run_with(config: ProxyConfig, started: impl FnOnce(&Arc<ProxyState>)) -> std::io::Result<()> {
    let tls = config.tls_server().map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(&config.address).await?;
    let state = ProxyState::new(config);
    started(&state);
    info!(address = %state.config.address, announce = %state.announce, tls = tls.is_some(), "proxy listening");
    serve_with(listener, state, tls).await
}

pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) -> std::io::Result<()> {
    serve_with(listener, state, None).await
}

/// Serves clients; with `tls`, every connection must complete a TLS handshake (within 10 s).
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut shutdown = state.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match &acceptor {
                    None => {
                        tokio::spawn(serve_client(state.clone(), stream));
                    }
                    Some(acceptor) => {
                        let (acceptor, state) = (acceptor.clone(), state.clone());
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve_tls_client(state, tls).await,
                                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        });
                    }
                },
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
