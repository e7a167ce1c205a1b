//! A rolling upgrade as `docs/operations.md#rolling-upgrade` describes it: a running cluster
//! (3 brokers, 2 coordinators, 4 proxies with their Redis nodes) is restarted one process at a
//! time onto another build while a client keeps writing. No write is lost, and the only errors
//! the client meets are redirections and `TRYAGAIN`, which a cluster client retries: proxies
//! are restarted through their handover socket, so no connection is refused and no restarted
//! proxy is ever without its metadata.
//!
//! Both builds are this one unless `MOONRAFT_OLD_BIN` names an older `moonraft` binary
//! (`scripts/upgrade-test.sh <commit>` builds one and runs this test with it): the cluster then
//! starts on the old build and every process is restarted onto this one. An old build without
//! the handover socket has its proxies stopped and started instead; the client then also meets
//! (and retries) `CLUSTERDOWN` and refused connections.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the writer saw: acknowledged writes and the errors it retried, by kind.
#[derive(Default)]
struct Writes {
    acknowledged: Vec<(String, String)>,
    retried: BTreeMap<String, u64>,
    failed: Vec<String>,
}

/// The kind of an error reply or a connection failure, for the tally.
fn kind(error: &str) -> String {
    let first = error.split_whitespace().next().unwrap_or("");
    if first.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !first.is_empty() {
        first.to_owned()
    } else {
        "CONNECTION".to_owned()
    }
}

/// Errors the client retries: redirections and a slot in transit; with `stop_start` (an old
/// build without the handover socket) also a proxy without metadata yet and a port closed
/// for a moment.
fn retried(kind: &str, stop_start: bool) -> bool {
    matches!(kind, "MOVED" | "ASK" | "TRYAGAIN") || (stop_start && matches!(kind, "CLUSTERDOWN" | "CONNECTION"))
}

/// Whether `binary`'s proxy has a handover socket (builds before it do not).
fn has_handover(binary: &str) -> bool {
    std::process::Command::new(binary)
        .args(["proxy", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--handover-socket"))
}

/// SETs `key` through the proxies, following redirections, retrying what `retried` allows,
/// for at most 20 s.
fn write(entry: &[u16], key: &str, value: &str, writes: &Mutex<Writes>, stop_start: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut target: Option<u16> = None;
    let mut asking = false;
    let mut next = 0usize;
    while Instant::now() < deadline {
        let port = target.take().unwrap_or(entry[next % entry.len()]);
        let reply = Conn::try_connect(port).and_then(|mut c| {
            c.set_timeout(Duration::from_secs(2));
            if asking {
                c.try_cmd(&["ASKING"])?;
            }
            c.try_cmd(&["SET", key, value])
        });
        asking = false;
        let error = match reply {
            Ok(f) if f == simple("OK") => {
                writes.lock().unwrap_or_else(|e| e.into_inner()).acknowledged.push((key.to_owned(), value.to_owned()));
                return;
            }
            Ok(moonraft_proxy::resp::Frame::Error(e)) => e,
            Ok(other) => format!("UNEXPECTED {other:?}"),
            Err(e) => e.to_string(),
        };
        let k = kind(&error);
        let mut w = writes.lock().unwrap_or_else(|e| e.into_inner());
        *w.retried.entry(k.clone()).or_default() += 1;
        if !retried(&k, stop_start) {
            w.failed.push(format!("{key}: {error}"));
            return;
        }
        drop(w);
        if k == "MOVED" || k == "ASK" {
            asking = k == "ASK";
            target = error.split(' ').nth(2).and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
        } else {
            next += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    writes.lock().unwrap_or_else(|e| e.into_inner()).failed.push(format!("{key}: no answer in 20 s"));
}

#[test]
fn a_rolling_restart_onto_a_new_build_loses_no_write() {
    let new_build = BIN.to_owned();
    let old_build = std::env::var("MOONRAFT_OLD_BIN").unwrap_or_else(|_| new_build.clone());
    set_program(&old_build);
    let stop_start = !has_handover(&old_build);
    let sockets = TempDir::new("upgrade");
    let socket = sockets.0.join("proxy-{port}.sock").to_string_lossy().into_owned();
    let handover: Vec<&str> = if stop_start { vec![] } else { vec!["--handover-socket", &socket] };
    let mut s = Stack::start_with(4, 2, &StackFlags { proxy: &handover, ..StackFlags::default() });
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 8}"#)).status, 200);
    let entry: Vec<u16> = s.hosts.iter().map(|h| h.proxy.port).collect();
    let served = eventually(Duration::from_secs(20), || {
        entry.iter().all(|p| proxy_epoch(*p).is_some_and(|e| e > 0))
            && ClusterClient { entry: entry.clone(), password: None }
                .cmd(&["SET", "probe", "1"], Duration::from_secs(2))
                .is_ok()
    });
    assert!(served, "the cluster did not start serving:\n{}", s.logs());

    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (writes, stop, entry) = (writes.clone(), stop.clone(), entry.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                write(&entry, &format!("key{i}"), &format!("value{i}"), &writes, stop_start);
                i += 1;
            }
        })
    };
    let acknowledged = |writes: &Mutex<Writes>| writes.lock().unwrap_or_else(|e| e.into_inner()).acknowledged.len();
    // Some writes before the first restart, and after each one.
    let progressed = |from: usize| eventually(Duration::from_secs(20), || acknowledged(&writes) >= from + 50);

    set_program(&new_build);
    assert!(progressed(0), "no writes before the upgrade");
    // 1. Brokers, followers first, then the leader; each waits until it has the leader's log.
    let leader = s.brokers.wait_leader(Duration::from_secs(10)).expect("a leader");
    let mut order: Vec<u64> = s.brokers.members.iter().map(|m| m.id).filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        let m = s.brokers.members.iter_mut().find(|m| m.id == id).expect("member");
        m.proc.kill();
        m.spawn();
        let caught_up = eventually(Duration::from_secs(20), || {
            let Some(st) = m.status() else { return false };
            st["leader_id"].as_u64().is_some()
                && st["last_applied_index"].as_u64().is_some()
                && st["last_applied_index"] == st["last_log_index"]
        });
        assert!(caught_up, "broker {id} did not rejoin:\n{}", s.logs());
        let before = acknowledged(&writes);
        assert!(progressed(before), "writes stalled after restarting broker {id}:\n{}", s.logs());
    }
    // 2. Coordinators, one at a time.
    let grpc = s.brokers.grpc_addresses();
    for i in 0..s.coordinators.len() {
        s.coordinators[i].proc.kill();
        s.coordinators[i] = Coordinator::start(&grpc, &s.dir.0, &format!("co{i}"), &[]);
        let before = acknowledged(&writes);
        assert!(progressed(before), "writes stalled after restarting coordinator {i}:\n{}", s.logs());
    }
    // 3. Proxies, one at a time: the new process takes the port and the metadata over from the
    //    running one, which drains and exits (an old build without the handover socket: stopped,
    //    then started on its own address well within the failure window).
    let new_flags: Vec<&str> = vec!["--handover-socket", &socket];
    for h in 0..s.hosts.len() {
        let port = s.hosts[h].proxy.port;
        if stop_start {
            s.hosts[h].proxy.proc.kill();
            let restarted = (0..50).find_map(|_| Proxy::start_on(port, &new_flags));
            s.hosts[h].proxy = restarted.expect("the proxy restarts on its port");
        } else {
            let new = Proxy::start_on(port, &new_flags).expect("the new proxy takes over");
            let mut old = std::mem::replace(&mut s.hosts[h].proxy, new);
            let exited = eventually(Duration::from_secs(20), || !old.proc.is_running());
            assert!(exited, "the old proxy on {port} did not drain and exit:\n{}", old.log_text());
        }
        let before = acknowledged(&writes);
        assert!(progressed(before), "writes stalled after restarting proxy {port}:\n{}", s.logs());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");

    let w = writes.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        w.failed.is_empty(),
        "{} writes the client could not complete: {:?} (retried: {:?})\n{}",
        w.failed.len(),
        &w.failed[..w.failed.len().min(10)],
        w.retried,
        s.logs()
    );
    // Nothing was failed over: every restart was shorter than the failure window.
    assert!(failed_set(&s.brokers).is_empty(), "a restart was taken for a failure:\n{}", s.logs());
    // Every acknowledged write is there, through any proxy.
    let client = ClusterClient { entry: entry.clone(), password: None };
    let mut lost = Vec::new();
    for (k, v) in &w.acknowledged {
        match client.cmd(&["GET", k], Duration::from_secs(10)) {
            Ok(moonraft_proxy::resp::Frame::Bulk(b)) if b.as_ref() == v.as_bytes() => {}
            other => lost.push(format!("{k}: {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        w.acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    println!(
        "rolling restart ({} → {}, proxies {}): {} writes acknowledged, retried errors by kind: {:?}",
        old_build,
        new_build,
        if stop_start { "stopped and started" } else { "handed over" },
        w.acknowledged.len(),
        w.retried
    );
}
