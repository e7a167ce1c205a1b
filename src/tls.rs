//! TLS for the brokers' listeners (HTTP `/api/v3` and gRPC) and for every client of ours that
//! talks to them (other members, coordinators, `moonraft ctl`), with rustls — no OpenSSL.
//!
//! Keys: `tls_cert` + `tls_key` (PEM files) make a broker serve both ports over TLS only;
//! `tls_ca` (a PEM CA bundle) is what clients verify the brokers' certificates against. A
//! client without `tls_ca` talks plain TCP. Certificates must name the address clients use
//! (DNS name or IP in subjectAltName).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// A server certificate and its key.
#[derive(Clone)]
pub struct ServerIdentity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerIdentity(<key hidden>)")
    }
}

impl ServerIdentity {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerIdentity, String> {
        let id = ServerIdentity { cert: read(cert, "tls_cert")?, key: read(key, "tls_key")? };
        // Fail at start, with the file names, rather than at the first connection.
        id.rustls()?;
        Ok(id)
    }

    pub fn grpc(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// The rustls configuration of the HTTP listener: HTTP/1.1 only. (With HTTP/2, a request
    /// refused before its body was read — a 401 on a POST — ends with a stream reset that curl
    /// reports as a failed transfer instead of showing the 401.)
    pub fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        moonraft_proxy::tls::server_config(&self.cert, &self.key, &[b"http/1.1"])
    }
}

/// The CA our clients verify brokers against; `None`: plain TCP.
#[derive(Clone, Default)]
pub struct ClientTls(Option<Certificate>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({})", if self.enabled() { "ca" } else { "plain" })
    }
}

impl ClientTls {
    pub fn load(ca: Option<&Path>) -> Result<ClientTls, String> {
        match ca {
            None => Ok(ClientTls(None)),
            Some(path) => {
                let pem = read(path, "tls_ca")?;
                if !String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE") {
                    return Err(format!("tls_ca {}: no PEM certificate in it", path.display()));
                }
                Ok(ClientTls(Some(Certificate::from_pem(pem))))
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A lazily connecting gRPC endpoint for `address` (`host:port`): `https` verified
    /// against the CA when one is set, else `http`.
    pub fn endpoint(&self, address: &str, connect_timeout: Duration) -> Result<Endpoint, String> {
        let scheme = if self.enabled() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("bad address {address}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &self.0 {
            let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
            let tls = ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name(host);
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("tls for {address}: {e}"))?;
        }
        Ok(endpoint)
    }
}

/// Serves `router` over TLS on `listener` until the listener fails. Each connection gets
/// 10 s for its handshake, so a silent client cannot hold a task forever.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("https accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await {
                tracing::debug!("https connection: {e}");
            }
        });
    }
}
