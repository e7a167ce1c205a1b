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
    run_with(config, |_, _| {}).await
}

/// Like `run`, calling `started` with the proxy's state and its `/metrics` listening socket
/// (when `metrics_address` is set) once it listens.
///
/// With `handover_socket` set and a proxy running there, its listening sockets and metadata
/// are taken over instead of bound (`takeover.rs`).
pub async fn run_with(
    config: ProxyConfig,
    started: impl FnOnce(&Arc<ProxyState>, Option<TcpListener>),
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tls = config.tls_server().map_err(std::io::Error::other)?;
    let (listeners, taken) = crate::takeover::acquire(&config).await?;
    let state = ProxyState::new(config);
    let mut sockets = vec![listeners.clients.as_raw_fd()];
    sockets.extend(listeners.metrics.as_ref().map(|m| m.as_raw_fd()));
    state.handover.set_sockets(sockets);
    let handed_over = taken.is_some();
    if let Some(taken) = taken {
        crate::takeover::install(&state, taken)?;
    }
    if let Some(path) = state.config.handover_socket.clone() {
        crate::takeover::serve(state.clone(), path)?;
    }
    started(&state, listeners.metrics);
    info!(
        address = %state.config.address,
        announce = %state.announce,
        tls = tls.is_some(),
        handed_over,
        epoch = state.epoch(),
        "proxy listening"
    );
    serve_with(listeners.clients, state, tls).await
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
    // Off while the listening socket is being handed to a successor, and after (`takeover.rs`).
    let mut accepting = state.handover.accepting();
    loop {
        let open = *accepting.borrow_and_update();
        tokio::select! {
            _ = accepting.changed() => {}
            accepted = listener.accept(), if open => match accepted {
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
