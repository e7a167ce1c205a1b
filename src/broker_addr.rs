//! Broker addresses as operators write them. Coordinators and `moonraft ctl` talk to the
//! brokers over gRPC (`grpc_address`, default port 7800), but an undermoon-style configuration
//! names the brokers' HTTP `/api/v3` addresses (default port 7799). Each configured address is
//! probed once at start-up: a gRPC address is kept; an HTTP one is replaced by the gRPC
//! addresses `GET /api/v3/raft/status` lists (the member's own and every member's); one that
//! answers as neither stops start-up with a message naming both ports. An address nothing
//! answers on yet (the broker may still be starting) is kept as a gRPC address.

use crate::tls::ClientTls;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use std::time::Duration;
use tonic::codegen::http;
use tower::ServiceExt;

/// Bound on each step of a probe (connect, one call).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `/api/v3/raft/status` is a few hundred bytes; more is not a broker.
const MAX_STATUS_BYTES: usize = 1 << 20;

/// What a configured broker address turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Grpc,
    /// An HTTP `/api/v3` address, and the group's gRPC addresses it lists.
    Http(Vec<String>),
    /// Nothing answers there now; the reason.
    Unreachable(String),
}

fn neither(address: &str, detail: &str) -> String {
    format!(
        "broker address {address} answers, but neither as a broker's gRPC service nor as its HTTP /api/v3 API ({detail}): \
         give each broker's grpc_address (default port 7800) or its HTTP address (default port 7799)"
    )
}

/// Probes one address (see the module comment).
pub async fn probe(address: &str, tls: &ClientTls) -> Result<Probe, String> {
    // A plain TCP connect first, to tell "nothing there yet" from "something else there".
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Ok(Probe::Unreachable(e.to_string())),
        Err(_) => return Ok(Probe::Unreachable("connect timed out".into())),
    }
    let endpoint = tls.endpoint(address, PROBE_TIMEOUT)?;
    let channel = match tokio::time::timeout(PROBE_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let detail = format!("HTTP/2{} handshake failed: {e}", if tls.enabled() { " over TLS" } else { "" });
            return Err(neither(address, &detail));
        }
        Err(_) => return Ok(Probe::Unreachable("HTTP/2 handshake timed out".into())),
    };
    // An HTTP API member answers this with its status; a gRPC service with a gRPC error.
    if let Some(grpc) = http_members(address, tls, channel.clone()).await {
        return Ok(Probe::Http(grpc));
    }
    let mut client = BrokerApiClient::new(channel);
    let version = client.get_version(pb::Empty {});
    match tokio::time::timeout(PROBE_TIMEOUT, version).await {
        Ok(Ok(_)) => Ok(Probe::Grpc),
        // What a broker's gRPC service itself answers without the right token, or while it
        // cannot serve; any other failure means something else is listening there.
        Ok(Err(s))
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::Unavailable
            ) =>
        {
            Ok(Probe::Grpc)
        }
        Ok(Err(s)) => Err(neither(address, s.message())),
        Err(_) => Ok(Probe::Unreachable("no answer to GetVersion".into())),
    }
}

/// `GET /api/v3/raft/status` over the HTTP/2 connection already open: the member's own gRPC
/// address first, then every member's; `None` if the answer is not a broker's status.
async fn http_members(address: &str, tls: &ClientTls, channel: tonic::transport::Channel) -> Option<Vec<String>> {
    let scheme = if tls.enabled() { "https" } else { "http" };
    let request =
        http::Request::get(format!("{scheme}://{address}/api/v3/raft/status")).body(tonic::body::empty_body()).ok()?;
    let fetch = async {
        let response = channel.oneshot(request).await.ok()?;
        if response.status() != http::StatusCode::OK {
            return None;
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_STATUS_BYTES);
        Some(http_body_util::BodyExt::collect(limited).await.ok()?.to_bytes())
    };
    let body = tokio::time::timeout(PROBE_TIMEOUT, fetch).await.ok()??;
    grpc_addresses(&body).ok()
}

/// The gRPC addresses in a `/api/v3/raft/status` body: `grpc_address` (the member's own),
/// then each member's `raft_address` (Raft travels over the gRPC port).
pub fn grpc_addresses(body: &[u8]) -> Result<Vec<String>, String> {
    let status: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("/api/v3/raft/status is not JSON: {e}"))?;
    let mut out: Vec<String> = Vec::new();
    let own = status.get("grpc_address").and_then(|a| a.as_str());
    let members = status.get("members").and_then(|m| m.as_array()).into_iter().flatten();
    for a in own.into_iter().chain(members.filter_map(|m| m.get("raft_address").and_then(|a| a.as_str()))) {
        if !a.is_empty() && !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    if out.is_empty() {
        return Err("/api/v3/raft/status lists no gRPC address".into());
    }
    Ok(out)
}

/// The gRPC addresses to use for `configured` (in order, without repeats).
pub async fn resolve(configured: &[String], tls: &ClientTls) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let add = |a: String, out: &mut Vec<String>| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for address in configured {
        match probe(address, tls).await? {
            Probe::Grpc => add(address.clone(), &mut out),
            Probe::Http(grpc) => {
                tracing::info!(
                    http = %address,
                    grpc = ?grpc,
                    "broker address {address} is an HTTP /api/v3 address; using the gRPC addresses it lists"
                );
                for a in grpc {
                    add(a, &mut out);
                }
            }
            Probe::Unreachable(why) => {
                tracing::warn!(broker = %address, "broker address {address} does not answer yet ({why}); using it as a gRPC address");
                add(address.clone(), &mut out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_addresses_come_from_the_status_body() {
        let body = br#"{"node_id":2,"grpc_address":"b:7800","members":[
            {"id":1,"raft_address":"a:7800","http_address":"a:7799","voter":true},
            {"id":2,"raft_address":"b:7800","http_address":"b:7799","voter":true}]}"#;
        assert_eq!(grpc_addresses(body).unwrap(), vec!["b:7800", "a:7800"]);
        // an uninitialised broker knows only itself
        assert_eq!(grpc_addresses(br#"{"grpc_address":"c:7800","members":[]}"#).unwrap(), vec!["c:7800"]);
        assert!(grpc_addresses(br#"{"members":[]}"#).is_err());
        assert!(grpc_addresses(b"<html>").is_err());
    }
}
