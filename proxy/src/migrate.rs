//! Online slot migration, data path (`docs/migration.md`).
//!
//! Source (migrating task): PreCheck (the destination has the metadata) → PreBlocking (only
//! the migrating slots answer TRYAGAIN — not the whole node — and the commands already sent
//! for them drain) → PreSwitch (the destination takes over) → Scanning (copy every key:
//! SCAN, PTTL+DUMP, RESTORE, DEL, pipelined per batch) → FinalSwitch → SwitchCommitted.
//! If the drain does not finish within `max_blocking_time`, the slots are released and the
//! task goes back to PreCheck (`docs/compatibility.md#no-forced-switch`). There is no forced
//! commit: the task commits only when the scan has moved every key.
//!
//! Destination (importing task) between PreSwitch and SwitchCommitted: a command whose key is
//! not in the destination node yet first asks the source proxy to move it (`UMSYNC <key>`),
//! which copies it under the same per-key claim as the scanner, so a key is never restored
//! after a client changed or deleted it at the destination. The client's later commands wait for
//! it, so its pipeline keeps its order.

use crate::backend::NodePool;
use crate::cluster::{MigrationTask, TaskState};
use crate::resp::{self, Frame, Request};
use crate::slot::key_slot;
use crate::state::ProxyState;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

/// The version tag of the switch hand-shake (`UMCTL PRECHECK/PRESWITCH/FINALSWITCH`), checked
/// by the destination.
pub const MGR_VERSION: &str = "mgr-0.2";

/// Starts a driver for every migrating task of the installed table that has none yet.
pub fn start_tasks(state: &Arc<ProxyState>) {
    let installed = state.installed.load();
    for task in installed.table.tasks.iter().filter(|t| !t.importing) {
        if !task.shared.started.swap(true, Ordering::AcqRel) {
            let cluster = installed.table.meta.name.clone();
            // Every log line of the task carries its cluster, slots and the two proxies.
            let slots: Vec<String> = task.ranges.iter().map(|r| r.to_string()).collect();
            let span = tracing::info_span!(
                "migration",
                cluster = %cluster,
                slots = %slots.join(","),
                src = %task.meta.src_proxy_address,
                dst = %task.meta.dst_proxy_address,
            );
            tokio::spawn(run_source(state.clone(), cluster, task.clone()).instrument(span));
        }
    }
}

/// The task is still in the installed metadata (same identity).
fn alive(state: &ProxyState, task: &MigrationTask) -> bool {
    state.installed.load().table.tasks.iter().any(|t| Arc::ptr_eq(&t.shared, &task.shared))
}

fn switch_args(cmd: &str, cluster: &str, task: &MigrationTask) -> Request {
    let mut args: Vec<String> = vec!["UMCTL".into(), cmd.into(), MGR_VERSION.into(), cluster.into()];
    args.push("MIGRATING".into());
    args.push(task.ranges.len().to_string());
    args.extend(task.ranges.iter().map(|r| format!("{}-{}", r.start, r.end)));
    args.extend([
        task.meta.epoch.to_string(),
        task.meta.src_proxy_address.clone(),
        task.meta.src_node_address.clone(),
        task.meta.dst_proxy_address.clone(),
        task.meta.dst_node_address.clone(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Request::from_strs(&refs)
}

async fn call(pool: &NodePool, req: &Request) -> Result<Frame, String> {
    let raw = tokio::time::timeout(Duration::from_secs(5), pool.call(req))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    match Frame::parse(&raw) {
        Ok(Some((f, _))) => Ok(f),
        _ => Err("unparsable reply".into()),
    }
}

fn is_ok(f: &Frame) -> bool {
    matches!(f, Frame::Simple(s) if s == "OK")
}

/// Sends a switch command to the destination proxy every `every` until it answers `+OK`, the
/// task disappears, or `deadline` passes. Returns whether it was acknowledged.
async fn switch(
    state: &ProxyState,
    dst: &NodePool,
    req: &Request,
    task: &MigrationTask,
    every: Duration,
    deadline: Option<Instant>,
) -> bool {
    loop {
        match call(dst, req).await {
            Ok(f) if is_ok(&f) => return true,
            Ok(_) | Err(_) => {}
        }
        if !alive(state, task) || deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

async fn run_source(state: Arc<ProxyState>, cluster: String, task: MigrationTask) {
    let sh = task.shared.clone();
    let dst_proxy = state.registry.peer_pool(&task.meta.dst_proxy_address);
    let config = state.installed.load().table.meta.config.clone();
    let max_blocking = Duration::from_millis(config.migration_config.max_blocking_time.max(1));
    info!(cluster = %cluster, ranges = %task.ranges_tokens(), dst = %task.meta.dst_proxy_address, "migration started");
    // PreCheck → PreBlocking → PreSwitch, retried from PreCheck if the drain times out.
    loop {
        task.set_state(TaskState::PreCheck);
        let precheck = switch_args("PRECHECK", &cluster, &task);
        if !switch(&state, &dst_proxy, &precheck, &task, Duration::from_millis(10), None).await {
            return;
        }
        task.set_state(TaskState::PreBlocking);
        sh.draining.notify_waiters();
        let deadline = Instant::now() + max_blocking;
        while sh.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if sh.inflight.load(Ordering::SeqCst) > 0 {
            warn!(cluster = %cluster, ranges = %task.ranges_tokens(), "commands did not drain within max_blocking_time: releasing the slots and retrying");
            continue;
        }
        task.set_state(TaskState::PreSwitch);
        // Once PRESWITCH may have reached the destination there is no way back: keep the
        // slots blocked until it is acknowledged.
        let preswitch = switch_args("PRESWITCH", &cluster, &task);
        if !switch(&state, &dst_proxy, &preswitch, &task, Duration::from_millis(1), None).await {
            return;
        }
        task.set_state(TaskState::Scanning);
        break;
    }
    info!(cluster = %cluster, ranges = %task.ranges_tokens(), "migration switched; copying keys");
    let started = Instant::now();
    let copied = {
        let (state, cluster, task) = (state.clone(), cluster.clone(), task.clone());
        crate::background::run(
            state.config.migration_copy_nice,
            async move { scan(&state, &cluster, &task, &config).await },
        )
        .await
    };
    if !copied {
        return;
    }
    sh.scan_finished.store(true, Ordering::Release);
    // Pulls already under way finish first (including their deletes at the source), so no
    // key is left behind on the source once its slots are committed away.
    while !sh.busy_keys.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        if !alive(&state, &task) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.set_state(TaskState::FinalSwitch);
    let finalswitch = switch_args("FINALSWITCH", &cluster, &task);
    if !switch(&state, &dst_proxy, &finalswitch, &task, Duration::from_millis(1), None).await {
        return;
    }
    task.set_state(TaskState::SwitchCommitted);
    info!(
        cluster = %cluster,
        ranges = %task.ranges_tokens(),
        keys = sh.keys_moved.load(Ordering::Relaxed),
        pulled = sh.keys_pulled.load(Ordering::Relaxed),
        bytes = sh.bytes_moved.load(Ordering::Relaxed),
        secs = started.elapsed().as_secs_f64(),
        "migration finished"
    );
}

/// Copies `keys` from the source node to the destination node and deletes them at the
/// source (caller holds the task's copy lock). BUSYKEY at the destination means the key
/// is already there (newer): kept, and the source copy is deleted.
/// Keys whose value takes more than this are copied in chunks (`chunked_copy`), so that no
/// single DUMP/RESTORE blocks a Redis node for long.
const BIG_KEY_BYTES: i64 = 4 << 20;
/// Elements (or bytes / 1024 for strings) per chunk of a big key.
const CHUNK: usize = 1000;

fn req(parts: &[&[u8]]) -> Request {
    Request::from_args(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
}

fn bulk_items(f: Frame) -> Vec<Bytes> {
    match f {
        Frame::Array(items) => {
            items.into_iter().filter_map(|i| if let Frame::Bulk(b) = i { Some(b) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}

/// Copies one big key element by element into a temporary key at the destination, then
/// renames it into place (keeping the destination's copy if it has one) and unlinks the
/// source. Returns false for types it does not chunk (the caller DUMPs those).
async fn chunked_copy(
    state: &ProxyState,
    src: &NodePool,
    dst: &NodePool,
    key: &Bytes,
    task: &MigrationTask,
) -> Result<bool, String> {
    let kind = match call(src, &req(&[b"TYPE", key])).await? {
        Frame::Simple(t) => t,
        other => return Err(format!("TYPE: {other}")),
    };
    let ttl = match call(src, &req(&[b"PTTL", key])).await? {
        Frame::Integer(-2) => return Ok(true), // gone meanwhile
        Frame::Integer(t) if t > 0 => t,
        _ => 0,
    };
    let mut tmp = b"__moonraft_migrating__:".to_vec();
    tmp.extend_from_slice(key);
    let tmp = Bytes::from(tmp);
    call(dst, &req(&[b"DEL", &tmp])).await?;
    let check = |f: Frame| match f {
        Frame::Error(e) => Err(format!("copying big key {}: {e}", String::from_utf8_lossy(key))),
        _ => Ok(()),
    };
    let mut moved_bytes = 0u64;
    match kind.as_str() {
        "hash" | "set" | "zset" => {
            let (scan, add): (&[u8], &[u8]) = match kind.as_str() {
                "hash" => (b"HSCAN", b"HSET"),
                "set" => (b"SSCAN", b"SADD"),
                _ => (b"ZSCAN", b"ZADD"),
            };
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let count = CHUNK.to_string();
                let reply = call(src, &req(&[scan, key, &cursor, b"COUNT", count.as_bytes()])).await?;
                let Frame::Array(mut parts) = reply else {
                    return Err(format!("{}: bad reply", String::from_utf8_lossy(scan)));
                };
                let items = parts.pop().map(bulk_items).unwrap_or_default();
                cursor = match parts.pop() {
                    Some(Frame::Bulk(c)) => c,
                    _ => Bytes::from_static(b"0"),
                };
                if !items.is_empty() {
                    let mut args = vec![Bytes::copy_from_slice(add), tmp.clone()];
                    if kind == "zset" {
                        // ZSCAN gives member, score; ZADD takes score, member.
                        for pair in items.chunks(2) {
                            if let [member, score] = pair {
                                args.push(score.clone());
                                args.push(member.clone());
                            }
                        }
                    } else {
                        args.extend(items.iter().cloned());
                    }
                    moved_bytes += items.iter().map(|b| b.len() as u64).sum::<u64>();
                    check(call(dst, &Request::from_args(args)).await?)?;
                }
                if &cursor[..] == b"0" {
                    break;
                }
            }
        }
        "list" => {
            let mut start = 0usize;
            loop {
                let (a, b) = (start.to_string(), (start + CHUNK - 1).to_string());
                let items = bulk_items(call(src, &req(&[b"LRANGE", key, a.as_bytes(), b.as_bytes()])).await?);
                if items.is_empty() {
                    break;
                }
                start += items.len();
                moved_bytes += items.iter().map(|b| b.len() as u64).sum::<u64>();
                let mut args = vec![Bytes::from_static(b"RPUSH"), tmp.clone()];
                args.extend(items);
                check(call(dst, &Request::from_args(args)).await?)?;
            }
        }
        "string" => {
            let step = CHUNK * 1024;
            let mut start = 0usize;
            loop {
                let (a, b) = (start.to_string(), (start + step - 1).to_string());
                let chunk = match call(src, &req(&[b"GETRANGE", key, a.as_bytes(), b.as_bytes()])).await? {
                    Frame::Bulk(c) => c,
                    other => return Err(format!("GETRANGE: {other}")),
                };
                if chunk.is_empty() {
                    break;
                }
                start += chunk.len();
                moved_bytes += chunk.len() as u64;
                check(call(dst, &Request::from_args(vec![Bytes::from_static(b"APPEND"), tmp.clone(), chunk])).await?)?;
            }
        }
        _ => return Ok(false),
    }
    // Into place, unless the destination already has the key (then its copy is newer).
    match call(dst, &req(&[b"RENAMENX", &tmp, key])).await? {
        Frame::Integer(1) => {
            if ttl > 0 {
                let t = ttl.to_string();
                call(dst, &req(&[b"PEXPIRE", key, t.as_bytes()])).await?;
            }
        }
        Frame::Integer(_) => {
            call(dst, &req(&[b"DEL", &tmp])).await?;
        }
        Frame::Error(e) if e.contains("no such key") => {} // empty collection: nothing to place
        other => return Err(format!("RENAMENX: {other}")),
    }
    call(src, &req(&[b"UNLINK", key])).await?;
    info!(key = %String::from_utf8_lossy(key), bytes = moved_bytes, "big {kind} key copied in chunks");
    count_moved(state, task, 1, moved_bytes);
    Ok(true)
}

/// Copies a batch with one pipelined command per key and step: MEMORY USAGE (big keys go in
/// chunks), PTTL + DUMP, RESTORE, and one DEL per batch. (Tried: one Lua script per batch for
/// each side. It used less proxy CPU but kept Redis busy in longer atomic stretches, and
/// clients' latency during the copy got worse, so the copy stays pipelined.)
async fn copy_keys(
    state: &ProxyState,
    src: &NodePool,
    dst: &NodePool,
    keys: &[Bytes],
    task: &MigrationTask,
) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    let pin = 0;
    // Big values go element by element; MEMORY USAGE is O(1) for strings and samples
    // aggregates, so this costs one pipelined round trip per batch.
    let mut sizes = Vec::with_capacity(keys.len());
    for k in keys {
        sizes.push(src.send(req(&[b"MEMORY", b"USAGE", k]).raw, pin).await);
    }
    let mut small = Vec::with_capacity(keys.len());
    for (k, size) in keys.iter().zip(sizes) {
        let size = size.await.map_err(|_| "source connection lost".to_owned())?.map_err(|e| e.to_string())?;
        let big = matches!(Frame::parse(&size), Ok(Some((Frame::Integer(n), _))) if n > BIG_KEY_BYTES);
        if !big || !chunked_copy(state, src, dst, k, task).await? {
            small.push(k.clone());
        }
    }
    let keys = &small[..];
    let mut replies = Vec::with_capacity(keys.len() * 2);
    for k in keys {
        replies.push(src.send(Request::from_args(vec![Bytes::from_static(b"PTTL"), k.clone()]).raw, pin).await);
        replies.push(src.send(Request::from_args(vec![Bytes::from_static(b"DUMP"), k.clone()]).raw, pin).await);
    }
    let mut restores = Vec::new();
    let mut present = Vec::new();
    let mut bytes = 0u64;
    let mut it = replies.into_iter();
    for k in keys {
        let (Some(pttl), Some(dump)) = (it.next(), it.next()) else { break };
        let pttl = pttl.await.map_err(|_| "source connection lost".to_owned())?.map_err(|e| e.to_string())?;
        let dump = dump.await.map_err(|_| "source connection lost".to_owned())?.map_err(|e| e.to_string())?;
        let ttl = match Frame::parse(&pttl) {
            Ok(Some((Frame::Integer(-2), _))) => continue, // gone meanwhile
            Ok(Some((Frame::Integer(t), _))) if t > 0 => t,
            _ => 0,
        };
        let payload = match Frame::parse(&dump) {
            Ok(Some((Frame::Bulk(b), _))) => b,
            Ok(Some((Frame::Error(e), _))) => return Err(format!("DUMP: {e}")),
            _ => continue,
        };
        bytes += payload.len() as u64;
        restores.push(Request::from_args(vec![
            Bytes::from_static(b"RESTORE"),
            k.clone(),
            Bytes::from(ttl.to_string()),
            payload,
        ]));
        present.push(k.clone());
    }
    let mut waits = Vec::with_capacity(restores.len());
    for r in restores {
        waits.push(dst.send(r.raw, pin).await);
    }
    for (w, k) in waits.into_iter().zip(&present) {
        let reply = w.await.map_err(|_| "destination connection lost".to_owned())?.map_err(|e| e.to_string())?;
        if reply.starts_with(b"-") && !reply.starts_with(b"-BUSYKEY") {
            let text = String::from_utf8_lossy(&reply[1..]).trim_end().to_owned();
            return Err(format!("RESTORE {}: {text}", String::from_utf8_lossy(k)));
        }
    }
    count_moved(state, task, present.len() as u64, bytes);
    delete_at_source(state, src, &present, task).await;
    Ok(())
}

/// Deletes keys the destination now has from the source node, retrying until it succeeds or
/// the task goes away. The caller holds the keys' claim throughout: were it released with the
/// keys still on the source, a client could delete a key at the destination and a later copy
/// would bring the old value back.
async fn delete_at_source(state: &ProxyState, src: &NodePool, keys: &[Bytes], task: &MigrationTask) {
    if keys.is_empty() {
        return;
    }
    let mut del = vec![Bytes::from_static(b"DEL")];
    del.extend(keys.iter().cloned());
    let del = Request::from_args(del);
    let mut backoff = Duration::from_millis(10);
    loop {
        match call(src, &del).await {
            Ok(Frame::Integer(_)) => return,
            other => {
                let e = format!("deleting copied keys at the source {}: {other:?}", task.meta.src_node_address);
                warn!("{e}; retrying");
                set_error(task, Some(e));
            }
        }
        if !alive(state, task) {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The source side of a pull in one round trip: PTTL, then the DUMP payload, or the integer 1
/// when the value is bigger than ARGV[1] bytes (copied in chunks instead), or nothing if the
/// key is gone. One key only, so the script holds Redis for microseconds. (For scanner
/// batches a script per batch was tried and hurt clients' latency: see `copy_keys`.)
const PULL_READ_SCRIPT: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return {ttl, false} end
local len = redis.pcall('STRLEN', KEYS[1])
if type(len) ~= 'number' then len = redis.call('MEMORY', 'USAGE', KEYS[1]) or 0 end
if len > tonumber(ARGV[1]) then return {ttl, 1} end
return {ttl, redis.call('DUMP', KEYS[1])}
"#;

/// Pulls one key for a client at the destination (`UMSYNC`): copied once `RESTORE` succeeded;
/// returns the keys still to delete at the source. Falls back to `copy_keys` where scripting is
/// unavailable (disabled by ACL or renamed).
async fn pull_one(
    state: &ProxyState,
    src: &NodePool,
    dst: &NodePool,
    key: &Bytes,
    task: &MigrationTask,
) -> Result<Vec<Bytes>, String> {
    let limit = BIG_KEY_BYTES.to_string();
    let read = call(src, &req(&[b"EVAL", PULL_READ_SCRIPT.as_bytes(), b"1", key, limit.as_bytes()])).await?;
    let (ttl, value) = match read {
        Frame::Array(mut items) if items.len() == 2 => {
            let value = items.pop();
            (items.pop(), value)
        }
        Frame::Error(e)
            if e.starts_with("ERR unknown command") || e.starts_with("NOPERM") || e.contains("disabled") =>
        {
            let before = task.shared.keys_moved.load(Ordering::Relaxed);
            copy_keys(state, src, dst, std::slice::from_ref(key), task).await?;
            if task.shared.keys_moved.load(Ordering::Relaxed) != before {
                count_pulled(state, task);
            }
            return Ok(Vec::new());
        }
        other => return Err(format!("reading {} at the source: {other}", String::from_utf8_lossy(key))),
    };
    let ttl = match ttl {
        Some(Frame::Integer(-2)) => return Ok(Vec::new()), // not on the source
        Some(Frame::Integer(t)) if t > 0 => t,
        _ => 0,
    };
    let payload = match value {
        Some(Frame::Bulk(p)) => p,
        Some(Frame::Integer(1)) => {
            if !chunked_copy(state, src, dst, key, task).await? {
                copy_keys(state, src, dst, std::slice::from_ref(key), task).await?;
            }
            return Ok(Vec::new());
        }
        _ => return Ok(Vec::new()),
    };
    let bytes = payload.len() as u64;
    let ttl = ttl.to_string();
    match call(dst, &Request::from_args(vec![Bytes::from_static(b"RESTORE"), key.clone(), Bytes::from(ttl), payload]))
        .await?
    {
        Frame::Simple(_) => {}
        Frame::Error(e) if e.starts_with("BUSYKEY") => {}
        Frame::Error(e) => return Err(format!("RESTORE {}: {e}", String::from_utf8_lossy(key))),
        other => return Err(format!("RESTORE {}: unexpected reply {other}", String::from_utf8_lossy(key))),
    }
    count_moved(state, task, 1, bytes);
    count_pulled(state, task);
    Ok(vec![key.clone()])
}

/// Claims `keys` for copying (waits while any of them is being copied by someone else);
/// released when the guard drops. Owns its task's state so it can outlive the caller (a pull
/// answers the client and finishes deleting at the source afterwards).
struct Claim {
    shared: Arc<crate::cluster::TaskShared>,
    keys: Vec<Bytes>,
}

impl Claim {
    async fn take(task: &MigrationTask, keys: &[Bytes]) -> Claim {
        loop {
            {
                let mut busy = task.shared.busy_keys.lock().unwrap_or_else(|p| p.into_inner());
                if keys.iter().all(|k| !busy.contains(k)) {
                    busy.extend(keys.iter().cloned());
                    return Claim { shared: task.shared.clone(), keys: keys.to_vec() };
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut busy = self.shared.busy_keys.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            busy.remove(k);
        }
    }
}

/// Counts moved keys for the task's progress and the proxy's metrics.
fn count_moved(state: &ProxyState, task: &MigrationTask, keys: u64, bytes: u64) {
    task.shared.keys_moved.fetch_add(keys, Ordering::Relaxed);
    task.shared.bytes_moved.fetch_add(bytes, Ordering::Relaxed);
    state.metrics.migration_keys.fetch_add(keys, Ordering::Relaxed);
    state.metrics.migration_bytes.fetch_add(bytes, Ordering::Relaxed);
}

fn count_pulled(state: &ProxyState, task: &MigrationTask) {
    task.shared.keys_pulled.fetch_add(1, Ordering::Relaxed);
    state.metrics.migration_pulls.fetch_add(1, Ordering::Relaxed);
}

fn set_error(task: &MigrationTask, e: Option<String>) {
    *task.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
}

/// The scanner: SCAN the source node, copy the keys of the task's slots in batches. Errors
/// (a node down, RESTORE refused) pause the copy with the reason recorded, and it resumes
/// from the same cursor. Returns false if the task went away.
async fn scan(state: &ProxyState, cluster: &str, task: &MigrationTask, config: &crate::cluster::ClusterConfig) -> bool {
    // Connections of the copy's own: its pipelines of hundreds of commands must not queue in
    // front of client commands on the connections the sessions share.
    let src = state.registry.private_pool(&task.meta.src_node_address, 1);
    let dst = state.registry.private_pool(&task.meta.dst_node_address, 1);
    // The spec's default (16) makes a large copy crawl; a batch of a few hundred keys keeps
    // Redis responsive (each SCAN/DUMP is short) while amortising round trips.
    let count = config.migration_config.scan_count.max(512).to_string();
    // Progress: an estimate of the keys to move, from the node's key count and our share of
    // its slots (keys spread evenly over slots).
    if let Ok(Frame::Integer(n)) = call(&src, &Request::from_strs(&["DBSIZE"])).await {
        let table_slots = state.installed.load().table.node_slot_count(&task.meta.src_node_address).max(1);
        let task_slots: u64 = task.ranges.iter().map(|r| u64::from(r.end - r.start) + 1).sum();
        let estimate = (n.max(0) as u64).saturating_mul(task_slots) / table_slots;
        task.shared.keys_estimate.store(estimate, Ordering::Relaxed);
    }
    *task.shared.copy_started.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    let mut cursor = Bytes::from_static(b"0");
    let mut backoff = Duration::from_millis(10);
    loop {
        if !alive(state, task) {
            return false;
        }
        let scan = Request::from_args(vec![
            Bytes::from_static(b"SCAN"),
            cursor.clone(),
            Bytes::from_static(b"COUNT"),
            Bytes::from(count.clone()),
        ]);
        let (next, keys) = match call(&src, &scan).await {
            Ok(Frame::Array(mut parts)) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(Frame::Array(k)) => k,
                    _ => Vec::new(),
                };
                let next = match parts.pop() {
                    Some(Frame::Bulk(c)) => c,
                    _ => Bytes::from_static(b"0"),
                };
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Frame::Bulk(b) if task.contains(key_slot(&b)) => Some(b),
                        _ => None,
                    })
                    .collect();
                (next, keys)
            }
            other => {
                let e = format!("SCAN on {}: {other:?}", task.meta.src_node_address);
                warn!(cluster = %cluster, "{e}; retrying");
                set_error(task, Some(e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let copied = {
            let _claim = Claim::take(task, &keys).await;
            copy_keys(state, &src, &dst, &keys, task).await
        };
        if let Err(e) = copied {
            warn!(cluster = %cluster, "copy paused: {e}; retrying the batch");
            state.metrics.migration_copy_errors.fetch_add(1, Ordering::Relaxed);
            set_error(task, Some(e));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        set_error(task, None);
        backoff = Duration::from_millis(10);
        if &next[..] == b"0" {
            return true;
        }
        cursor = next;
    }
}

/// `UMSYNC <key>` on the source proxy: move one key now (claimed like a scanner batch).
pub async fn umsync(state: Arc<ProxyState>, key: Bytes) -> Bytes {
    let slot = key_slot(&key);
    let task = {
        let installed = state.installed.load();
        installed.table.task_for_slot(slot).filter(|t| !t.importing).cloned()
    };
    let Some(task) = task else { return resp::error("MIGRATION_TASK_NOT_FOUND") };
    if task.shared.scan_finished.load(Ordering::Acquire) {
        return resp::simple("MIGRATING_FINISHED");
    }
    if task.state() < TaskState::PreSwitch {
        return resp::error("MIGRATION_TASK_NOT_FOUND");
    }
    let src = state.registry.pool(&task.meta.src_node_address, 2);
    let dst = state.registry.pool(&task.meta.dst_node_address, 2);
    let claim = Claim::take(&task, std::slice::from_ref(&key)).await;
    if task.shared.scan_finished.load(Ordering::Acquire) {
        return resp::simple("MIGRATING_FINISHED");
    }
    match pull_one(&state, &src, &dst, &key, &task).await {
        Ok(delete) => {
            // The destination has the key: answer now, and delete it at the source while
            // still holding its claim.
            if !delete.is_empty() {
                tokio::spawn(async move {
                    delete_at_source(&state, &src, &delete, &task).await;
                    drop(claim);
                });
            }
            Bytes::from_static(resp::OK)
        }
        Err(e) => resp::error(&format!("ERR failed to move the key: {e}")),
    }
}

/// The destination's connections to the task's source proxy, opened on first use and kept for
/// the task's life.
fn source_proxy<'a>(state: &ProxyState, task: &'a MigrationTask) -> &'a Arc<NodePool> {
    task.shared.source_proxy.get_or_init(|| state.registry.peer_pool(&task.meta.src_proxy_address))
}

/// The reply to a command sent with `NodePool::send`, or an error reply (the backend's reply
/// timeout bounds the wait).
async fn settle(rx: tokio::sync::oneshot::Receiver<crate::backend::ReplyResult>) -> Result<Bytes, Bytes> {
    match rx.await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(resp::error(&e.to_string())),
        Err(_) => Err(resp::error("ERR_BACKEND_CONNECTION: connection lost")),
    }
}

/// `EXISTS key` and then `raw` on the same connection of `pool`: whether the key was there and
/// the command's reply (an error reply if `EXISTS` failed).
async fn exists_and_run(pool: &NodePool, key: Bytes, raw: Bytes, pin: usize) -> Result<(bool, Bytes), Bytes> {
    let exists = pool.send(Request::from_args(vec![Bytes::from_static(b"EXISTS"), key]).raw, pin).await;
    let reply = pool.send(raw, pin).await;
    let (exists, reply) = (settle(exists).await?, settle(reply).await?);
    match &exists[..] {
        b":0\r\n" => Ok((false, reply)),
        e if e.starts_with(b":") => Ok((true, reply)),
        _ => Err(exists),
    }
}

/// Destination, importing slot not committed yet: make sure each key is here (pulling it
/// through the source proxy), then run the command on the destination node.
pub async fn pull_then_run(
    state: Arc<ProxyState>,
    task: MigrationTask,
    pool: Arc<NodePool>,
    keys: Vec<Bytes>,
    raw: Bytes,
    pin: usize,
) -> Bytes {
    let src_proxy = source_proxy(&state, &task);
    for key in keys {
        let exists = Request::from_args(vec![Bytes::from_static(b"EXISTS"), key.clone()]);
        match call(&pool, &exists).await {
            Ok(Frame::Integer(n)) if n > 0 => continue,
            Ok(Frame::Integer(_)) => {}
            Ok(other) => return resp::error(&format!("MIGRATION_FORWARD: unexpected EXISTS reply {other}")),
            Err(e) => return resp::error(&format!("ERR_BACKEND_CONNECTION: {e}")),
        }
        let sync = Request::from_args(vec![Bytes::from_static(b"UMSYNC"), key.clone()]);
        match call(src_proxy, &sync).await {
            Ok(Frame::Simple(_)) => {}
            Ok(Frame::Error(e)) if e.starts_with("MIGRATION_TASK_NOT_FOUND") => {}
            Ok(other) => return resp::error(&format!("MIGRATION_FORWARD: failed to access source node: {other}")),
            Err(e) => return resp::error(&format!("MIGRATION_FORWARD: failed to access source node: {e}")),
        }
    }
    settle(pool.send(raw, pin).await).await.unwrap_or_else(|e| e)
}

/// The source's answer to `UMREAD` when the key is not on the source node (moved already, or
/// never there) or the source has no copy running: the destination's own node is then
/// authoritative.
const NOT_ON_SOURCE: &[u8] = b"-UMREAD_NOT_ON_SOURCE\r\n";

/// Destination, importing slot not committed yet, a read-only single-key command: read the key
/// where it is instead of moving it first. `EXISTS k` and the command go to the destination
/// node back to back; if the key is there, that reply stands (a key the destination has is
/// never on the source any more). Otherwise the source proxy runs the command on the source
/// node while it holds the key's claim (`UMREAD`); if the source does not have the key either,
/// the command runs here again (the key arrived meanwhile, or does not exist). Three round
/// trips at most where a pull takes five, and nothing is copied on the client's behalf.
pub async fn read_where_it_is(
    state: Arc<ProxyState>,
    task: MigrationTask,
    pool: Arc<NodePool>,
    req: Request,
    pin: usize,
) -> Bytes {
    let Some(key) = req.args.get(1).cloned() else { return resp::error("ERR missing key") };
    match exists_and_run(&pool, key.clone(), req.raw.clone(), pin).await {
        Ok((true, reply)) => return reply,
        Ok((false, _)) => {}
        Err(e) => return e,
    }
    let mut args = Vec::with_capacity(req.args.len() + 1);
    args.push(Bytes::from_static(b"UMREAD"));
    args.extend(req.args.iter().cloned());
    let remote = match settle(source_proxy(&state, &task).send(Request::from_args(args).raw, pin).await).await {
        Ok(r) => r,
        Err(e) => {
            let e = String::from_utf8_lossy(&e[1..]).trim_end().to_owned();
            return resp::error(&format!("MIGRATION_FORWARD: failed to access source node: {e}"));
        }
    };
    if remote.starts_with(b"-ERR_COMMAND_NOT_SUPPORTED") {
        // A source proxy of an older version (rolling upgrade): move the key instead.
        return pull_then_run(state, task, pool, vec![key], req.raw, pin).await;
    }
    if &remote[..] != NOT_ON_SOURCE {
        return remote;
    }
    settle(pool.send(req.raw, pin).await).await.unwrap_or_else(|e| e)
}

/// `UMREAD <command> <key> [args…]` on the source proxy (moonraft): runs a read-only
/// single-key command on the source node if the key is still there, under the key's claim so
/// the copy cannot move it in between; `-UMREAD_NOT_ON_SOURCE` otherwise.
pub async fn umread(state: Arc<ProxyState>, args: Vec<Bytes>) -> Bytes {
    let Some(spec) = crate::command::lookup(&args[0]) else {
        return resp::error("ERR UMREAD: unknown command");
    };
    if !spec.is_read_only_single_key() || !spec.check_arity(args.len()) {
        return resp::error("ERR UMREAD: only read-only single-key commands");
    }
    let key = args[1].clone();
    let task = {
        let installed = state.installed.load();
        installed.table.task_for_slot(key_slot(&key)).filter(|t| !t.importing).cloned()
    };
    let Some(task) = task else { return Bytes::from_static(NOT_ON_SOURCE) };
    if task.state() < TaskState::PreSwitch || task.shared.scan_finished.load(Ordering::Acquire) {
        return Bytes::from_static(NOT_ON_SOURCE);
    }
    let src = state.registry.pool(&task.meta.src_node_address, 2);
    let _claim = Claim::take(&task, std::slice::from_ref(&key)).await;
    // One connection, back to back: nothing moves the key between the two (we hold its claim,
    // and clients cannot write it on the source).
    match exists_and_run(&src, key, Request::from_args(args).raw, src.next_pin()).await {
        Ok((true, reply)) => reply,
        Ok((false, _)) => Bytes::from_static(NOT_ON_SOURCE),
        Err(e) => e,
    }
}

/// `UMCTL MIGRATIONS` (moonraft): this proxy's migration tasks and their progress, as a JSON
/// array (read by the brokers for `GET /clusters/info/{name}`).
pub fn progress_json(state: &ProxyState) -> String {
    let installed = state.installed.load();
    let t = &installed.table;
    let items: Vec<serde_json::Value> = t
        .tasks
        .iter()
        .map(|task| {
            let sh = &task.shared;
            let elapsed_ms = sh
                .copy_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|s| s.elapsed().as_millis() as u64)
                .unwrap_or(0);
            serde_json::json!({
                "cluster": t.meta.name,
                "role": if task.importing { "importing" } else { "migrating" },
                "range_list": task.ranges.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
                "epoch": task.meta.epoch,
                "src_proxy_address": task.meta.src_proxy_address,
                "dst_proxy_address": task.meta.dst_proxy_address,
                "state": format!("{:?}", task.state()),
                "keys_moved": sh.keys_moved.load(Ordering::Relaxed),
                "keys_pulled": sh.keys_pulled.load(Ordering::Relaxed),
                "bytes_moved": sh.bytes_moved.load(Ordering::Relaxed),
                "keys_estimate": sh.keys_estimate.load(Ordering::Relaxed),
                "copy_elapsed_ms": elapsed_ms,
                "error": *sh.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}
