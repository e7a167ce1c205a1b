//! `/metrics` read with Prometheus's own parser (`tests/py/scrape_metrics.py`, which also
//! checks every histogram is well formed): the counters move with the traffic a test sends.

mod common;

use common::*;
use moonraft_proxy::resp::Frame;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every sample of one scrape, as (name, labels, value).
fn scrape(addr: &str) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/scrape_metrics.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "scraping {addr} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The value of the sample `name` whose labels include `labels` (0 if there is none: a counter
/// that never moved is not listed).
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap_or(0.0))
        .sum()
}

#[test]
fn proxy_metrics_follow_the_traffic() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let s = SingleProxy::start(&["--metrics-address", &metrics]);
    let before = scrape(&metrics);
    let mut c = s.proxy.conn();
    const N: usize = 300;
    for i in 0..N {
        c.send(&["SET", &format!("key:{i}"), "value"]);
    }
    for _ in 0..N {
        assert_eq!(c.read(), simple("OK"));
    }
    // Every SET made one round trip to node a or b, over a connection that is still open.
    let sets_done = scrape(&metrics);
    let trips = |samples: &[Value], suffix: &str| -> f64 {
        [s.a.addr(), s.b.addr()]
            .iter()
            .map(|a| {
                let name = format!("moonraft_proxy_backend_round_trip_seconds_{suffix}");
                value(samples, &name, &[("address", a.as_str()), ("kind", "node")])
            })
            .sum()
    };
    assert!(trips(&sets_done, "count") - trips(&before, "count") >= N as f64, "{sets_done:?}");
    assert!(trips(&sets_done, "sum") > trips(&before, "sum"));
    for node in [s.a.addr(), s.b.addr()] {
        let labels = [("address", node.as_str()), ("kind", "node")];
        assert!(value(&sets_done, "moonraft_proxy_backend_connections", &labels) >= 1.0, "{node}");
        assert_eq!(value(&sets_done, "moonraft_proxy_backend_connection_failures_total", &labels), 0.0);
    }
    assert!(error_text(&c.cmd(&["NOSUCHCOMMAND"])).contains("not supported"));
    assert!(error_text(&c.cmd(&["GET"])).contains("wrong number of arguments"));
    // Half of the slots go to another proxy: a key there is MOVED.
    let r = c.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "2",
        "NOFLAG",
        "test",
        &s.a.addr(),
        "1",
        "0-8191",
        "PEER",
        "127.0.0.1:1",
        "1",
        "8192-16383",
    ]);
    assert_eq!(r, simple("OK"));
    // "b" is in slot 3300, "a" in 15495.
    assert!(error_text(&c.cmd(&["GET", "a"])).starts_with("MOVED 15495 127.0.0.1:1"));
    assert_eq!(c.cmd(&["GET", "b"]), Frame::Null);

    let after = scrape(&metrics);
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    let commands = "moonraft_proxy_commands_total";
    assert_eq!(delta(commands, &[("command", "set"), ("result", "ok")]), N as f64);
    assert_eq!(delta(commands, &[("command", "other"), ("result", "error")]), 1.0);
    assert_eq!(delta(commands, &[("command", "get"), ("result", "error")]), 1.0);
    assert_eq!(delta(commands, &[("command", "get"), ("result", "moved")]), 1.0);
    assert_eq!(delta(commands, &[("command", "get"), ("result", "ok")]), 1.0);
    assert_eq!(delta(commands, &[("command", "umctl"), ("result", "ok")]), 1.0);
    // Every SET is in the histogram, none of them slower than the +Inf bound.
    let hist = "moonraft_proxy_command_duration_seconds";
    assert_eq!(delta(&format!("{hist}_count"), &[("command", "set")]), N as f64);
    assert_eq!(delta(&format!("{hist}_bucket"), &[("command", "set"), ("le", "+Inf")]), N as f64);
    assert!(delta(&format!("{hist}_sum"), &[("command", "set")]) > 0.0);
    // Each SET is `*3\r\n$3\r\nSET\r\n$…\r\nkey:…\r\n$5\r\nvalue\r\n`: at least 30 bytes.
    assert!(delta("moonraft_proxy_received_bytes_total", &[]) >= (N * 30) as f64);
    assert!(delta("moonraft_proxy_sent_bytes_total", &[]) >= (N * 5) as f64);
    assert!(value(&after, "moonraft_proxy_client_connections", &[]) >= 1.0);
    assert_eq!(value(&after, "moonraft_proxy_epoch", &[]), 2.0);
    assert_eq!(value(&after, "moonraft_proxy_slots", &[("state", "stable")]), 8192.0);
    assert_eq!(value(&after, "moonraft_proxy_lease_valid", &[]), 1.0);
}

#[test]
fn a_metrics_address_that_cannot_be_used_fails_start_up() {
    let taken = Redis::start();
    let mut child = Command::new(BIN)
        .args(["proxy", "--address", &format!("127.0.0.1:{}", free_port()), "--metrics-address", &taken.addr()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moonraft proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = status.expect("the proxy kept running with its metrics address taken");
    assert!(!status.success());
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    assert!(stderr.contains("metrics_address"), "{stderr}");
}

#[test]
fn broker_metrics_show_the_raft_state_and_the_store_on_every_member() {
    let mut group = BrokerGroup::start(3);
    let leader = group.wait_leader(Duration::from_secs(10)).expect("a leader");
    let scrape_all = |group: &BrokerGroup| -> Vec<(u64, Vec<Value>)> {
        group.members.iter().filter(|m| m.proc.child.is_some()).map(|m| (m.id, scrape(&m.http))).collect()
    };
    let before = scrape_all(&group);
    let term = value(&before[0].1, "moonraft_broker_raft_term", &[]);
    for (id, s) in &before {
        assert_eq!(value(s, "moonraft_broker_raft_leader_id", &[]), leader as f64, "member {id}");
        assert_eq!(value(s, "moonraft_broker_raft_node_id", &[]), *id as f64);
        assert_eq!(value(s, "moonraft_broker_raft_is_leader", &[]), f64::from(*id == leader));
        assert_eq!(value(s, "moonraft_broker_raft_term", &[]), term, "member {id}");
        assert_eq!(value(s, "moonraft_broker_raft_voters", &[]), 3.0);
        assert_eq!(value(s, "moonraft_broker_proxies", &[]), 0.0);
    }
    let epoch = value(&before[0].1, "moonraft_broker_global_epoch_total", &[]);
    for i in 0..2 {
        let body = format!(r#"{{"proxy_address": "p{i}:6000", "nodes": ["p{i}:7000", "p{i}:7001"]}}"#);
        assert_eq!(group.call("POST", "/proxies/meta", Some(&body)).status, 200);
    }
    // Every member applies the two registrations; its log and applied index move with them.
    let applied = eventually(Duration::from_secs(10), || {
        scrape_all(&group).iter().all(|(_, s)| value(s, "moonraft_broker_proxies", &[]) == 2.0)
    });
    assert!(applied, "not every member reports the two proxies:\n{:?}", scrape_all(&group));
    for ((id, b), (_, a)) in before.iter().zip(scrape_all(&group)) {
        let grew = |name: &str| value(&a, name, &[]) - value(b, name, &[]);
        assert!(grew("moonraft_broker_raft_applied_index") >= 2.0, "member {id}");
        assert!(grew("moonraft_broker_raft_last_log_index") >= 2.0, "member {id}");
        assert!(value(&a, "moonraft_broker_global_epoch_total", &[]) > epoch, "member {id}");
        // Followers hear from the leader over gRPC (AppendEntries), and say so.
        let appends = [("method", "/moonraft.raft.RaftInternal/AppendEntries"), ("code", "Ok")];
        if *id != leader {
            assert!(value(&a, "moonraft_broker_grpc_requests_total", &appends) >= 1.0, "member {id}");
        }
        assert!(value(&a, "moonraft_broker_snapshot_bytes", &[]) >= 0.0);
    }
    let after = scrape_all(&group);
    let on_leader = &after.iter().find(|(id, _)| *id == leader).expect("the leader").1;
    let before_leader = &before.iter().find(|(id, _)| *id == leader).expect("the leader").1;
    // The leader knows what a majority has: at least what it applied, on all three members.
    let committed = value(on_leader, "moonraft_broker_raft_committed_index", &[]);
    assert!(
        committed >= value(on_leader, "moonraft_broker_raft_applied_index", &[]) && committed > 0.0,
        "{on_leader:?}"
    );
    for id in ["1", "2", "3"] {
        assert!(value(on_leader, "moonraft_broker_raft_matched_index", &[("node", id)]) > 0.0, "node {id}");
    }
    // The two registrations were proposed on the leader, each committed and timed.
    let proposals = "moonraft_broker_proposal_duration_seconds_count";
    assert!(value(on_leader, proposals, &[]) - value(before_leader, proposals, &[]) >= 2.0);
    // Each POST was answered 200 by the member it reached (and by the leader, if forwarded).
    let posts = [("method", "POST"), ("route", "/api/v3/proxies/meta"), ("status", "200")];
    let answered: f64 = after.iter().map(|(_, s)| value(s, "moonraft_broker_http_requests_total", &posts)).sum();
    assert!(answered >= 2.0, "{answered}");
    let timed: f64 = after
        .iter()
        .map(|(_, s)| {
            value(
                s,
                "moonraft_broker_http_request_duration_seconds_count",
                &[("method", "POST"), ("route", "/api/v3/proxies/meta")],
            )
        })
        .sum();
    assert_eq!(timed, answered);
    // RocksDB holds the log: live data in table files or in memtables.
    let stored = value(on_leader, "moonraft_broker_rocksdb_live_data_bytes", &[])
        + value(on_leader, "moonraft_broker_rocksdb_memtable_bytes", &[]);
    assert!(stored > 0.0, "{on_leader:?}");
    // A leader kill: the survivors name a new leader in a later term.
    group.members.iter_mut().find(|m| m.id == leader).expect("the leader").proc.kill();
    let mut new_leader = leader;
    let elected = eventually(Duration::from_secs(20), || {
        new_leader = group.wait_leader(Duration::from_millis(200)).unwrap_or(leader);
        new_leader != leader
    });
    assert!(elected, "the survivors did not elect a new leader:\n{}", group.logs());
    let after = scrape_all(&group);
    assert_eq!(after.len(), 2);
    for (id, s) in &after {
        assert_eq!(value(s, "moonraft_broker_raft_leader_id", &[]), new_leader as f64, "member {id}");
        assert!(value(s, "moonraft_broker_raft_term", &[]) > term, "member {id}");
    }
    let leaders: f64 = after.iter().map(|(_, s)| value(s, "moonraft_broker_raft_is_leader", &[])).sum();
    assert_eq!(leaders, 1.0);
}

#[test]
fn coordinator_metrics_count_pushes_and_a_failover_with_its_duration() {
    let mut s = Stack::start(3, 1, &["--metrics-address", "127.0.0.1:{free_port}"]);
    let metrics = s.coordinators[0].metrics.clone().expect("its metrics address");
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let before = scrape(&metrics);
    let followed = eventually(Duration::from_secs(10), || {
        let m = scrape(&metrics);
        value(&m, "moonraft_coordinator_proxies", &[]) == 3.0
            && value(&m, "moonraft_coordinator_proxies_reached", &[]) == 3.0
            && value(&m, "moonraft_coordinator_sync_pushes_total", &[]) >= 2.0
    });
    assert!(followed, "the coordinator does not report its 3 proxies synced:\n{:?}", scrape(&metrics));
    let cluster = s.cluster("c");
    let victim = cluster["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["repl"]["role"] == "master"))
        .and_then(|n| n["proxy_address"].as_str())
        .expect("a master proxy")
        .to_owned();
    let started = Instant::now();
    s.host(&victim).proxy.proc.kill();
    let failed_over = eventually(Duration::from_secs(30), || {
        value(&scrape(&metrics), "moonraft_coordinator_failovers_total", &[]) >= 1.0
    });
    assert!(failed_over, "no failover counted:\n{}", s.logs());
    let elapsed = started.elapsed().as_secs_f64();
    let after = scrape(&metrics);
    let delta = |name: &str| value(&after, name, &[]) - value(&before, name, &[]);
    assert_eq!(delta("moonraft_coordinator_failovers_total"), 1.0);
    assert!(delta("moonraft_coordinator_failures_reported_total") >= 1.0);
    assert!(delta("moonraft_coordinator_probe_failures_total") >= 1.0);
    assert!(value(&after, "moonraft_coordinator_watch_events_total", &[]) >= 1.0);
    assert!(value(&after, "moonraft_coordinator_proxy_probe_failures_total", &[("proxy", &victim)]) >= 1.0);
    // Every acknowledged push is timed from the request that led to it.
    assert!(value(&after, "moonraft_coordinator_sync_push_duration_seconds_count", &[]) >= 3.0);
    let calls = "moonraft_coordinator_broker_calls_total";
    assert!(value(&after, calls, &[("call", "GetProxy"), ("result", "ok")]) >= 3.0);
    assert!(value(&after, calls, &[("call", "ReportFailure"), ("result", "ok")]) >= 1.0, "{after:?}");
    // The coordinator's watch stream is open on one of the brokers.
    let watching: f64 =
        s.brokers.members.iter().map(|m| value(&scrape(&m.http), "moonraft_broker_watch_subscribers", &[])).sum();
    assert!(watching >= 1.0, "{watching}");
    let hist = "moonraft_coordinator_failover_duration_seconds";
    assert_eq!(value(&after, &format!("{hist}_count"), &[]), 1.0);
    let took = value(&after, &format!("{hist}_sum"), &[]);
    // From the first failed probe: after the kill, and no longer than the test waited.
    assert!(took > 0.0 && took <= elapsed, "failover took {took} s by the metric, {elapsed} s by the test");
}

/// Every metric `examples/grafana/moonraft.json` queries is in a scrape of a running proxy,
/// broker group and coordinator (a renamed metric would leave a panel empty without notice).
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana/moonraft.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).expect("the dashboard")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let queried: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            let mut names = Vec::new();
            let mut rest = e.as_str();
            while let Some(i) = rest.find("moonraft_") {
                let tail = &rest[i..];
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
                names.push(tail[..end].to_owned());
                rest = &tail[end..];
            }
            names
        })
        .collect();

    let proxy_metrics = format!("127.0.0.1:{}", free_port());
    let proxy = SingleProxy::start(&["--metrics-address", &proxy_metrics]);
    assert_eq!(proxy.proxy.conn().cmd(&["SET", "a", "1"]), simple("OK"));
    let stack = Stack::start(1, 1, &["--metrics-address", "127.0.0.1:{free_port}"]);
    let coordinator_metrics = stack.coordinators[0].metrics.clone().expect("its metrics address");
    let mut scraped: Vec<Value> = scrape(&proxy_metrics);
    scraped.extend(scrape(&coordinator_metrics));
    scraped.extend(scrape(&stack.brokers.members[0].http));
    let names: std::collections::BTreeSet<&str> = scraped.iter().filter_map(|s| s["name"].as_str()).collect();
    let missing: Vec<&String> = queried.iter().filter(|q| !names.contains(q.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics no role serves: {missing:?}");
    assert!(queried.len() >= 20, "{queried:?}");
}
