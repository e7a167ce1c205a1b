//! Online slot migration end to end: a 4-node cluster with data scales out to 8 and back to 4
//! while a client keeps writing; every acknowledged write is there afterwards with its last
//! value, no key is on two masters, and the proxies show the expected slot ranges.

mod common;

use common::*;
use moonraft_proxy::resp::Frame;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("host:port")
}

fn entry_points(s: &Stack) -> Vec<u16> {
    s.hosts.iter().map(|h| h.proxy.port).collect()
}

/// `moonraft ctl cluster progress --json` through the surviving brokers.
fn ctl_progress(s: &Stack) -> Value {
    let brokers: Vec<String> =
        s.brokers.members.iter().filter(|m| m.proc.child.is_some()).map(|m| m.grpc.clone()).collect();
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--broker", &brokers.join(","), "--json", "cluster", "progress", "c"])
        .output()
        .expect("ctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Nice values of a process's threads named `proxy-background` (the migration copy's thread).
fn background_nice(pid: u32) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(')')?;
            // The kernel keeps 15 bytes of a thread's name.
            head.ends_with("(proxy-backgroun").then_some(())?;
            // Fields after the name start at field 3; nice is field 19.
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

fn masters(cluster: &Value) -> Vec<String> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["repl"]["role"] == "master")
        .map(|n| n["address"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_migrated(s: &Stack, with_slots: u64) {
    let done = eventually(Duration::from_secs(90), || {
        let info = s.brokers.call("GET", "/clusters/info/c", None).json();
        info["is_migrating"] == false && info["node_number_with_slots"] == with_slots
    });
    assert!(done, "migration did not finish:\n{}", s.logs());
}

/// Every key on exactly one master, and the total is what the client wrote.
fn assert_keys_on_one_master(s: &Stack, expected: usize) {
    let mut seen: HashMap<Vec<u8>, String> = HashMap::new();
    for m in masters(&s.cluster("c")) {
        let mut c = Conn::connect(port(&m));
        let Frame::Array(keys) = c.cmd(&["KEYS", "*"]) else { panic!("KEYS") };
        for k in keys {
            let Frame::Bulk(k) = k else { continue };
            if let Some(other) = seen.insert(k.to_vec(), m.clone()) {
                panic!("{} is on {other} and {m}", String::from_utf8_lossy(&k));
            }
        }
    }
    assert_eq!(seen.len(), expected);
}

struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, String>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

/// Writes `w0..w199` round and round with increasing values until stopped; remembers the
/// last acknowledged value of each key.
fn start_writer(entry: Vec<u16>) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let (stop2, acked2) = (stop.clone(), acked.clone());
    let thread = std::thread::spawn(move || {
        let client = ClusterClient { entry, password: None };
        let started = Instant::now();
        let mut n = 0usize;
        while !stop2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
            let key = format!("w{}", n % 200);
            let value = format!("v{n}");
            if client.cmd(&["SET", &key, &value], Duration::from_secs(30)) == Ok(simple("OK")) {
                acked2.lock().unwrap().insert(key, value);
            }
            n += 1;
        }
        n
    });
    Writer { stop, acked, thread: Some(thread) }
}

impl Writer {
    /// Waits (at most 20 s) until the writer has `n` acknowledged keys.
    fn wait_acked(&self, n: usize) -> bool {
        eventually(Duration::from_secs(20), || self.acked.lock().unwrap().len() >= n)
    }

    fn finish(&mut self) -> HashMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.thread.take().map(|t| t.join().expect("writer")).unwrap_or(0);
        assert!(n > 100, "the writer made progress ({n} writes)");
        self.acked.lock().unwrap().clone()
    }
}

fn check(s: &Stack, keys: usize, acked: &HashMap<String, String>) {
    let client = ClusterClient { entry: entry_points(s), password: None };
    for i in 0..keys {
        let got = client.cmd(&["GET", &format!("key{i}")], Duration::from_secs(20));
        assert_eq!(got, Ok(bulk(&format!("value{i}"))), "key{i}:\n{}", s.logs());
    }
    for (k, v) in acked {
        let got = client.cmd(&["GET", k], Duration::from_secs(20));
        assert_eq!(got, Ok(bulk(v)), "{k} lost its last acknowledged write");
    }
    assert_keys_on_one_master(s, keys + acked.len());
}

#[test]
fn scale_out_and_in_under_writes_loses_nothing() {
    let mut s = Stack::start(6, 2, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let client = ClusterClient { entry: entry_points(&s), password: None };
    const KEYS: usize = 3000;
    for i in 0..KEYS {
        let r = client.cmd(&["SET", &format!("key{i}"), &format!("value{i}")], Duration::from_secs(20));
        assert_eq!(r, Ok(simple("OK")), "{}", s.logs());
    }

    // Scale out to 8 while writing.
    let mut writer = start_writer(entry_points(&s));
    assert!(writer.wait_acked(20), "the writer made no progress");
    assert_eq!(s.brokers.call("PATCH", "/clusters/nodes/c", Some(r#"{"node_number": 4}"#)).status, 200);
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/expand/c", None).status, 200);
    // Progress is part of the cluster info while the migration runs.
    let info = s.brokers.call("GET", "/clusters/info/c", None).json();
    if info["is_migrating"] == true {
        let m = &info["migrations"][0];
        assert!(m["src_proxy_address"].is_string() && m["range_list"].is_array(), "{info}");
        assert!(m["keys_moved"].is_u64() && m["state"].is_string(), "{info}");
    }
    // Kill one coordinator and the broker leader mid-migration: it still completes.
    s.coordinators[0].proc.kill();
    let leader = s.brokers.wait_leader(Duration::from_secs(10)).expect("a leader");
    s.brokers.members.iter_mut().find(|m| m.id == leader).expect("leader").proc.kill();
    wait_migrated(&s, 8);
    let acked = writer.finish();
    check(&s, KEYS, &acked);
    assert_eq!(ctl_progress(&s), serde_json::json!({"is_migrating": false, "migrations": []}));
    // The copy ran on the source proxies' background thread, at the lowest CPU priority.
    let background: Vec<i64> = s.hosts.iter().flat_map(|h| background_nice(h.proxy.proc.pid())).collect();
    assert!(!background.is_empty() && background.iter().all(|&n| n == 19), "copy threads' nice values: {background:?}");
    let cluster = s.cluster("c");
    let proxy = cluster["nodes"][0]["proxy_address"].as_str().unwrap().to_owned();
    let nodes = redis_cli(&["-p", &port(&proxy).to_string(), "CLUSTER", "NODES"]);
    for range in ["0-4095", "4096-8191", "8192-12287", "12288-16383"] {
        assert!(nodes.contains(range), "{range} missing from CLUSTER NODES:\n{nodes}");
    }

    // And back to 4.
    let mut writer = start_writer(entry_points(&s));
    assert!(writer.wait_acked(20), "the writer made no progress");
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/shrink/c/4", None).status, 200);
    wait_migrated(&s, 4);
    let r = s.brokers.call("DELETE", "/clusters/free_nodes/c", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let acked2 = writer.finish();
    let mut all = acked;
    all.extend(acked2);
    check(&s, KEYS, &all);
    assert_eq!(s.cluster("c")["nodes"].as_array().map(Vec::len), Some(4));
}

/// A destination Redis that refuses RESTORE (out of memory) pauses the copy: the progress in
/// the cluster info names the reason, nothing is lost or committed early, and the migration
/// completes once the destination accepts data again.
#[test]
fn a_full_destination_pauses_the_copy_and_reports_why() {
    let s = Stack::start(4, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let client = ClusterClient { entry: entry_points(&s), password: None };
    const KEYS: usize = 500;
    for i in 0..KEYS {
        let r = client.cmd(&["SET", &format!("key{i}"), &format!("value{i}")], Duration::from_secs(20));
        assert_eq!(r, Ok(simple("OK")));
    }
    let added = s.brokers.call("PATCH", "/clusters/nodes/c", Some(r#"{"node_number": 4}"#)).json();
    let new_nodes: Vec<String> =
        added.as_array().unwrap().iter().map(|n| n["address"].as_str().unwrap().to_owned()).collect();
    for n in &new_nodes {
        assert_eq!(Conn::connect(port(n)).cmd(&["CONFIG", "SET", "maxmemory", "1"]), simple("OK"));
    }
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/expand/c", None).status, 200);
    let mut last = Value::Null;
    let paused = eventually(Duration::from_secs(30), || {
        last = s.brokers.call("GET", "/clusters/info/c", None).json();
        last["migrations"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["error"].as_str().is_some_and(|e| e.contains("OOM"))))
    });
    assert!(paused, "the pause was not reported: {last}\n{}", s.logs());
    assert_eq!(last["is_migrating"], true);
    for n in &new_nodes {
        assert_eq!(Conn::connect(port(n)).cmd(&["CONFIG", "SET", "maxmemory", "0"]), simple("OK"));
    }
    wait_migrated(&s, 8);
    check(&s, KEYS, &HashMap::new());
}

/// Big keys (each over the 4 MB chunking threshold) in migrating slots are copied element by
/// element and arrive whole, with their TTL, while small keys take the DUMP path.
#[test]
fn big_keys_are_copied_in_chunks_and_arrive_whole() {
    use moonraft_proxy::slot::key_slot;
    let s = Stack::start(4, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let client = ClusterClient { entry: entry_points(&s), password: None };
    // Keys in 4096-8191, a range the expand from 4 to 8 nodes moves.
    let name = |prefix: &str| {
        (0..).map(|i| format!("{prefix}{i}")).find(|k| (4096..8192).contains(&key_slot(k.as_bytes()))).unwrap()
    };
    let (hash, set, zset, list, string) = (name("hash"), name("set"), name("zset"), name("list"), name("string"));
    let n = 150_000;
    let cmd = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = client.cmd(&refs, Duration::from_secs(60));
        assert!(matches!(r, Ok(Frame::Integer(_)) | Ok(Frame::Simple(_))), "{:?}: {r:?}", &args[..2]);
    };
    let mut h = vec!["HSET".to_owned(), hash.clone()];
    let mut st = vec!["SADD".to_owned(), set.clone()];
    let mut z = vec!["ZADD".to_owned(), zset.clone()];
    let mut l = vec!["RPUSH".to_owned(), list.clone()];
    for i in 0..n {
        h.extend([format!("field{i}"), format!("value-{i}-abcdefghij")]);
        st.push(format!("member-{i}-abcdefghij"));
        z.extend([i.to_string(), format!("zmember-{i}-abcdefghij")]);
        l.push(format!("item-{i}-abcdefghijklmnop"));
    }
    cmd(h);
    cmd(st);
    cmd(z);
    cmd(l);
    let big_string = "s".repeat(6 << 20);
    cmd(vec!["SET".into(), string.clone(), big_string.clone()]);
    cmd(vec!["PEXPIRE".into(), hash.clone(), "600000".into()]);
    for i in 0..200 {
        cmd(vec!["SET".into(), format!("key{i}"), format!("value{i}")]);
    }
    // (MEMORY USAGE asked of the masters directly: the proxy does not route MEMORY.)
    for k in [&hash, &set, &zset, &list, &string] {
        let usage: i64 = masters(&s.cluster("c"))
            .iter()
            .map(|m| match Conn::connect(port(m)).cmd(&["MEMORY", "USAGE", k]) {
                Frame::Integer(u) => u,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        assert!(usage > 4 << 20, "{k} is not big: {usage}");
    }
    assert_eq!(s.brokers.call("PATCH", "/clusters/nodes/c", Some(r#"{"node_number": 4}"#)).status, 200);
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/expand/c", None).status, 200);
    wait_migrated(&s, 8);
    let int = |args: &[&str]| match client.cmd(args, Duration::from_secs(20)) {
        Ok(Frame::Integer(v)) => v,
        other => panic!("{args:?}: {other:?}"),
    };
    assert_eq!(int(&["HLEN", &hash]), n as i64);
    assert_eq!(client.cmd(&["HGET", &hash, "field777"], Duration::from_secs(5)), Ok(bulk("value-777-abcdefghij")));
    assert!((1..=600_000).contains(&int(&["PTTL", &hash])), "the TTL travelled with the hash");
    assert_eq!(int(&["SCARD", &set]), n as i64);
    assert_eq!(int(&["ZCARD", &zset]), n as i64);
    assert_eq!(client.cmd(&["ZSCORE", &zset, "zmember-4242-abcdefghij"], Duration::from_secs(5)), Ok(bulk("4242")));
    assert_eq!(int(&["LLEN", &list]), n as i64);
    assert_eq!(
        client.cmd(&["LINDEX", &list, "12345"], Duration::from_secs(5)),
        Ok(bulk("item-12345-abcdefghijklmnop"))
    );
    assert_eq!(int(&["STRLEN", &string]), big_string.len() as i64);
    assert_eq!(int(&["PTTL", &string]), -1);
    for i in 0..200 {
        assert_eq!(client.cmd(&["GET", &format!("key{i}")], Duration::from_secs(5)), Ok(bulk(&format!("value{i}"))));
    }
    // The big keys now live on the new masters, once.
    assert_keys_on_one_master(&s, 205);
    let nodes = s.cluster("c");
    let owner = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["slots"].as_array().unwrap().iter().any(|r| r["range_list"][0][0] == 4096))
        .map(|n| n["address"].as_str().unwrap().to_owned())
        .unwrap();
    let mut c = Conn::connect(port(&owner));
    assert_eq!(c.cmd(&["EXISTS", &hash]), Frame::Integer(1));
    let logs = s.logs();
    for kind in ["hash", "set", "zset", "list", "string"] {
        assert!(logs.contains(&format!("big {kind} key copied in chunks")), "{kind} not chunked");
    }
    assert_eq!(c.cmd(&["EXISTS", &format!("__moonraft_migrating__:{hash}")]), Frame::Integer(0));
}

/// kill -9 of the source proxy in the middle of a copy: the brokers fail it over (the tasks
/// get the promoted replica as their source), the copy resumes from there, and no key is lost.
#[test]
fn killing_the_source_proxy_mid_copy_loses_nothing() {
    let mut s = Stack::start(6, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    const KEYS: usize = 300_000;
    pipe_load(&s, 0..KEYS);
    // Replicas must have everything before the kill (only replicated keys survive a failover).
    let replicated = eventually(Duration::from_secs(60), || {
        let c = s.cluster("c");
        c["nodes"].as_array().unwrap().iter().filter(|n| n["repl"]["role"] == "replica").all(|n| {
            let master = n["repl"]["peers"][0]["node_address"].as_str().unwrap();
            let size = |a: &str| match Conn::connect(port(a)).cmd(&["DBSIZE"]) {
                Frame::Integer(n) => n,
                _ => -1,
            };
            size(master) == size(n["address"].as_str().unwrap())
        })
    });
    assert!(replicated);
    assert_eq!(s.brokers.call("PATCH", "/clusters/nodes/c", Some(r#"{"node_number": 4}"#)).status, 200);
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/expand/c", None).status, 200);
    let mut source = None;
    let copying = eventually(Duration::from_secs(30), || {
        let info = s.brokers.call("GET", "/clusters/info/c", None).json();
        source = info["migrations"].as_array().and_then(|m| {
            m.iter()
                .find(|m| m["state"] == "Scanning" && m["keys_moved"].as_u64().unwrap_or(0) > 1000)
                .map(|m| m["src_proxy_address"].as_str().unwrap().to_owned())
        });
        source.is_some()
    });
    assert!(copying, "no copy in progress to interrupt:\n{}", s.logs());
    let source = source.unwrap();
    s.host(&source).proxy.proc.kill();
    wait_migrated(&s, 8);
    assert!(!proxies_of(&s).contains(&source), "the killed source was failed over");
    let client = ClusterClient {
        entry: s.hosts.iter().filter(|h| h.proxy.addr() != source).map(|h| h.proxy.port).collect(),
        password: None,
    };
    for i in (0..KEYS).step_by(97) {
        let got = client.cmd(&["GET", &format!("key{i}")], Duration::from_secs(20));
        assert_eq!(got, Ok(bulk(&format!("value{i}"))), "key{i}:\n{}", s.logs());
    }
    assert_keys_on_one_master(&s, KEYS);
}

fn proxies_of(s: &Stack) -> Vec<String> {
    s.cluster("c")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["proxy_address"].as_str().unwrap().to_owned())
        .collect()
}

/// Where scripting is off (here by ACL), a pull copies the key with plain commands instead of
/// the one-key read script. A client that reads (served where the key is, `UMREAD`) and
/// rewrites keys (pulled first) during the migration sees every value, pulls happened, and
/// every key ends up on one master.
#[test]
fn reads_and_pulls_during_a_migration_where_scripting_is_disabled() {
    let s = Stack::start(4, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    const KEYS: usize = 100_000;
    pipe_load(&s, 0..KEYS);
    for h in &s.hosts {
        for r in &h.redis {
            let mut c = r.conn();
            assert_eq!(c.cmd(&["ACL", "SETUSER", "default", "-@scripting"]), simple("OK"));
            assert!(matches!(c.cmd(&["EVAL", "return 1", "0"]), Frame::Error(e) if e.starts_with("NOPERM")));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, entry) = (stop.clone(), entry_points(&s));
        std::thread::spawn(move || {
            let client = ClusterClient { entry, password: None };
            let (mut reads, mut wrong) = (0usize, Vec::new());
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let i = (reads / 2).wrapping_mul(7919) % KEYS;
                let (key, value) = (format!("key{i}"), format!("value{i}"));
                if reads % 2 == 0 {
                    let got = client.cmd(&["GET", &key], Duration::from_secs(20));
                    if got != Ok(bulk(&value)) {
                        wrong.push(format!("GET {key}: {got:?}"));
                    }
                } else {
                    // The same value again: a write, so the key is pulled first.
                    let got = client.cmd(&["SET", &key, &value], Duration::from_secs(20));
                    if got != Ok(simple("OK")) {
                        wrong.push(format!("SET {key}: {got:?}"));
                    }
                }
                reads += 1;
            }
            (reads, wrong)
        })
    };
    assert_eq!(s.brokers.call("PATCH", "/clusters/nodes/c", Some(r#"{"node_number": 4}"#)).status, 200);
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/expand/c", None).status, 200);
    wait_migrated(&s, 8);
    stop.store(true, Ordering::Relaxed);
    let (reads, wrong) = reader.join().expect("reader");
    assert!(reads > 100, "the reader made progress ({reads} reads)");
    assert!(wrong.is_empty(), "wrong reads during the migration: {:?}", &wrong[..wrong.len().min(5)]);
    let pulled: u64 = s.hosts.iter().map(|h| pulled_in_log(&h.proxy.log_text())).sum();
    assert!(pulled > 0, "no key was pulled; logs:\n{}", s.logs());
    assert_keys_on_one_master(&s, KEYS);
    // UMREAD outside a migration, and with a command it does not take.
    let mut proxy = Conn::connect(s.hosts[0].proxy.port);
    assert_eq!(proxy.cmd(&["UMREAD", "GET", "key1"]), Frame::Error("UMREAD_NOT_ON_SOURCE".into()));
    assert!(matches!(proxy.cmd(&["UMREAD", "SET", "key1", "x"]), Frame::Error(e) if e.contains("read-only")));
    assert!(matches!(proxy.cmd(&["UMREAD", "NOSUCH", "key1"]), Frame::Error(e) if e.contains("unknown command")));
    assert!(matches!(proxy.cmd(&["UMREAD", "GET"]), Frame::Error(e) if e.contains("wrong number")));
    assert_eq!(proxy.cmd(&["PING"]), simple("PONG"));
}
