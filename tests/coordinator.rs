//! Coordinators end to end with real processes: 3 brokers, 2 coordinators, 6 proxies and their
//! 12 redis-servers. Metadata reaches proxies through the watch stream (the periodic reconcile
//! is set to a minute, so it cannot be what delivers it), failures of a proxy process, of a
//! Redis master behind a live proxy and of a hung proxy are failed over with the data intact,
//! a merely slow proxy is left alone, and a failed-over proxy that resumes refuses writes.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("host:port")
}

fn proxies(cluster: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        cluster["nodes"].as_array().unwrap().iter().map(|n| n["proxy_address"].as_str().unwrap().to_owned()).collect();
    v.dedup();
    v
}

/// The proxy holding the master of the first slot range.
fn first_master_proxy(cluster: &Value) -> String {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["repl"]["role"] == "master" && n["slots"].as_array().is_some_and(|s| !s.is_empty()))
        .map(|n| n["proxy_address"].as_str().unwrap().to_owned())
        .expect("a master")
}

fn client(s: &Stack) -> ClusterClient {
    ClusterClient { entry: proxies(&s.cluster("c")).iter().map(|p| port(p)).collect(), password: None }
}

fn dbsize(addr: &str) -> Option<i64> {
    let mut c = Conn::try_connect(port(addr)).ok()?;
    c.set_timeout(Duration::from_secs(1));
    match c.try_cmd(&["DBSIZE"]).ok()? {
        moonraft_proxy::resp::Frame::Integer(n) => Some(n),
        _ => None,
    }
}

/// Every replica of the cluster holds as many keys as its master (replication completed).
fn wait_replicated(s: &Stack) {
    let ok = eventually(Duration::from_secs(30), || {
        let c = s.cluster("c");
        c["nodes"].as_array().unwrap().iter().filter(|n| n["repl"]["role"] == "replica").all(|n| {
            let master = n["repl"]["peers"][0]["node_address"].as_str().unwrap();
            let (m, r) = (dbsize(master), dbsize(n["address"].as_str().unwrap()));
            m.is_some() && m == r && m > Some(0)
        })
    });
    assert!(ok, "replication did not complete:\n{}", s.logs());
}

fn assert_all_keys(s: &Stack, n: usize, round: &str) {
    let c = client(s);
    for i in 0..n {
        let got = c.cmd(&["GET", &format!("key{i}")], Duration::from_secs(20));
        assert_eq!(got, Ok(bulk(&format!("{round}{i}"))), "key{i} after {round}:\n{}", s.logs());
    }
}

fn write_all_keys(s: &Stack, n: usize, round: &str) {
    let c = client(s);
    for i in 0..n {
        let r = c.cmd(&["SET", &format!("key{i}"), &format!("{round}{i}")], Duration::from_secs(20));
        assert_eq!(r, Ok(simple("OK")), "SET key{i} ({round}):\n{}", s.logs());
    }
}

/// Waits until `proxy` has left the cluster and is in the failed set.
fn wait_failed_over(s: &Stack, proxy: &str) {
    let ok = eventually(Duration::from_secs(30), || {
        let failed = s.brokers.call("GET", "/proxies/failed/addresses", None).json();
        let in_failed = failed["addresses"].as_array().unwrap().iter().any(|a| a == proxy);
        in_failed && !proxies(&s.cluster("c")).contains(&proxy.to_owned())
    });
    assert!(ok, "{proxy} was not failed over:\n{}", s.logs());
}

#[test]
fn coordinators_sync_detect_and_fail_over() {
    let mut s = Stack::start(6, 2, &["--reconcile-interval-ms", "60000"]);
    let r = s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#));
    assert_eq!(r.status, 200);
    let cluster = s.cluster("c");
    let epoch = cluster["epoch"].as_u64().unwrap();
    let members = proxies(&cluster);
    assert_eq!(members.len(), 2);

    // The new cluster reaches its proxies through the watch stream.
    let synced = eventually(Duration::from_secs(10), || {
        members.iter().all(|p| {
            Conn::try_connect(port(p))
                .ok()
                .and_then(|mut c| c.try_cmd(&["UMCTL", "GETEPOCH"]).ok())
                .is_some_and(|f| matches!(f, moonraft_proxy::resp::Frame::Integer(e) if e as u64 >= epoch))
        })
    });
    assert!(synced, "metadata did not reach the proxies:\n{}", s.logs());
    let (pa, pb) = (port(&members[0]), port(&members[1]));
    assert_eq!(redis_cli(&["-c", "-p", &pa.to_string(), "SET", "a", "1"]), "OK");
    assert_eq!(redis_cli(&["-c", "-p", &pb.to_string(), "GET", "a"]), "1");
    let nodes = redis_cli(&["-p", &pa.to_string(), "CLUSTER", "NODES"]);
    assert!(nodes.contains("0-8191") && nodes.contains("8192-16383"), "{nodes}");

    const KEYS: usize = 300;
    write_all_keys(&s, KEYS, "v0-");
    wait_replicated(&s);

    // A proxy that is merely slow (paused for less than the probe timeout) is left alone.
    let slow = first_master_proxy(&cluster);
    s.host(&slow).proxy.proc.signal("STOP");
    std::thread::sleep(Duration::from_millis(400));
    s.host(&slow).proxy.proc.signal("CONT");
    let left_alone = always(Duration::from_secs(3), || {
        s.brokers.call("GET", "/failures", None).json()["addresses"] == serde_json::json!([])
            && s.cluster("c")["epoch"].as_u64() == Some(epoch)
    });
    assert!(left_alone, "a slow proxy was reported or changed the cluster:\n{}", s.logs());

    // 1. kill -9 of a master proxy: its replica is promoted, a free proxy swapped in.
    let victim = first_master_proxy(&s.cluster("c"));
    s.host(&victim).proxy.proc.kill();
    wait_failed_over(&s, &victim);
    assert_eq!(proxies(&s.cluster("c")).len(), 2);
    assert_all_keys(&s, KEYS, "v0-");
    write_all_keys(&s, KEYS, "v1-");
    wait_replicated(&s);

    // 2. a hung (SIGSTOP) master proxy is failed over once timeouts reveal it; when it
    //    resumes it does not accept writes for the slots it lost.
    let hung = first_master_proxy(&s.cluster("c"));
    s.host(&hung).proxy.proc.signal("STOP");
    wait_failed_over(&s, &hung);
    s.host(&hung).proxy.proc.signal("CONT");
    let mut resumed = Conn::connect(port(&hung));
    resumed.set_timeout(Duration::from_secs(5));
    for i in 0..20 {
        let r = resumed.cmd(&["SET", &format!("key{i}"), "stale-write"]);
        assert_ne!(r, simple("OK"), "the failed-over proxy accepted a write:\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_all_keys(&s, KEYS, "v1-");
    write_all_keys(&s, KEYS, "v2-");
    wait_replicated(&s);

    // 3. a Redis master behind a live proxy dies: the proxy is failed over too.
    let holder = first_master_proxy(&s.cluster("c"));
    let master_node = s.cluster("c")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["proxy_address"] == holder.as_str() && n["repl"]["role"] == "master")
        .map(|n| n["address"].as_str().unwrap().to_owned())
        .unwrap();
    let host = s.host(&holder);
    let idx = host.redis.iter().position(|r| r.addr() == master_node).expect("the master's redis");
    host.redis[idx].proc.kill();
    wait_failed_over(&s, &holder);
    assert_all_keys(&s, KEYS, "v2-");
    write_all_keys(&s, KEYS, "v3-");
    let logs: String = s.coordinators.iter().map(Coordinator::log_text).collect();
    assert!(logs.contains("redis node down"), "{logs}");

    // The resumed proxy comes back through the documented path: register it again (409
    // ALREADY_EXISTED, but it leaves the failed set) and coordinators sync it as a free proxy.
    let host = s.host(&hung);
    let body = serde_json::json!({
        "proxy_address": hung,
        "nodes": [host.redis[0].addr(), host.redis[1].addr()],
        "host": "any",
    })
    .to_string();
    let r = s.brokers.call("POST", "/proxies/meta", Some(&body));
    assert_eq!((r.status, r.error_code()), (409, "ALREADY_EXISTED".to_owned()));
    let back = eventually(Duration::from_secs(10), || {
        let failed = s.brokers.call("GET", "/proxies/failed/addresses", None).json();
        let global = s.brokers.call("GET", "/epoch", None).json().as_u64().unwrap_or(0);
        let epoch = Conn::try_connect(port(&hung)).ok().and_then(|mut c| c.try_cmd(&["UMCTL", "GETEPOCH"]).ok());
        !failed["addresses"].as_array().unwrap().iter().any(|a| a == hung.as_str())
            && matches!(epoch, Some(moonraft_proxy::resp::Frame::Integer(e)) if e as u64 >= global)
    });
    assert!(back, "the re-registered proxy did not return to the pool:\n{}", s.logs());
    let r = Conn::connect(port(&hung)).cmd(&["SET", "x", "1"]);
    assert_ne!(r, simple("OK"), "a free proxy serves no slots");
}

/// Listens on a free port and answers every connection with `reply` (or nothing, if `None`),
/// until the test ends.
fn fake_proxy(reply: Option<&'static [u8]>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            match reply {
                None => held.push(stream),
                Some(bytes) => {
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut stream = stream;
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 || stream.write_all(bytes).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
    });
    addr
}

/// Proxies that hang or answer garbage are reported and failed, and never delay the metadata
/// of the healthy ones; the watch stream survives the broker it came from; the admin port
/// answers `CONFIG GET/SET` with the spec's errors.
#[test]
fn bad_proxies_and_a_lost_broker_stall_nobody() {
    // Compressed SETCLUSTER (enable_compression) is what this coordinator pushes.
    // Bad proxies never answer healthily: a short start-up grace lets them be reported soon.
    let mut s = Stack::start(
        4,
        1,
        &["--reconcile-interval-ms", "60000", "--enable-compression", "true", "--startup-grace-ms", "2000"],
    );
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let members = proxies(&s.cluster("c"));
    let epoch_of = |p: &str| {
        Conn::try_connect(port(p)).ok().and_then(|mut c| c.try_cmd(&["UMCTL", "GETEPOCH"]).ok()).and_then(|f| match f {
            moonraft_proxy::resp::Frame::Integer(e) => Some(e as u64),
            _ => None,
        })
    };
    let synced = |s: &Stack, members: &[String]| {
        let epoch = s.cluster("c")["epoch"].as_u64().unwrap();
        eventually(Duration::from_secs(5), || members.iter().all(|p| epoch_of(p).is_some_and(|e| e >= epoch)))
    };
    assert!(synced(&s, &members), "{}", s.logs());

    // Two bad "proxies": one never answers, one answers garbage.
    let hang = fake_proxy(None);
    let garbage = fake_proxy(Some(b"$-7\r\n%%garbage\r\n"));
    for (i, addr) in [&hang, &garbage].into_iter().enumerate() {
        let body = serde_json::json!({"proxy_address": addr, "nodes": ["127.0.0.1:1", "127.0.0.1:2"], "host": format!("bad{i}")});
        assert_eq!(s.brokers.call("POST", "/proxies/meta", Some(&body.to_string())).status, 200);
    }
    let change = |s: &Stack, strategy: &str| {
        let body = serde_json::json!({"compression_strategy": strategy}).to_string();
        assert_eq!(s.brokers.call("PATCH", "/clusters/config/c", Some(&body)).status, 200);
    };
    change(&s, "set_get_only");
    assert!(synced(&s, &members), "bad proxies delayed the good ones:\n{}", s.logs());
    let failed_both = eventually(Duration::from_secs(15), || {
        let failed = s.brokers.call("GET", "/proxies/failed/addresses", None).json();
        let list = failed["addresses"].as_array().unwrap();
        list.iter().any(|a| a == hang.as_str()) && list.iter().any(|a| a == garbage.as_str())
    });
    assert!(failed_both, "{}", s.logs());

    // The broker the coordinator watches dies: changes still arrive (another member's stream).
    s.brokers.members[0].proc.kill();
    change(&s, "disabled");
    assert!(synced(&s, &members), "the watch did not move to another broker:\n{}", s.logs());

    // Admin port.
    let mut admin = Conn::connect(s.coordinators[0].admin);
    let brokers = admin.cmd(&["CONFIG", "GET", "brokers"]);
    assert_eq!(brokers, bulk(&s.brokers.grpc_addresses()));
    assert_eq!(admin.cmd(&["CONFIG", "GET", "reporter_id"]), bulk("co0"));
    assert_eq!(admin.cmd(&["CONFIG", "SET", "probe_interval_ms", "300"]), simple("OK"));
    assert_eq!(admin.cmd(&["CONFIG", "GET", "probe_interval_ms"]), bulk("300"));
    assert_eq!(error_text(&admin.cmd(&["CONFIG", "GET", "nope"])), "Invalid CONFIG field nope");
    assert_eq!(error_text(&admin.cmd(&["CONFIG", "SET", "reporter_id", "x"])), "Invalid CONFIG SET field reporter_id");
    assert!(error_text(&admin.cmd(&["CONFIG", "SET", "proxy_lease_ms", "99999"])).contains("shorter than"));
    assert_eq!(error_text(&admin.cmd(&["CONFIG", "FLY", "x"])), "Invalid config sub command: FLY");
    assert_eq!(error_text(&admin.cmd(&["CONFIG"])), "Missing sub argument");
    assert_eq!(error_text(&admin.cmd(&["UMCTL", "NOPE"])), "Invalid sub command for UMCTL");
    let future = admin.cmd(&["UMCTL", "DEBUG", "FUTURE"]);
    assert!(matches!(&future, moonraft_proxy::resp::Frame::Array(a) if a.len() == 6), "{future:?}");
    assert!(error_text(&admin.cmd(&["FLUSHALL"])).starts_with("ERR_COMMAND_NOT_SUPPORTED"));
    let live: Vec<String> = s.brokers.members[1..].iter().map(|m| m.grpc.clone()).collect();
    assert_eq!(admin.cmd(&["CONFIG", "SET", "brokers", &live.join(",")]), simple("OK"));
    change(&s, "set_get_only");
    assert!(synced(&s, &members), "{}", s.logs());
}

/// Runs `moonraft <args>` and returns its exit success and stderr; killed (and failed) if it
/// is still running after `limit`.
fn run_bounded(args: &[&str], limit: Duration) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn moonraft");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            return (status.success(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moonraft {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An undermoon-style configuration names the brokers' HTTP `/api/v3` addresses: the
/// coordinator (and `moonraft ctl`) learns their gRPC addresses from one of them and works;
/// an address that answers as neither (a Redis port) stops start-up at once, naming both ports.
#[test]
fn http_broker_addresses_are_resolved_and_a_wrong_port_fails_fast() {
    let mut s = Stack::start(2, 0, &[]);
    let http = s.brokers.members[1].http.clone();
    s.coordinators.push(Coordinator::start(&http, &s.dir.0, "co-http", &[]));
    let r = s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#));
    assert_eq!(r.status, 200);
    let cluster = s.cluster("c");
    let epoch = cluster["epoch"].as_u64().unwrap();
    let synced = eventually(Duration::from_secs(15), || {
        proxies(&cluster).iter().all(|p| proxy_epoch(port(p)).is_some_and(|e| e >= epoch))
    });
    assert!(synced, "metadata did not reach the proxies:\n{}", s.logs());
    let log = s.coordinators[0].log_text();
    assert!(log.contains("is an HTTP /api/v3 address"), "{log}");
    // all three members' gRPC addresses were learnt, so losing the one named does not matter
    for m in &s.brokers.members {
        assert!(log.contains(&m.grpc), "{} not learnt: {log}", m.grpc);
    }

    // ctl with an HTTP address
    let (ok, err, _) = run_bounded(&["ctl", "--broker", &http, "clusters"], Duration::from_secs(30));
    assert!(ok, "{err}");

    // a Redis port is neither: start-up fails at once with a message naming the right ports
    let redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let (ok, err, took) =
        run_bounded(&["coordinator", "--address", &admin, "--broker-address", &redis.addr()], Duration::from_secs(30));
    assert!(!ok, "a coordinator given a Redis port as broker started: {err}");
    assert!(err.contains(&redis.addr()) && err.contains("7800") && err.contains("7799"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (ok, err, _) = run_bounded(&["ctl", "--broker", &redis.addr(), "clusters"], Duration::from_secs(30));
    assert!(!ok && err.contains("7800") && err.contains("7799"), "{err}");
}
