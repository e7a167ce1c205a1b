//! The coordinator's admin port (`docs/operations.md` uses it): a small RESP server.
//! `CONFIG GET/SET` of the broker list, the reporter id and the runtime timing keys,
//! `UMCTL DEBUG FUTURE`, `INFO`, `PING`. Idle connections close after 300 s. With
//! `admin_password` set, everything but `PING`, `AUTH` and `QUIT` needs `AUTH <admin_password>`
//! first (`CONFIG SET brokers` would otherwise let anyone point it at brokers of their own).

use super::config::{parse_addresses, CoordinatorConfig};
use super::Coordinator;
use bytes::{Bytes, BytesMut};
use moonraft_proxy::resp::{self, Frame, RequestParser};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_secs(300);
/// Keys `CONFIG SET` may change while running.
const RUNTIME_KEYS: &[&str] = &[
    "proxy_timeout_ms",
    "probe_interval_ms",
    "probe_timeout_ms",
    "failure_probes",
    "failure_window_ms",
    "startup_grace_ms",
    "recovery_ms",
    "local_error_grace_ms",
    "heartbeat_interval_ms",
    "proxy_lease_ms",
    "reconcile_interval_ms",
    "disable_failover",
];

pub async fn serve(co: Arc<Coordinator>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(co.clone(), stream));
            }
            Err(e) => {
                tracing::warn!("admin port accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(co: Arc<Coordinator>, mut stream: TcpStream) {
    let mut parser = RequestParser::new(1 << 20, 4 << 20);
    let mut buf = BytesMut::new();
    let mut authenticated = co.config.read().unwrap_or_else(|e| e.into_inner()).admin_password.is_none();
    loop {
        loop {
            match parser.next(&mut buf) {
                Ok(Some(req)) => {
                    let reply = match gate(&co, &req.args, &mut authenticated) {
                        Some(refused) => refused,
                        None => handle(&co, &req.args),
                    };
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = stream.write_all(&resp::error(&format!("ERR Protocol error: {}", e.0))).await;
                    return;
                }
            }
        }
        match tokio::time::timeout(IDLE, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// `AUTH` itself, and the refusal of anything else before it: `None` lets the command run.
fn gate(co: &Coordinator, args: &[Bytes], authenticated: &mut bool) -> Option<Bytes> {
    let name = args.first().map(|n| n.to_ascii_lowercase()).unwrap_or_default();
    if name == b"auth" {
        let password = match args.len() {
            2 => &args[1],
            3 if args[1].eq_ignore_ascii_case(b"admin") || args[1].eq_ignore_ascii_case(b"default") => &args[2],
            _ => return Some(resp::error("ERR wrong number of arguments for 'auth' command")),
        };
        let config = co.config.read().unwrap_or_else(|e| e.into_inner());
        return Some(match &config.admin_password {
            None => resp::error("ERR AUTH called without any password configured"),
            Some(p) if moonraft_proxy::config::password_matches(p.expose(), password) => {
                *authenticated = true;
                resp::simple("OK")
            }
            Some(_) => resp::error("WRONGPASS invalid username-password pair or user is disabled."),
        });
    }
    if *authenticated || name == b"ping" || name == b"quit" {
        return None;
    }
    Some(resp::error("NOAUTH Authentication required."))
}

fn text(b: &Bytes) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn config_value(c: &CoordinatorConfig, field: &str) -> Option<String> {
    Some(match field {
        "brokers" => c.brokers.join(","),
        "reporter_id" => c.reporter_id.clone(),
        "proxy_timeout_ms" => c.proxy_timeout_ms.to_string(),
        "probe_interval_ms" => c.probe_interval_ms.to_string(),
        "probe_timeout_ms" => c.probe_timeout_ms.to_string(),
        "failure_probes" => c.failure_probes.to_string(),
        "failure_window_ms" => c.failure_window_ms.to_string(),
        "startup_grace_ms" => c.startup_grace_ms.to_string(),
        "recovery_ms" => c.recovery_ms.to_string(),
        "local_error_grace_ms" => c.local_error_grace_ms.to_string(),
        "heartbeat_interval_ms" => c.heartbeat_interval_ms.to_string(),
        "proxy_lease_ms" => c.proxy_lease_ms.to_string(),
        "reconcile_interval_ms" => c.reconcile_interval_ms.to_string(),
        "disable_failover" => c.disable_failover.to_string(),
        _ => return None,
    })
}

pub fn handle(co: &Coordinator, args: &[Bytes]) -> Bytes {
    let Some(name) = args.first().and_then(text) else { return resp::error("Invalid command") };
    match name.to_ascii_lowercase().as_str() {
        "ping" => resp::simple("PONG"),
        "config" => config(co, &args[1..]),
        "umctl" => {
            let Some(sub) = args.get(1) else { return resp::error("Missing sub argument") };
            let Some(sub) = text(sub) else { return resp::error("Invalid sub argument") };
            match (sub.to_ascii_uppercase().as_str(), args.get(2).and_then(text).map(str::to_ascii_uppercase)) {
                ("DEBUG", Some(f)) if f == "FUTURE" => {
                    Frame::Array(co.describe().into_iter().map(Frame::bulk).collect()).to_bytes(2)
                }
                _ => resp::error("Invalid sub command for UMCTL"),
            }
        }
        "info" => {
            let lines = format!(
                "# Coordinator\r\nbrokers:{}\r\nreporter_id:{}\r\nproxies:{}\r\npushes:{}\r\nfailure_reports:{}\r\nfailure_reports_held:{}\r\nfailure_reports_withdrawn:{}\r\nfailovers:{}\r\nrecoveries:{}\r\n",
                co.brokers.addresses().join(","),
                co.config.read().unwrap_or_else(|e| e.into_inner()).reporter_id,
                co.describe().len(),
                co.pushes.load(Ordering::Relaxed),
                co.reports.load(Ordering::Relaxed),
                co.held.load(Ordering::Relaxed),
                co.withdrawals.load(Ordering::Relaxed),
                co.failovers.load(Ordering::Relaxed),
                co.recoveries.load(Ordering::Relaxed),
            );
            resp::bulk(lines.as_bytes())
        }
        other => resp::error(&format!("ERR_COMMAND_NOT_SUPPORTED: {}", other.chars().take(64).collect::<String>())),
    }
}

fn config(co: &Coordinator, args: &[Bytes]) -> Bytes {
    let Some(sub) = args.first() else { return resp::error("Missing sub argument") };
    let Some(sub) = text(sub) else { return resp::error("Invalid sub argument") };
    let Some(field) = args.get(1) else { return resp::error("Missing sub argument") };
    let Some(field) = text(field) else { return resp::error("Invalid sub argument") };
    match sub.to_ascii_uppercase().as_str() {
        "GET" => {
            let c = co.config.read().unwrap_or_else(|e| e.into_inner());
            match config_value(&c, field) {
                Some(v) => resp::bulk(v.as_bytes()),
                None => resp::error(&format!("Invalid CONFIG field {field}")),
            }
        }
        "SET" => {
            let Some(value) = args.get(2) else { return resp::error("Missing sub argument") };
            let Some(value) = text(value) else { return resp::error("Invalid sub argument") };
            if field == "brokers" {
                let list = match parse_addresses(value) {
                    Ok(l) => l,
                    Err(e) => return resp::error(&format!("ERR invalid brokers: {e}")),
                };
                if let Err(e) = co.brokers.set_addresses(&list) {
                    return resp::error(&format!("ERR invalid brokers: {e}"));
                }
                co.config.write().unwrap_or_else(|e| e.into_inner()).brokers = list;
                return Bytes::from_static(resp::OK);
            }
            if !RUNTIME_KEYS.contains(&field) {
                return resp::error(&format!("Invalid CONFIG SET field {field}"));
            }
            let mut c = co.config.write().unwrap_or_else(|e| e.into_inner());
            let mut next = c.clone();
            if let Err(e) = next.set(field, value) {
                return resp::error(&format!("ERR invalid value for {field}: {e}"));
            }
            if let Err(e) = next.finish() {
                return resp::error(&format!("ERR {e}"));
            }
            *c = next;
            Bytes::from_static(resp::OK)
        }
        other => resp::error(&format!("Invalid config sub command: {other}")),
    }
}
