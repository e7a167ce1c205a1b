//! Workloads: what the client workers do, and how each outcome is recorded.
//!
//! - `register`: per-key registers in the brokers — a cluster's `migration_scan_count`, read with
//!   `GET /clusters/meta/{key}`, written with `PATCH /clusters/config/{key}`, compare-and-set as a
//!   `PATCH` with `If-Match: "<epoch>"` of the worker's last read — through random members, half
//!   over HTTP, half over gRPC.
//! - `set`: unique proxy registrations; the final read of `/proxies/addresses` must hold every
//!   acknowledged one and nothing never attempted.
//! - `epoch`: reads of the global epoch and bumps (`PUT /epoch/{n}`): monotonic per session, an
//!   acknowledged bump visible to every later read.
//! - `redis-register` / `redis-set`: `GET`/`SET` of unique values and `SADD`/`SMEMBERS` through
//!   the proxies with a cluster client.

use crate::client::{self, CallError, ClusterClient, ClusterReply};
use crate::history::{Kind, Note, Recorder};
use crate::rng::Rng;
use moonraft_proto::broker as pb;
use moonraft_proxy::resp::Frame;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Register,
    Set,
    Epoch,
    RedisRegister,
    RedisSet,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "register" => Workload::Register,
            "set" => Workload::Set,
            "epoch" => Workload::Epoch,
            "redis-register" => Workload::RedisRegister,
            "redis-set" => Workload::RedisSet,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Epoch => "epoch",
            Workload::RedisRegister => "redis-register",
            Workload::RedisSet => "redis-set",
        }
    }

    pub fn data_plane(self) -> bool {
        matches!(self, Workload::RedisRegister | Workload::RedisSet)
    }
}

/// Number of register keys (clusters) and of Redis keys.
pub const REGISTER_KEYS: usize = 5;
pub const REDIS_KEYS: usize = 8;
/// The Redis cluster the data-plane workloads use.
pub const REDIS_CLUSTER: &str = "jepsen";

pub struct Ctx {
    pub rec: Arc<Recorder>,
    /// (http, grpc) of every broker.
    pub brokers: Vec<(String, String)>,
    pub proxies: Vec<String>,
    /// Each proxy's two Redis nodes (registered with the proxy).
    pub proxy_nodes: Vec<[String; 2]>,
    pub timeout: Duration,
    pub kind: Workload,
}

/// One worker's state between operations.
pub struct Worker {
    pub id: u64,
    pub rng: Rng,
    /// register: key → (value, epoch) of this worker's last read.
    last_read: BTreeMap<String, (i64, u64)>,
    /// epoch: the largest epoch this worker saw.
    last_epoch: u64,
    counter: u64,
    grpc: BTreeMap<usize, pb::broker_api_client::BrokerApiClient<tonic::transport::Channel>>,
    http: client::HttpConns,
    cluster: Option<ClusterClient>,
}

impl Worker {
    pub fn new(id: u64, seed: u64, proxies: &[String]) -> Worker {
        Worker {
            id,
            rng: Rng::new(seed ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
            last_read: BTreeMap::new(),
            last_epoch: 0,
            counter: 0,
            grpc: BTreeMap::new(),
            http: client::HttpConns::default(),
            cluster: (!proxies.is_empty()).then(|| ClusterClient::new(proxies.to_vec(), id as usize)),
        }
    }

    fn grpc(
        &mut self,
        i: usize,
        addr: &str,
    ) -> Option<pb::broker_api_client::BrokerApiClient<tonic::transport::Channel>> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.grpc.entry(i) {
            e.insert(client::grpc(addr)?);
        }
        self.grpc.get(&i).cloned()
    }
}

/// How a write's answer is recorded: a definite refusal did not happen (a plain `RETRY` included:
/// the broker says so); a `RETRY` with `"outcome":"unknown"`, a storage error or a lost answer
/// may have.
fn write_outcome(r: &client::HttpReply) -> Kind {
    let code = r.error_code();
    match (r.status, code.as_deref()) {
        (200, _) => Kind::Ok,
        (_, Some("RETRY")) if r.retry_maybe_applied() => Kind::Info,
        (_, Some("RETRY")) => Kind::Fail,
        (500, _) | (502..=599, _) if code.as_deref() != Some("RAFT_NOT_INITIALIZED") => Kind::Info,
        _ => Kind::Fail,
    }
}

/// The same for a gRPC error status.
fn grpc_write_outcome(s: &tonic::Status) -> (Kind, String) {
    match client::grpc_code(s) {
        Some(code) if code == "RETRY" && client::grpc_retry_maybe_applied(s) => (Kind::Info, code),
        Some(code) if code == "STORAGE_ERROR" => (Kind::Info, code),
        Some(code) => (Kind::Fail, code),
        None => {
            let e = client::grpc_error(s);
            (call_error_outcome(&e), e.to_string())
        }
    }
}

fn call_error_outcome(e: &CallError) -> Kind {
    match e {
        CallError::NotSent(_) => Kind::Fail,
        CallError::Unknown(_) => Kind::Info,
    }
}

struct Attempt<'a> {
    ctx: &'a Ctx,
    note: Note,
}

impl<'a> Attempt<'a> {
    fn begin(ctx: &'a Ctx, w: &Worker, f: &str, key: &str, value: Value, via: &str, proto: &str) -> Attempt<'a> {
        let note = Note {
            process: w.id,
            f: f.into(),
            key: Some(key.into()),
            value,
            via: Some(via.into()),
            proto: Some(proto.into()),
            error: None,
        };
        ctx.rec.record(Kind::Invoke, note.clone());
        Attempt { ctx, note }
    }

    fn end(mut self, kind: Kind, value: Value, error: Option<String>) {
        self.note.value = value;
        self.note.error = error;
        self.ctx.rec.record(kind, self.note);
    }
}

/// One operation of the worker's workload.
pub async fn op(ctx: &Ctx, w: &mut Worker) {
    match ctx.kind {
        Workload::Register => register_op(ctx, w).await,
        Workload::Set => set_op(ctx, w).await,
        Workload::Epoch => epoch_op(ctx, w).await,
        Workload::RedisRegister => redis_register_op(ctx, w).await,
        Workload::RedisSet => redis_set_op(ctx, w).await,
    }
}

fn scan_count_of(cluster: &Value) -> Option<i64> {
    cluster["config"]["migration_config"]["scan_count"].as_i64()
}

async fn register_op(ctx: &Ctx, w: &mut Worker) {
    let key = format!("k{}", w.rng.below(REGISTER_KEYS as u64));
    let m = w.rng.below(ctx.brokers.len() as u64) as usize;
    let use_grpc = w.rng.below(2) == 1;
    // Half reads; a quarter writes; a quarter compare-and-set based on this worker's last read
    // of the key (a read instead when there is none).
    let roll = w.rng.below(4);
    let cas_from = w.last_read.get(&key).copied();
    if roll <= 1 || (roll == 3 && cas_from.is_none()) {
        return register_read(ctx, w, &key, m, use_grpc).await;
    }
    let (http_addr, grpc_addr) = ctx.brokers[m].clone();
    let to = 1 + w.rng.below(5) as i64;
    let (f, value, expected) = match (roll, cas_from) {
        (3, Some((from, epoch))) => ("cas", json!([from, to]), Some(epoch)),
        _ => ("write", json!(to), None),
    };
    if f == "cas" {
        w.last_read.remove(&key);
    }
    if use_grpc {
        let a = Attempt::begin(ctx, w, f, &key, value.clone(), &grpc_addr, "grpc");
        let Some(mut c) = w.grpc(m, &grpc_addr) else { return a.end(Kind::Fail, value, Some("bad address".into())) };
        let mut changes = std::collections::HashMap::new();
        changes.insert("migration_scan_count".to_owned(), to.to_string());
        let req = pb::ChangeClusterConfigRequest { cluster_name: key.clone(), changes, expected_epoch: expected };
        match tokio::time::timeout(ctx.timeout, c.change_cluster_config(req)).await {
            Ok(Ok(_)) => a.end(Kind::Ok, value, None),
            Ok(Err(s)) => {
                let (kind, why) = grpc_write_outcome(&s);
                a.end(kind, value, Some(why))
            }
            Err(_) => a.end(Kind::Info, value, Some("timeout".into())),
        }
    } else {
        let a = Attempt::begin(ctx, w, f, &key, value.clone(), &http_addr, "http");
        let body = json!({"migration_scan_count": to.to_string()}).to_string();
        let headers: Vec<(&str, String)> = expected.map(|e| vec![("If-Match", format!("\"{e}\""))]).unwrap_or_default();
        let path = format!("/api/v3/clusters/config/{key}");
        match w.http.call(&http_addr, "PATCH", &path, Some(&body), &headers, ctx.timeout).await {
            Ok(r) => {
                let code = r.error_code();
                a.end(write_outcome(&r), value, code)
            }
            Err(e) => a.end(call_error_outcome(&e), value, Some(e.to_string())),
        }
    }
}

async fn register_read(ctx: &Ctx, w: &mut Worker, key: &str, m: usize, use_grpc: bool) {
    let (http_addr, grpc_addr) = ctx.brokers[m].clone();
    if use_grpc {
        let a = Attempt::begin(ctx, w, "read", key, Value::Null, &grpc_addr, "grpc");
        let Some(mut c) = w.grpc(m, &grpc_addr) else {
            return a.end(Kind::Fail, Value::Null, Some("bad address".into()));
        };
        let req = pb::ClusterName { cluster_name: key.to_owned() };
        match tokio::time::timeout(ctx.timeout, c.get_cluster(req)).await {
            Ok(Ok(r)) => match r.into_inner().cluster {
                Some(cl) => {
                    let v = cl.config.and_then(|c| c.migration_config).map(|m| m.scan_count as i64);
                    match v {
                        Some(v) => {
                            w.last_read.insert(key.to_owned(), (v, cl.epoch));
                            a.end(Kind::Ok, json!(v), None)
                        }
                        None => a.end(Kind::Fail, Value::Null, Some("no config in the reply".into())),
                    }
                }
                None => a.end(Kind::Fail, Value::Null, Some("cluster not found".into())),
            },
            Ok(Err(s)) => a.end(Kind::Fail, Value::Null, Some(format!("{:?} {}", s.code(), s.message()))),
            Err(_) => a.end(Kind::Fail, Value::Null, Some("timeout".into())),
        }
    } else {
        let a = Attempt::begin(ctx, w, "read", key, Value::Null, &http_addr, "http");
        let path = format!("/api/v3/clusters/meta/{key}");
        match w.http.call(&http_addr, "GET", &path, None, &[], ctx.timeout).await {
            Ok(r) if r.status == 200 => {
                let j = r.json();
                let epoch = r.header("etag").and_then(|e| e.trim_matches('"').parse().ok());
                match (scan_count_of(&j["cluster"]), epoch) {
                    (Some(v), Some(e)) => {
                        w.last_read.insert(key.to_owned(), (v, e));
                        a.end(Kind::Ok, json!(v), None)
                    }
                    _ => a.end(Kind::Fail, Value::Null, Some(format!("unexpected reply {j}"))),
                }
            }
            Ok(r) => {
                let code = r.error_code();
                a.end(Kind::Fail, Value::Null, code)
            }
            Err(e) => a.end(Kind::Fail, Value::Null, Some(e.to_string())),
        }
    }
}

async fn set_op(ctx: &Ctx, w: &mut Worker) {
    w.counter += 1;
    let element = format!("set-{}-{}:1", w.id, w.counter);
    let m = w.rng.below(ctx.brokers.len() as u64) as usize;
    let (http_addr, grpc_addr) = ctx.brokers[m].clone();
    let nodes = [format!("set-{}-{}:2", w.id, w.counter), format!("set-{}-{}:3", w.id, w.counter)];
    if w.rng.below(2) == 1 {
        let a = Attempt::begin(ctx, w, "add", "proxies", json!(element), &grpc_addr, "grpc");
        let Some(mut c) = w.grpc(m, &grpc_addr) else { return a.end(Kind::Fail, json!(element), None) };
        let req = pb::AddProxyRequest {
            proxy_address: element.clone(),
            nodes: nodes.to_vec(),
            host: Some("set".into()),
            index: None,
        };
        match tokio::time::timeout(ctx.timeout, c.add_proxy(req)).await {
            Ok(Ok(_)) => a.end(Kind::Ok, json!(element), None),
            Ok(Err(s)) if client::grpc_code(&s).as_deref() == Some("ALREADY_EXISTED") => {
                a.end(Kind::Ok, json!(element), Some("ALREADY_EXISTED".into()))
            }
            Ok(Err(s)) => {
                let (kind, why) = grpc_write_outcome(&s);
                a.end(kind, json!(element), Some(why))
            }
            Err(_) => a.end(Kind::Info, json!(element), Some("timeout".into())),
        }
    } else {
        let a = Attempt::begin(ctx, w, "add", "proxies", json!(element), &http_addr, "http");
        let body = json!({"proxy_address": element, "nodes": nodes, "host": "set"}).to_string();
        match w.http.call(&http_addr, "POST", "/api/v3/proxies/meta", Some(&body), &[], ctx.timeout).await {
            Ok(r) => {
                let code = r.error_code();
                let kind = if code.as_deref() == Some("ALREADY_EXISTED") { Kind::Ok } else { write_outcome(&r) };
                a.end(kind, json!(element), code)
            }
            Err(e) => a.end(call_error_outcome(&e), json!(element), Some(e.to_string())),
        }
    }
}

async fn epoch_op(ctx: &Ctx, w: &mut Worker) {
    let m = w.rng.below(ctx.brokers.len() as u64) as usize;
    let (http_addr, grpc_addr) = ctx.brokers[m].clone();
    let use_grpc = w.rng.below(2) == 1;
    if w.rng.below(3) == 0 && w.last_epoch > 0 {
        let n = w.last_epoch + 1 + w.rng.below(3);
        if use_grpc {
            let a = Attempt::begin(ctx, w, "bump", "epoch", json!(n), &grpc_addr, "grpc");
            let Some(mut c) = w.grpc(m, &grpc_addr) else { return a.end(Kind::Fail, json!(n), None) };
            match tokio::time::timeout(ctx.timeout, c.force_epoch(pb::Epoch { epoch: n })).await {
                Ok(Ok(_)) => {
                    w.last_epoch = n;
                    a.end(Kind::Ok, json!(n), None)
                }
                Ok(Err(s)) => {
                    let (kind, why) = grpc_write_outcome(&s);
                    a.end(kind, json!(n), Some(why))
                }
                Err(_) => a.end(Kind::Info, json!(n), Some("timeout".into())),
            }
        } else {
            let a = Attempt::begin(ctx, w, "bump", "epoch", json!(n), &http_addr, "http");
            match w.http.call(&http_addr, "PUT", &format!("/api/v3/epoch/{n}"), None, &[], ctx.timeout).await {
                Ok(r) => {
                    let code = r.error_code();
                    let kind = write_outcome(&r);
                    if kind == Kind::Ok {
                        w.last_epoch = n;
                    }
                    a.end(kind, json!(n), code)
                }
                Err(e) => a.end(call_error_outcome(&e), json!(n), Some(e.to_string())),
            }
        }
        return;
    }
    epoch_read(ctx, w, "read", m, use_grpc).await;
}

async fn epoch_read(ctx: &Ctx, w: &mut Worker, f: &str, m: usize, use_grpc: bool) -> Option<u64> {
    let (http_addr, grpc_addr) = ctx.brokers[m].clone();
    let got = if use_grpc {
        let a = Attempt::begin(ctx, w, f, "epoch", Value::Null, &grpc_addr, "grpc");
        let Some(mut c) = w.grpc(m, &grpc_addr) else {
            a.end(Kind::Fail, Value::Null, None);
            return None;
        };
        match tokio::time::timeout(ctx.timeout, c.get_epoch(pb::Empty {})).await {
            Ok(Ok(r)) => {
                let e = r.into_inner().epoch;
                a.end(Kind::Ok, json!(e), None);
                Some(e)
            }
            Ok(Err(s)) => {
                a.end(Kind::Fail, Value::Null, Some(s.message().to_owned()));
                None
            }
            Err(_) => {
                a.end(Kind::Fail, Value::Null, Some("timeout".into()));
                None
            }
        }
    } else {
        let a = Attempt::begin(ctx, w, f, "epoch", Value::Null, &http_addr, "http");
        match w.http.call(&http_addr, "GET", "/api/v3/epoch", None, &[], ctx.timeout).await {
            Ok(r) if r.status == 200 => match r.json().as_u64() {
                Some(e) => {
                    a.end(Kind::Ok, json!(e), None);
                    Some(e)
                }
                None => {
                    a.end(Kind::Fail, Value::Null, Some("not a number".into()));
                    None
                }
            },
            Ok(r) => {
                a.end(Kind::Fail, Value::Null, r.error_code());
                None
            }
            Err(e) => {
                a.end(Kind::Fail, Value::Null, Some(e.to_string()));
                None
            }
        }
    };
    if let Some(e) = got {
        w.last_epoch = w.last_epoch.max(e);
    }
    got
}

fn cluster_outcome(reply: ClusterReply) -> (Kind, Option<Frame>, Option<String>, Option<String>) {
    match reply {
        ClusterReply::Done(Frame::Error(e), via) => (Kind::Fail, None, Some(e), Some(via)),
        ClusterReply::Done(f, via) => (Kind::Ok, Some(f), None, Some(via)),
        ClusterReply::Refused(e) => (Kind::Fail, None, Some(e), None),
        ClusterReply::Unknown(e) => (Kind::Info, None, Some(e), None),
    }
}

fn record_redis(ctx: &Ctx, w: &Worker, f: &str, key: &str, invoke: Value) -> Note {
    let note = Note {
        process: w.id,
        f: f.into(),
        key: Some(key.into()),
        value: invoke,
        proto: Some("resp".into()),
        ..Note::default()
    };
    ctx.rec.record(Kind::Invoke, note.clone());
    note
}

async fn redis_register_op(ctx: &Ctx, w: &mut Worker) {
    let key = format!("r{}", w.rng.below(REDIS_KEYS as u64));
    let read = w.rng.below(2) == 0;
    w.counter += 1;
    // Unique values: what a read returns names the one write it came from.
    let value = (w.id as i64) * 1_000_000_000 + w.counter as i64;
    let note =
        record_redis(ctx, w, if read { "read" } else { "write" }, &key, if read { Value::Null } else { json!(value) });
    let Some(cc) = w.cluster.as_mut() else { return };
    let reply = if read {
        cc.cmd(&key, &["GET", &key], ctx.timeout).await
    } else {
        cc.cmd(&key, &["SET", &key, &value.to_string()], ctx.timeout).await
    };
    let (kind, frame, error, via) = cluster_outcome(reply);
    let result = match (read, frame) {
        (true, Some(f)) => int_value(f),
        (false, _) => json!(value),
        _ => Value::Null,
    };
    let kind = if read && kind == Kind::Info { Kind::Fail } else { kind };
    ctx.rec.record(kind, Note { value: result, error, via, ..note });
}

async fn redis_set_op(ctx: &Ctx, w: &mut Worker) {
    let key = format!("s{}", w.rng.below(REDIS_KEYS as u64));
    w.counter += 1;
    let element = format!("{}-{}", w.id, w.counter);
    let note = record_redis(ctx, w, "add", &key, json!(element));
    let Some(cc) = w.cluster.as_mut() else { return };
    let reply = cc.cmd(&key, &["SADD", &key, &element], ctx.timeout).await;
    let (kind, _, error, via) = cluster_outcome(reply);
    ctx.rec.record(kind, Note { value: json!(element), error, via, ..note });
}

/// Final reads after every fault is healed (with retries: the system may still be settling).
pub async fn final_reads(ctx: &Ctx, w: &mut Worker) {
    match ctx.kind {
        Workload::Register => {
            for k in 0..REGISTER_KEYS {
                let key = format!("k{k}");
                for attempt in 0..20 {
                    let before = ctx.rec.counts().1;
                    register_read(ctx, w, &key, attempt % ctx.brokers.len(), false).await;
                    if ctx.rec.counts().1 > before {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Workload::Epoch => {
            for attempt in 0..20 {
                if epoch_read(ctx, w, "read", attempt % ctx.brokers.len(), false).await.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Workload::Set => {
            for attempt in 0..40 {
                let (http_addr, _) = ctx.brokers[attempt % ctx.brokers.len()].clone();
                let a = Attempt::begin(ctx, w, "final-read", "proxies", Value::Null, &http_addr, "http");
                match w.http.call(&http_addr, "GET", "/api/v3/proxies/addresses", None, &[], ctx.timeout).await {
                    Ok(r) if r.status == 200 => {
                        let all: Vec<Value> = r.json()["addresses"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter(|x| x.as_str().is_some_and(|s| s.starts_with("set-")))
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        a.end(Kind::Ok, Value::Array(all), None);
                        return;
                    }
                    Ok(r) => a.end(Kind::Fail, Value::Null, r.error_code()),
                    Err(e) => a.end(Kind::Fail, Value::Null, Some(e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Workload::RedisRegister => {
            for k in 0..REDIS_KEYS {
                let key = format!("r{k}");
                final_redis_read(ctx, w, "read", &key, &["GET", &key], int_value).await;
            }
        }
        Workload::RedisSet => {
            for k in 0..REDIS_KEYS {
                let key = format!("s{k}");
                final_redis_read(ctx, w, "final-read", &key, &["SMEMBERS", &key], members).await;
            }
        }
    }
}

/// A register value read back from Redis (`null` for a missing key).
fn int_value(f: Frame) -> Value {
    match f {
        Frame::Bulk(b) => {
            std::str::from_utf8(&b).ok().and_then(|s| s.parse::<i64>().ok()).map(Value::from).unwrap_or_default()
        }
        _ => Value::Null,
    }
}

/// A set's members read back from Redis.
fn members(f: Frame) -> Value {
    match f {
        Frame::Array(items) | Frame::Set(items) => Value::Array(
            items
                .iter()
                .filter_map(|f| match f {
                    Frame::Bulk(b) => Some(Value::String(String::from_utf8_lossy(b).into_owned())),
                    _ => None,
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// A read after the faults are healed, retried until it answers (bounded).
async fn final_redis_read(ctx: &Ctx, w: &mut Worker, f: &str, key: &str, args: &[&str], parse: fn(Frame) -> Value) {
    for _ in 0..20 {
        let note = record_redis(ctx, w, f, key, Value::Null);
        let Some(cc) = w.cluster.as_mut() else { return };
        let (kind, frame, error, via) = cluster_outcome(cc.cmd(key, args, ctx.timeout).await);
        let result = frame.map(parse).unwrap_or_default();
        // A read whose answer was lost says nothing: a failure, not an unknown outcome.
        let kind = if kind == Kind::Info { Kind::Fail } else { kind };
        ctx.rec.record(kind, Note { value: result, error, via, ..note });
        if kind == Kind::Ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Before the test: what the workload needs to exist, and the registers' initial values.
pub async fn setup(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, Option<i64>>> {
    let mut initial = BTreeMap::new();
    let call = |method: &'static str, path: String, body: Option<String>| async move {
        for attempt in 0..100 {
            let (addr, _) = &ctx.brokers[attempt % ctx.brokers.len()];
            match client::http(addr, method, &path, body.as_deref(), &[], Duration::from_secs(10)).await {
                Ok(r) if r.status == 409 && r.error_code().as_deref() == Some("RETRY") => {}
                Ok(r) if r.status == 503 => {}
                Ok(r) => return Ok(r),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("{method} {path}: no answer from the brokers")
    };
    match ctx.kind {
        Workload::Register => {
            // Two placeholder proxies per cluster (never started: only their registration).
            for i in 0..2 * REGISTER_KEYS {
                let body = json!({"proxy_address": format!("reg-{i}:1"), "nodes": [format!("reg-{i}:2"), format!("reg-{i}:3")], "host": format!("reg-h{i}")});
                let r = call("POST", "/api/v3/proxies/meta".into(), Some(body.to_string())).await?;
                anyhow::ensure!(
                    r.status == 200 || r.error_code().as_deref() == Some("ALREADY_EXISTED"),
                    "register proxy: {}",
                    r.status
                );
            }
            for k in 0..REGISTER_KEYS {
                let r =
                    call("POST", format!("/api/v3/clusters/meta/k{k}"), Some(r#"{"node_number": 4}"#.into())).await?;
                anyhow::ensure!(r.status == 200, "create k{k}: {} {}", r.status, String::from_utf8_lossy(&r.body));
                let r = call("GET", format!("/api/v3/clusters/meta/k{k}"), None).await?;
                initial.insert(format!("k{k}"), scan_count_of(&r.json()["cluster"]));
            }
        }
        Workload::RedisRegister | Workload::RedisSet => {
            // Each proxy its own host.
            for (i, (p, nodes)) in ctx.proxies.iter().zip(&ctx.proxy_nodes).enumerate() {
                let body = json!({"proxy_address": p, "nodes": nodes, "host": format!("host{i}")});
                let r = call("POST", "/api/v3/proxies/meta".into(), Some(body.to_string())).await?;
                anyhow::ensure!(
                    r.status == 200 || r.error_code().as_deref() == Some("ALREADY_EXISTED"),
                    "register {p}: {}",
                    r.status
                );
            }
            let r =
                call("POST", format!("/api/v3/clusters/meta/{REDIS_CLUSTER}"), Some(r#"{"node_number": 4}"#.into()))
                    .await?;
            anyhow::ensure!(
                r.status == 200,
                "create {REDIS_CLUSTER}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            // Until every proxy of the cluster has its metadata and writes go through.
            let mut w = Worker::new(u64::MAX - 1, 1, &ctx.proxies);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let cc = w.cluster.as_mut().ok_or_else(|| anyhow::anyhow!("no proxies"))?;
                let mut all = true;
                for k in 0..REDIS_KEYS {
                    let key = format!("setup{k}");
                    if !matches!(
                        cc.cmd(&key, &["SET", &key, "1"], Duration::from_secs(2)).await,
                        ClusterReply::Done(Frame::Simple(_), _)
                    ) {
                        all = false;
                    }
                }
                if all {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the Redis cluster did not start serving in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Workload::Set | Workload::Epoch => {}
    }
    Ok(initial)
}
