//! `UMCTL` control commands (`docs/protocol.md`), sent by coordinators and peer proxies.

use crate::cluster::{MigrationMeta, RangeTag, SetCluster, SlotRange, TaskState};
use crate::replication::{Role, SetRepl};
use crate::resp::{self, parse_u64, Frame};
use crate::slowlog::rfc3339;
use crate::state::{MetaError, ProxyState};
use bytes::Bytes;
use std::sync::atomic::Ordering;

fn lines(items: Vec<String>) -> Frame {
    Frame::Array(items.into_iter().map(|s| Frame::Bulk(Bytes::from(s))).collect())
}

/// `handle`, then what an accepted `SETCLUSTER` starts: the drivers of its migrating ranges
/// and learning the nodes' Redis version. Every way metadata arrives (a client's `UMCTL`, a
/// handover) goes through here.
pub fn handle_and_start(state: &std::sync::Arc<ProxyState>, args: &[Bytes], proto: u8) -> Bytes {
    let reply = handle(state, args, proto);
    if args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"setcluster")) {
        crate::migrate::start_tasks(state);
        crate::state::learn_redis_version(state);
    }
    reply
}

/// Handles `UMCTL <args…>`; `args` excludes `UMCTL` itself. `proto` is the client's protocol.
pub fn handle(state: &ProxyState, args: &[Bytes], proto: u8) -> Bytes {
    let Some(sub) = args.first() else {
        return resp::error("Missing sub command");
    };
    let Ok(sub) = std::str::from_utf8(sub) else {
        return resp::error("Invalid sub command");
    };
    let rest = &args[1..];
    let sub = sub.to_ascii_uppercase();
    // Held while a metadata change applies, so that a handover's snapshot has every change this
    // process accepted (`handover.rs`).
    let _gate = match sub.as_str() {
        "SETCLUSTER" | "SETREPL" => {
            let gate = state.handover.metadata_gate();
            if *gate {
                return resp::error(
                    "ERR this proxy is handing its port over to a new process; retry (the new process takes it)",
                );
            }
            Some(gate)
        }
        _ => None,
    };
    match sub.as_str() {
        "SETCLUSTER" => match SetCluster::parse(rest) {
            Err(kind) => resp::error(&format!("Failed to parse args: {kind}")),
            Ok(cmd) => {
                let ignored = cmd.config_ignored;
                match state.set_cluster(cmd) {
                    Ok(()) => {
                        // What a successor process starts from (`handover.rs`).
                        state.handover.record_setcluster(rest);
                        match ignored {
                            true => resp::simple("WARNING: ignored invalid config"),
                            false => Bytes::from_static(resp::OK),
                        }
                    }
                    Err(e) => meta_error(e),
                }
            }
        },
        "SETREPL" => match SetRepl::parse(rest) {
            None => resp::error("Invalid arguments"),
            Some(cmd) => match state.set_repl(cmd) {
                Ok(()) => {
                    state.handover.record_setrepl(rest);
                    Bytes::from_static(resp::OK)
                }
                Err(e) => meta_error(e),
            },
        },
        "GETEPOCH" => resp::integer(state.epoch() as i64),
        "MIGRATIONS" => resp::bulk(crate::migrate::progress_json(state).as_bytes()),
        "LISTCLUSTER" => {
            let installed = state.installed.load();
            Frame::Array(vec![Frame::bulk_str(&installed.table.meta.name)]).to_bytes(proto)
        }
        "READY" => {
            let installed = state.installed.load();
            let only_replicas = state.replication.lock().map(|r| r.only_replicas()).unwrap_or(false);
            let serving = installed.table.meta.local.iter().any(|(_, e)| !matches!(e.tag, RangeTag::Migrating(_)));
            resp::integer((only_replicas || serving) as i64)
        }
        "INFO" => info(state).to_bytes(proto),
        "INFOREPL" => info_repl(state).to_bytes(proto),
        "INFOMGR" => {
            let installed = state.installed.load();
            let t = &installed.table;
            let items = t
                .tasks
                .iter()
                .filter(|task| task.state() == TaskState::SwitchCommitted)
                .map(|task| {
                    format!(
                        "{} {} {} {}",
                        t.meta.name,
                        if task.importing { "IMPORTING" } else { "MIGRATING" },
                        task.ranges_tokens(),
                        task.meta.to_tokens()
                    )
                })
                .collect();
            lines(items).to_bytes(proto)
        }
        "STATS" => {
            let mut v = vec![
                "# Proxy".to_string(),
                format!("connected_clients: {}", state.connected_clients.load(Ordering::Relaxed)),
                format!("total_connections_received: {}", state.total_connections.load(Ordering::Relaxed)),
                format!("total_commands_processed: {}", state.total_commands.load(Ordering::Relaxed)),
                "# Migration".to_string(),
            ];
            let m = &state.metrics;
            for (name, counter) in [
                ("migration_keys_moved", &m.migration_keys),
                ("migration_bytes_moved", &m.migration_bytes),
                ("migration_pulls", &m.migration_pulls),
                ("migration_copy_errors", &m.migration_copy_errors),
            ] {
                v.push(format!("{name}: {}", counter.load(Ordering::Relaxed)));
            }
            v.push(format!("migration_tasks: {}", state.installed.load().table.tasks.len()));
            lines(v).to_bytes(proto)
        }
        "SLOWLOG" => slowlog(state, rest, proto),
        "DEBUG" => match rest.first() {
            Some(a) if a.eq_ignore_ascii_case(b"future") => {
                let installed = state.installed.load();
                let mut v: Vec<String> =
                    installed.table.nodes.iter().map(|n| format!("backend connections to {n}")).collect();
                if let Ok(r) = state.replication.lock() {
                    v.extend(r.entries().iter().map(|e| format!("replicator {:?} {} {}", e.role, e.cluster, e.node)));
                }
                lines(v).to_bytes(proto)
            }
            _ => resp::error("invalid debug sub-command"),
        },
        "SHUTDOWN" => {
            let _ = state.shutdown.send(true);
            Bytes::from_static(resp::OK)
        }
        "PRECHECK" => switch(state, rest, TaskState::PreCheck),
        "PRESWITCH" => switch(state, rest, TaskState::PreSwitch),
        "FINALSWITCH" => switch(state, rest, TaskState::SwitchCommitted),
        _ => resp::error("Invalid sub command"),
    }
}

fn meta_error(e: MetaError) -> Bytes {
    match e {
        MetaError::OldEpoch => resp::error("OLD_EPOCH"),
        MetaError::NotMyMeta => resp::error("ERR_NOT_MY_META"),
    }
}

fn slowlog(state: &ProxyState, rest: &[Bytes], proto: u8) -> Bytes {
    let sub = rest.first().map(|s| s.to_ascii_uppercase());
    match sub.as_deref() {
        Some(b"GET") => {
            let n = match rest.get(1) {
                None => None,
                Some(v) => match parse_u64(v) {
                    Some(n) => Some(n as usize),
                    None => return resp::error("invalid slowlog sub-command"),
                },
            };
            let records = state
                .slowlog
                .get(n)
                .into_iter()
                .map(|r| {
                    lines(vec![
                        format!("session_id: {}", r.session_id),
                        format!("created: {}", rfc3339(r.created)),
                        "sent_to_migration_backend: 0".to_string(),
                        "sent_to_cluster: 0".to_string(),
                        format!("sent_to_queue: {}", r.sent_to_backend.as_nanos()),
                        format!("queue_received: {}", r.sent_to_backend.as_nanos()),
                        format!("sent_to_backend: {}", r.sent_to_backend.as_nanos()),
                        format!("received_from_backend: {}", r.received_from_backend.as_nanos()),
                        format!("wait_done: {}", r.wait_done.as_nanos()),
                        format!("command: {}", r.command),
                    ])
                })
                .collect();
            Frame::Array(records).to_bytes(proto)
        }
        Some(b"RESET") => {
            state.slowlog.reset();
            Bytes::from_static(resp::OK)
        }
        _ => resp::error("invalid slowlog sub-command"),
    }
}

fn info(state: &ProxyState) -> Frame {
    let installed = state.installed.load();
    let t = &installed.table;
    let entry_lines = |entries: &[(String, crate::cluster::RangeEntry)]| {
        let mut by_addr: Vec<(String, Vec<Frame>)> = Vec::new();
        for (addr, e) in entries {
            let mut meta_lines = Vec::new();
            if let RangeTag::Migrating(m) | RangeTag::Importing(m) = &e.tag {
                meta_lines.push(Frame::Bulk(Bytes::from(m.epoch.to_string())));
                meta_lines.push(Frame::Bulk(Bytes::from(format!("src_proxy: {}", m.src_proxy_address))));
                meta_lines.push(Frame::Bulk(Bytes::from(format!("src_node: {}", m.src_node_address))));
                meta_lines.push(Frame::Bulk(Bytes::from(format!("dst_proxy: {}", m.dst_proxy_address))));
                meta_lines.push(Frame::Bulk(Bytes::from(format!("dst_node: {}", m.dst_node_address))));
            }
            let mut ranges = e.ranges.len().to_string();
            for r in &e.ranges {
                ranges.push_str(&format!(" {}-{}", r.start, r.end));
            }
            meta_lines.push(Frame::Bulk(Bytes::from(ranges)));
            match by_addr.iter_mut().find(|(a, _)| a == addr) {
                Some((_, v)) => v.push(Frame::Array(meta_lines)),
                None => by_addr.push((addr.clone(), vec![Frame::Array(meta_lines)])),
            }
        }
        by_addr.into_iter().flat_map(|(a, v)| [Frame::Bulk(Bytes::from(a)), Frame::Array(v)]).collect::<Vec<_>>()
    };
    let mut local = vec![
        Frame::Bulk(Bytes::from(format!("name: {}", t.meta.name))),
        Frame::Bulk(Bytes::from(format!("epoch: {}", t.epoch))),
        Frame::bulk_str("nodes:"),
    ];
    local.extend(entry_lines(&t.meta.local));
    let mut peers = vec![Frame::bulk_str("peers:")];
    peers.extend(entry_lines(&t.meta.peers));
    let cluster = Frame::Array(vec![
        Frame::bulk_str(&t.meta.name),
        Frame::bulk_str("local"),
        Frame::Array(local),
        Frame::bulk_str("peer"),
        Frame::Array(peers),
    ]);
    let mut mgr = vec![Frame::Bulk(Bytes::from(format!("name: {}", t.meta.name)))];
    for task in &t.tasks {
        let (src, dst) = (&task.meta.src_node_address, &task.meta.dst_node_address);
        mgr.push(Frame::Bulk(Bytes::from(format!("{} {src} -> {dst} {:?}", task.ranges_tokens(), task.state()))));
    }
    Frame::Array(vec![
        Frame::bulk_str("Cluster"),
        cluster,
        Frame::bulk_str("Replication"),
        info_repl(state),
        Frame::bulk_str("Migration"),
        Frame::Array(mgr),
    ])
}

fn info_repl(state: &ProxyState) -> Frame {
    let entries = state.replication.lock().map(|r| r.entries()).unwrap_or_default();
    Frame::Array(
        entries
            .into_iter()
            .map(|e| {
                let mut v = vec![format!("cluster:{}\n", e.cluster)];
                match e.role {
                    Role::Master => {
                        v.push("role:master\n".into());
                        v.push(format!("node_address:{}\n", e.node));
                        v.extend(e.peers.iter().map(|(n, p)| format!("replica:{n}@{p}\n")));
                    }
                    Role::Replica => {
                        v.push("role:replica\n".into());
                        v.push(format!("node_address:{}\n", e.node));
                        v.extend(e.peers.iter().map(|(n, p)| format!("master:{n}@{p}\n")));
                    }
                }
                lines(v)
            })
            .collect(),
    )
}

/// Parsed arguments of PRECHECK/PRESWITCH/FINALSWITCH.
struct SwitchArgs {
    version: String,
    cluster: String,
    migrating: bool,
    ranges: Vec<SlotRange>,
    meta: MigrationMeta,
}

fn parse_switch(args: &[Bytes]) -> Result<SwitchArgs, &'static str> {
    const PARSE: &str = "failed to parse migration switch arguments";
    let s = |i: usize| args.get(i).and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned).ok_or(PARSE);
    let version = s(0)?;
    let cluster = s(1)?;
    let tag = s(2)?;
    let migrating = match tag.to_ascii_uppercase().as_str() {
        "MIGRATING" => true,
        "IMPORTING" => false,
        _ => return Err("Invalid Arg"),
    };
    let count = parse_u64(args.get(3).ok_or(PARSE)?).ok_or(PARSE)? as usize;
    if count > 16384 {
        return Err(PARSE);
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let tok = s(4 + i)?;
        let (a, b) = tok.split_once('-').ok_or(PARSE)?;
        let (a, b) = (a.parse::<u16>().map_err(|_| PARSE)?, b.parse::<u16>().map_err(|_| PARSE)?);
        if a > b || b >= 16384 {
            return Err(PARSE);
        }
        ranges.push(SlotRange { start: a, end: b });
    }
    let base = 4 + count;
    if args.len() != base + 5 {
        return Err(PARSE);
    }
    let meta = MigrationMeta {
        epoch: parse_u64(&args[base]).ok_or(PARSE)?,
        src_proxy_address: s(base + 1)?,
        src_node_address: s(base + 2)?,
        dst_proxy_address: s(base + 3)?,
        dst_node_address: s(base + 4)?,
    };
    Ok(SwitchArgs { version, cluster, migrating, ranges, meta })
}

/// Destination side of the switch hand-shake (`docs/migration.md`).
fn switch(state: &ProxyState, args: &[Bytes], to: TaskState) -> Bytes {
    let a = match parse_switch(args) {
        Ok(a) => a,
        Err(e) => return resp::error(e),
    };
    let _ = a.migrating; // the tag is converted to IMPORTING before the lookup
    if a.version != crate::migrate::MGR_VERSION {
        return resp::error("switch failed: IncompatibleVersion");
    }
    let installed = state.installed.load();
    let t = &installed.table;
    if t.epoch < a.meta.epoch {
        return resp::error("NOT_READY_FOR_SWITCHING");
    }
    if t.meta.name != a.cluster {
        return resp::error("TASK_NOT_FOUND");
    }
    if let Some(task) = t.find_task(true, &a.ranges, &a.meta) {
        // Never move a task backwards (a late PRECHECK retry after PRESWITCH).
        if task.state() < to {
            task.set_state(to);
        }
        return Bytes::from_static(resp::OK);
    }
    if t.find_task(false, &a.ranges, &a.meta).is_some() {
        return resp::error("Peer Not Migrating");
    }
    resp::error("TASK_NOT_FOUND")
}

/// Most nodes one `UMCTL HEALTH` may name.
const HEALTH_MAX_NODES: usize = 64;

/// `UMCTL HEALTH <lease_ms> <epoch> [STAMP <stamp>] [node…]` (moonraft): pings each named Redis
/// node through the proxy and, when they all answer and this proxy has at least metadata
/// `epoch`, replies with a new stamp (an integer) and renews the coordinator lease
/// (`lease.rs`) to `lease_ms` after the `STAMP` handed back, if any (`lease_ms` 0: no lease).
/// Otherwise `-ERR_NODE_DOWN <node> <reason>` or `-STALE_EPOCH <epoch it has>`, no renewal.
pub async fn health(state: std::sync::Arc<ProxyState>, args: Vec<Bytes>) -> Bytes {
    const USAGE: &str = "ERR usage: UMCTL HEALTH <lease_ms> <epoch> [STAMP <stamp>] [node ...]";
    let num = |i: usize| args.get(i).and_then(|a| parse_u64(a));
    let (Some(lease_ms), Some(epoch)) = (num(0), num(1)) else {
        return resp::error(USAGE);
    };
    let (stamp, first_node) = match args.get(2) {
        Some(a) if a.eq_ignore_ascii_case(b"stamp") => match args.get(3).and_then(|s| resp::parse_int(s)) {
            Some(s) => (Some(s), 4),
            None => return resp::error(USAGE),
        },
        _ => (None, 2),
    };
    let nodes: Vec<String> = args.iter().skip(first_node).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if nodes.len() > HEALTH_MAX_NODES {
        return resp::error(&format!("ERR at most {HEALTH_MAX_NODES} nodes"));
    }
    let pools: Vec<std::sync::Arc<crate::backend::NodePool>> = {
        let mut cache = state.health_pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = std::collections::HashMap::new();
        for n in &nodes {
            let pool = cache.remove(n).unwrap_or_else(|| state.registry.pool(n, 2));
            next.insert(n.clone(), pool);
        }
        *cache = next;
        nodes.iter().filter_map(|n| cache.get(n).cloned()).collect()
    };
    // Concurrently, so one hung node costs one timeout, not one per node. Any reply counts as
    // alive, errors included: a replica answers `-LOADING` during a full resync, and failing
    // it over for that would turn a normal resync into an outage.
    let checks: Vec<_> = pools
        .into_iter()
        .map(|p| {
            tokio::spawn(async move {
                let ping = resp::Request::from_strs(&["PING"]);
                match tokio::time::timeout(std::time::Duration::from_secs(1), p.call(&ping)).await {
                    Err(_) => Err(format!("{} timeout", p.address())),
                    Ok(Err(e)) => Err(format!("{} {}", p.address(), one_line(&e.to_string()))),
                    Ok(Ok(_)) => Ok(()),
                }
            })
        })
        .collect();
    for check in checks {
        match check.await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return resp::error(&format!("ERR_NODE_DOWN {reason}")),
            Err(_) => return resp::error("ERR_NODE_DOWN health check failed"),
        }
    }
    let mine = state.epoch();
    if mine < epoch {
        return resp::error(&format!("STALE_EPOCH {mine}"));
    }
    if let Some(stamp) = stamp.filter(|_| lease_ms > 0 && state.config.coordinator_lease) {
        if !state.lease.renew_from(stamp, std::time::Duration::from_millis(lease_ms)) {
            tracing::debug!(stamp, left_ms = ?state.lease.remaining_ms(), "a coordinator handed back a stamp this process did not issue; the lease is renewed from its next probe");
        }
    }
    resp::integer(state.lease.stamp())
}

/// `UMCTL RESETNODES` (moonraft): empties this proxy's Redis nodes (`FLUSHALL`) — what a
/// coordinator does before a failed, replaced proxy returns to the free pool, so that its old
/// keys never reappear in a cluster it joins later. Refused unless the proxy is free: no cluster
/// in its routing metadata nor in its replication metadata, and its nodes known (`SETREPL`).
pub async fn reset_nodes(state: std::sync::Arc<ProxyState>) -> Bytes {
    let cluster = state.installed.load().table.meta.name.clone();
    if !cluster.is_empty() {
        return resp::error(&format!("ERR_IN_CLUSTER this proxy serves cluster {cluster}: its nodes are not emptied"));
    }
    let entries = state.replication.lock().map(|r| r.entries()).unwrap_or_default();
    if let Some(e) = entries.iter().find(|e| !e.cluster.is_empty()) {
        return resp::error(&format!("ERR_IN_CLUSTER node {} belongs to cluster {}", e.node, e.cluster));
    }
    if entries.is_empty() {
        return resp::error("ERR_NO_NODES no Redis node known yet (no SETREPL received)");
    }
    for e in &entries {
        let pool = state.registry.pool(&e.node, 2);
        let flush = resp::Request::from_strs(&["FLUSHALL"]);
        match tokio::time::timeout(std::time::Duration::from_secs(30), pool.call(&flush)).await {
            Ok(Ok(reply)) if reply.first() == Some(&b'+') => {}
            Ok(Ok(other)) => {
                return resp::error(&format!("ERR {} FLUSHALL: {}", e.node, one_line(&String::from_utf8_lossy(&other))))
            }
            Ok(Err(err)) => return resp::error(&format!("ERR {} {}", e.node, one_line(&err.to_string()))),
            Err(_) => return resp::error(&format!("ERR {} FLUSHALL timed out", e.node)),
        }
        tracing::info!(node = %e.node, "emptied the node of a free proxy (UMCTL RESETNODES)");
    }
    Bytes::from_static(resp::OK)
}

fn one_line(s: &str) -> String {
    s.trim_end().replace(['\r', '\n'], " ")
}
