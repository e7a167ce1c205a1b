//! Redis compatibility through moonraft, with real clients against a real 4-proxy cluster
//! under a coordinator: what an application moving from Redis Cluster does (transactions,
//! node-scoped commands merged by the cluster client, scripts), with redis-py's RedisCluster in
//! RESP2 and RESP3 (tests/py/compat_client.py says what is checked).

mod common;

use common::*;
use moonraft_proxy::resp::Frame;
use std::process::Command;
use std::time::Duration;

/// A cluster of 8 nodes on 4 proxies, every proxy synced and serving its slots.
fn four_proxy_cluster() -> Stack {
    four_proxy_cluster_with(&StackFlags::default())
}

fn four_proxy_cluster_with(flags: &StackFlags) -> Stack {
    let s = Stack::start_with(4, 1, flags);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 8}"#)).status, 200);
    let synced = eventually(Duration::from_secs(20), || {
        s.hosts.iter().all(|h| match h.proxy.conn().cmd(&["CLUSTER", "INFO"]) {
            Frame::Bulk(b) => String::from_utf8_lossy(&b).contains("cluster_state:ok"),
            _ => false,
        })
    });
    assert!(synced, "the proxies did not get the cluster:\n{}", s.logs());
    s
}

fn run_compat_client(s: &Stack, proto: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/compat_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.hosts[0].proxy.addr())
        .arg(proto)
        .arg("4")
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py (RESP{proto}) failed:\n{stdout}\n{stderr}\nproxy log:\n{}",
        s.hosts[0].proxy.log_text()
    );
    assert!(stdout.contains("compatibility OK"), "{stdout}");
}

#[test]
fn redis_py_cluster_client_resp2() {
    let s = four_proxy_cluster();
    run_compat_client(&s, "2");
    // redis-cli in cluster mode follows MOVED between the proxies.
    let out = redis_cli(
        &["-c", "-p", &s.hosts[0].proxy.port.to_string()],
        (0..500).map(|i| format!("SET cli:{i} v{i}\n")).collect(),
    );
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), 500, "{out}");
    let out = redis_cli(
        &["-c", "-p", &s.hosts[2].proxy.port.to_string()],
        (0..500).map(|i| format!("GET cli:{i}\n")).collect(),
    );
    // (it says "-> Redirected to slot …" each time it follows a MOVED)
    let values: Vec<&str> = out.lines().filter(|l| !l.starts_with("-> Redirected")).collect();
    assert_eq!(values, (0..500).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert!(out.contains("-> Redirected"), "every key was on the first proxy?");
}

/// `redis-cli <args>` with `input` on stdin (one command per line); its output.
fn redis_cli(args: &[&str], input: String) -> String {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("redis-cli output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_py_cluster_client_resp3() {
    let s = four_proxy_cluster();
    run_compat_client(&s, "3");
}

fn node_addresses(cluster: &serde_json::Value, role: &str) -> Vec<String> {
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .filter(|n| n["repl"]["role"] == role)
        .filter_map(|n| n["address"].as_str().map(str::to_owned))
        .collect()
}

fn dbsize(port: u16) -> i64 {
    match Conn::try_connect(port).ok().and_then(|mut c| c.try_cmd(&["DBSIZE"]).ok()) {
        Some(Frame::Integer(n)) => n,
        _ => -1,
    }
}

/// After a failover one proxy fronts two master nodes: `SCAN` through it walks both (its
/// cursor names the node), every key exactly once, and `DBSIZE`/`KEYS` add both up.
#[test]
fn scan_walks_every_master_node_of_a_proxy_exactly_once() {
    let mut s = Stack::start(3, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let cluster = s.cluster("c");
    let proxies: Vec<String> = {
        let mut p: Vec<String> = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["proxy_address"].as_str().map(str::to_owned))
            .collect();
        p.dedup();
        p
    };
    assert_eq!(proxies.len(), 2);
    let entry: Vec<u16> = proxies.iter().map(|p| port_of_addr(p)).collect();
    let client = ClusterClient { entry, password: None };
    let n = 1000;
    for i in 0..n {
        assert_eq!(client.cmd(&["SET", &format!("k{i}"), "v"], Duration::from_secs(20)), Ok(simple("OK")));
    }
    // Every replica holds its master's keys before a proxy is killed.
    let replicas = node_addresses(&cluster, "replica");
    let replicated =
        eventually(Duration::from_secs(20), || replicas.iter().map(|r| dbsize(port_of_addr(r))).sum::<i64>() == n);
    assert!(replicated, "replicas did not catch up");
    let (victim, survivor) = (proxies[0].clone(), proxies[1].clone());
    s.host(&victim).proxy.proc.kill();
    let failed_over = eventually(Duration::from_secs(30), || {
        let c = s.cluster("c");
        let masters: Vec<String> = c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["repl"]["role"] == "master")
            .filter_map(|n| n["proxy_address"].as_str().map(str::to_owned))
            .collect();
        masters.iter().all(|p| *p == survivor)
    });
    assert!(failed_over, "{victim} was not failed over:\n{}", s.logs());
    let mut conn = s.host(&survivor).proxy.conn();
    let two_masters = eventually(Duration::from_secs(10), || match conn.cmd(&["DBSIZE"]) {
        Frame::Integer(k) => k == n,
        _ => false,
    });
    assert!(two_masters, "DBSIZE through the survivor does not add up its two masters");
    let mut seen = Vec::new();
    let mut cursor = "0".to_owned();
    let mut nodes_visited = std::collections::BTreeSet::new();
    for _ in 0..10_000 {
        let Frame::Array(parts) = conn.cmd(&["SCAN", &cursor, "COUNT", "50"]) else { panic!("SCAN reply") };
        let (Some(Frame::Bulk(next)), Some(Frame::Array(keys))) = (parts.first(), parts.get(1)) else {
            panic!("{parts:?}")
        };
        seen.extend(keys.iter().filter_map(|k| k.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())));
        cursor = String::from_utf8_lossy(next).into_owned();
        nodes_visited.insert(cursor.parse::<u64>().unwrap_or(0) & 1023);
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "the scan did not end");
    assert!(nodes_visited.contains(&1), "the cursor never moved to the second node: {nodes_visited:?}");
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "SCAN returned keys twice");
    assert_eq!(unique.len(), n as usize, "SCAN missed keys");
    let Frame::Array(all) = conn.cmd(&["KEYS", "k*"]) else { panic!("KEYS") };
    assert_eq!(all.len(), n as usize);
    // A cursor that does not parse is refused; one for a node the proxy does not have ends the scan.
    assert!(error_text(&conn.cmd(&["SCAN", "x"])).contains("invalid cursor"));
    let Frame::Array(parts) = conn.cmd(&["SCAN", "5"]) else { panic!() };
    assert_eq!(parts.first(), Some(&Frame::Bulk("0".into())));
}

/// `active_redirection = true`: clients that do not speak the cluster protocol use any proxy
/// as one Redis. `redis-cli` without `-c` writes and reads keys of every slot through one
/// proxy (and reads them back through another), and `redis-benchmark` without `--cluster`
/// runs against one proxy with keys spread over every slot and no error.
#[test]
fn active_redirection_serves_plain_clients_for_every_slot() {
    let flags = StackFlags { proxy: &["--active-redirection", "true"], ..StackFlags::default() };
    let s = four_proxy_cluster_with(&flags);
    let n = 2000;
    let run_cli = |port: u16, input: String| redis_cli(&["-p", &port.to_string()], input);
    let sets: String = (0..n).map(|i| format!("SET key:{i} value-{i}\n")).collect();
    let out = run_cli(s.hosts[0].proxy.port, sets);
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), n, "{}", &out[..out.len().min(2000)]);
    let gets: String = (0..n).map(|i| format!("GET key:{i}\n")).collect();
    let out = run_cli(s.hosts[3].proxy.port, gets);
    let expected: Vec<String> = (0..n).map(|i| format!("value-{i}")).collect();
    assert_eq!(out.lines().map(str::to_owned).collect::<Vec<_>>(), expected);
    // Multi-key commands over several slots are split by key and merged.
    let multi = "MSET a 1 b 2 c 3 d 4\nMGET a b c d nope\nEXISTS a b c d nope\nDEL a b c d\nEXISTS a b\n";
    let out = run_cli(s.hosts[2].proxy.port, multi.to_owned());
    assert_eq!(out.lines().collect::<Vec<_>>(), ["OK", "1", "2", "3", "4", "", "4", "4", "0"], "{out}");
    // The keys really are on every master node, not all on the entry proxy's.
    let masters = node_addresses(&s.cluster("c"), "master");
    for m in &masters {
        assert!(dbsize(port_of_addr(m)) > (n / 8) as i64, "{m} holds too few keys");
    }
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &s.hosts[1].proxy.port.to_string(),
            "-t",
            "set,get",
            "-n",
            "20000",
            "-r",
            "100000",
            "-c",
            "20",
            "-q",
        ])
        .output()
        .expect("redis-benchmark");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Error") && !stderr.contains("Error"), "{stdout}\n{stderr}");
    assert!(stdout.contains("SET:") && stdout.contains("GET:"), "{stdout}");
    println!("redis-benchmark through one proxy with active redirection:\n{stdout}");
}

/// A client parked in `BLPOP k 0` on a slot that an expand moves does not hold the migration
/// up: when the source starts draining, the command is released with `TRYAGAIN` (or returns
/// what it popped), the expand finishes, and the retried `BLPOP` is served by the new owner.
#[test]
fn a_parked_blpop_does_not_hold_up_an_expand() {
    use moonraft_proxy::slot::key_slot;
    let s = Stack::start(4, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    // A key in 4096-8191, a range the expand from 4 to 8 nodes moves.
    let key = (0..).map(|i| format!("list{i}")).find(|k| (4096..8192).contains(&key_slot(k.as_bytes()))).unwrap();
    let owner = eventually(Duration::from_secs(20), || {
        s.hosts.iter().any(|h| matches!(h.proxy.conn().cmd(&["LLEN", &key]), Frame::Integer(0)))
    });
    assert!(owner, "no proxy serves {key}:\n{}", s.logs());
    let port =
        s.hosts.iter().find(|h| matches!(h.proxy.conn().cmd(&["LLEN", &key]), Frame::Integer(0))).unwrap().proxy.port;
    let mut parked = Conn::connect(port);
    parked.set_timeout(Duration::from_secs(120));
    parked.send(&["BLPOP", &key, "0"]);
    assert!(wait_blocked(port, "blpop"), "the BLPOP is not parked");
    let started = std::time::Instant::now();
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/auto/c/8", None).status, 200);
    let done = eventually(Duration::from_secs(60), || {
        let info = s.brokers.call("GET", "/clusters/info/c", None).json();
        info["is_migrating"] == false && info["node_number_with_slots"] == 8
    });
    assert!(done, "the expand did not finish with a BLPOP parked on a moving slot:\n{}", s.logs());
    println!("expand finished in {:?} with a BLPOP parked", started.elapsed());
    let reply = parked.try_read().expect("the parked BLPOP got a reply");
    assert!(error_text(&reply).starts_with("TRYAGAIN"), "{reply:?}");
    // Retried through a cluster client: served where the key lives now.
    let client = ClusterClient { entry: s.hosts.iter().map(|h| h.proxy.port).collect(), password: None };
    assert_eq!(client.cmd(&["RPUSH", &key, "x"], Duration::from_secs(20)), Ok(Frame::Integer(1)));
    let popped = client.cmd(&["BLPOP", &key, "1"], Duration::from_secs(20));
    assert_eq!(popped, Ok(Frame::Array(vec![Frame::Bulk(key.clone().into()), Frame::Bulk("x".into())])));
}

fn push(items: &[&str], count: i64) -> Vec<Frame> {
    let mut v: Vec<Frame> = items.iter().map(|s| bulk(s)).collect();
    v.push(Frame::Integer(count));
    v
}

fn message(kind: &str, channel: &str, payload: &str) -> Frame {
    Frame::Array(vec![bulk(kind), bulk(channel), bulk(payload)])
}

/// The proxy serving `key`'s slot (the one that answers a command for it instead of MOVED).
fn owner_port(s: &Stack, key: &str) -> Option<u16> {
    s.hosts.iter().find(|h| matches!(h.proxy.conn().cmd(&["EXISTS", key]), Frame::Integer(_))).map(|h| h.proxy.port)
}

/// Pub/sub as in Redis Cluster, with raw RESP2 and RESP3 connections: a message published
/// through one proxy reaches subscribers on every proxy exactly once; RESP2 subscribed mode
/// allows only subscription commands and PING; RESP3 clients get push frames and may run
/// other commands; a shard channel's subscriber is told (`sunsubscribe`) when an expand moves
/// its slot, and subscribes again where the slot went.
#[test]
fn pubsub_across_proxies_and_shard_channels_follow_a_migration() {
    use moonraft_proxy::slot::key_slot;
    let s = Stack::start(4, 1, &[]);
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    // A shard channel in 4096-8191, a range the expand from 4 to 8 nodes moves.
    let channel = (0..).map(|i| format!("sch{i}")).find(|k| (4096..8192).contains(&key_slot(k.as_bytes()))).unwrap();
    assert!(eventually(Duration::from_secs(20), || owner_port(&s, &channel).is_some()), "{}", s.logs());
    let members: Vec<u16> = s
        .hosts
        .iter()
        .filter(|h| matches!(h.proxy.conn().cmd(&["CLUSTER", "INFO"]), Frame::Bulk(b) if String::from_utf8_lossy(&b).contains("cluster_state:ok")))
        .map(|h| h.proxy.port)
        .collect();
    assert_eq!(members.len(), 2, "two proxies serve the 4 nodes");

    // Classic channels: a RESP2 subscriber on each member proxy, a RESP3 one on the first.
    let mut subscribers: Vec<Conn> = members.iter().map(|p| Conn::connect(*p)).collect();
    for c in subscribers.iter_mut() {
        c.set_timeout(Duration::from_secs(10));
        c.send(&["SUBSCRIBE", "news", "alerts"]);
        assert_eq!(c.read(), Frame::Array(push(&["subscribe", "news"], 1)));
        assert_eq!(c.read(), Frame::Array(push(&["subscribe", "alerts"], 2)));
        assert_eq!(c.cmd(&["PSUBSCRIBE", "ne*"]), Frame::Array(push(&["psubscribe", "ne*"], 3)));
        // RESP2 subscribed mode: only subscription commands and PING (a message-shaped pong).
        assert!(error_text(&c.cmd(&["GET", "x"])).contains("only (P|S)SUBSCRIBE"));
        assert_eq!(c.cmd(&["PING"]), Frame::Array(vec![bulk("pong"), bulk("")]));
    }
    let mut resp3 = Conn::connect(members[0]);
    resp3.set_timeout(Duration::from_secs(10));
    assert!(matches!(resp3.cmd(&["HELLO", "3"]), Frame::Map(_)));
    assert_eq!(resp3.cmd(&["SUBSCRIBE", "news"]), Frame::Push(push(&["subscribe", "news"], 1)));
    assert_eq!(resp3.cmd(&["SET", "k", "v"]), simple("OK"), "RESP3 clients may run commands while subscribed");
    // Published through the second proxy: every subscriber gets it once (and the pattern
    // subscription once more, as a pmessage).
    let mut publisher = Conn::connect(members[1]);
    assert_eq!(
        publisher.cmd(&["PUBLISH", "news", "hello"]),
        Frame::Integer(5),
        "3 subscribers + 2 pattern subscribers"
    );
    for c in subscribers.iter_mut() {
        assert_eq!(c.read(), message("message", "news", "hello"));
        assert_eq!(c.read(), Frame::Array(vec![bulk("pmessage"), bulk("ne*"), bulk("news"), bulk("hello")]));
    }
    assert_eq!(resp3.read(), Frame::Push(vec![bulk("message"), bulk("news"), bulk("hello")]));
    // PUBSUB answers for the proxy's own nodes, as a Redis Cluster node does for itself.
    let mut plain = Conn::connect(members[0]);
    assert_eq!(
        plain.cmd(&["PUBSUB", "NUMSUB", "news", "none"]),
        Frame::Array(vec![bulk("news"), Frame::Integer(2), bulk("none"), Frame::Integer(0)])
    );
    assert_eq!(plain.cmd(&["PUBSUB", "NUMPAT"]), Frame::Integer(1));
    assert_eq!(plain.cmd(&["PUBSUB", "CHANNELS", "a*"]), Frame::Array(vec![bulk("alerts")]));
    // Unsubscribing from everything leaves subscribed mode.
    let c = &mut subscribers[1];
    assert_eq!(c.cmd(&["PUNSUBSCRIBE"]), Frame::Array(push(&["punsubscribe", "ne*"], 2)));
    c.send(&["UNSUBSCRIBE"]);
    let mut gone = vec![c.read(), c.read()];
    gone.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(
        gone,
        [Frame::Array(push(&["unsubscribe", "alerts"], 1)), Frame::Array(push(&["unsubscribe", "news"], 0))]
    );
    assert_eq!(c.cmd(&["GET", "x"]), Frame::Null);
    assert_eq!(publisher.cmd(&["PUBLISH", "alerts", "a1"]), Frame::Integer(1));
    assert_eq!(subscribers[0].read(), message("message", "alerts", "a1"));

    // A shard channel: subscribed where its slot is, published by slot.
    let owner = owner_port(&s, &channel).unwrap();
    let mut sharded = Conn::connect(owner);
    sharded.set_timeout(Duration::from_secs(120));
    assert_eq!(sharded.cmd(&["SSUBSCRIBE", &channel]), Frame::Array(push(&["ssubscribe", &channel], 1)));
    let other = members.iter().copied().find(|p| *p != owner).unwrap();
    assert!(error_text(&Conn::connect(other).cmd(&["SSUBSCRIBE", &channel])).starts_with("MOVED"));
    let client = ClusterClient { entry: members.clone(), password: None };
    assert_eq!(client.cmd(&["SPUBLISH", &channel, "s1"], Duration::from_secs(10)), Ok(Frame::Integer(1)));
    assert_eq!(sharded.read(), message("smessage", &channel, "s1"));

    // The expand moves the slot: the subscriber is told, and subscribes again at the new owner.
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/auto/c/8", None).status, 200);
    assert_eq!(sharded.read(), Frame::Array(push(&["sunsubscribe", &channel], 0)));
    let done = eventually(Duration::from_secs(60), || {
        let info = s.brokers.call("GET", "/clusters/info/c", None).json();
        info["is_migrating"] == false && info["node_number_with_slots"] == 8
    });
    assert!(done, "the expand did not finish:\n{}", s.logs());
    let moved = sharded.cmd(&["SSUBSCRIBE", &channel]);
    assert!(error_text(&moved).starts_with("MOVED"), "{moved:?}");
    let new_owner =
        error_text(&moved).split(' ').nth(2).and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok()).unwrap();
    let mut resubscribed = Conn::connect(new_owner);
    resubscribed.set_timeout(Duration::from_secs(10));
    assert_eq!(resubscribed.cmd(&["SSUBSCRIBE", &channel]), Frame::Array(push(&["ssubscribe", &channel], 1)));
    let client = ClusterClient { entry: s.hosts.iter().map(|h| h.proxy.port).collect(), password: None };
    assert_eq!(client.cmd(&["SPUBLISH", &channel, "s2"], Duration::from_secs(20)), Ok(Frame::Integer(1)));
    assert_eq!(resubscribed.read(), message("smessage", &channel, "s2"));

    // Classic subscribers are not affected by the migration; publishing through a proxy that
    // joined with the expand reaches them too, once each.
    let joined = s.hosts.iter().map(|h| h.proxy.port).find(|p| !members.contains(p)).unwrap();
    assert_eq!(Conn::connect(joined).cmd(&["PUBLISH", "news", "after"]), Frame::Integer(3));
    assert_eq!(subscribers[0].read(), message("message", "news", "after"));
    assert_eq!(subscribers[0].read(), Frame::Array(vec![bulk("pmessage"), bulk("ne*"), bulk("news"), bulk("after")]));
    assert_eq!(resp3.read(), Frame::Push(vec![bulk("message"), bulk("news"), bulk("after")]));
    subscribers[0].set_timeout(Duration::from_millis(300));
    assert!(subscribers[0].try_read().is_err(), "a message was delivered twice");
}

/// `calls` of one command in a Redis node's `INFO commandstats` (0 if it never ran).
fn command_calls(addr: &str, command: &str) -> u64 {
    let text = match Conn::connect(port_of_addr(addr)).cmd(&["INFO", "commandstats"]) {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO commandstats of {addr}: {other:?}"),
    };
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Replica reads: every range in `CLUSTER SLOTS` lists the proxy holding its master's replica;
/// redis-py reading from replicas (READONLY) gets every key, and the replica Redis nodes, not
/// the masters, served the reads (their `INFO commandstats`). Without READONLY a replica's
/// proxy still answers MOVED.
#[test]
fn readonly_reads_are_served_by_replicas() {
    let s = four_proxy_cluster();
    let cluster = s.cluster("c");
    let (masters, replicas) = (node_addresses(&cluster, "master"), node_addresses(&cluster, "replica"));
    assert_eq!((masters.len(), replicas.len()), (4, 4));
    let listed = eventually(Duration::from_secs(10), || {
        let mut c = s.hosts[0].proxy.conn();
        c.cmd(&["READONLY"]);
        match c.cmd(&["CLUSTER", "SLOTS"]) {
            Frame::Array(ranges) => {
                let with_replica = ranges.iter().filter(|r| matches!(r, Frame::Array(parts) if parts.len() == 4));
                with_replica.count() + 4 == ranges.len()
            }
            _ => false,
        }
    });
    assert!(listed, "CLUSTER SLOTS should list one replica per range:\n{}", s.logs());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/replica_reads.py");
    for proto in ["2", "3"] {
        let out = Command::new("python3")
            .args([script, &s.hosts[0].proxy.addr(), proto, "300"])
            .output()
            .expect("python3 must be installed");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stdout}\n{stderr}\n{}", s.logs());
        assert!(stdout.contains("replica reads OK"), "{stdout}");
    }
    let on_replicas: u64 = replicas.iter().map(|r| command_calls(r, "get")).sum();
    let on_masters: Vec<u64> = masters.iter().map(|m| command_calls(m, "get")).collect();
    assert!(on_replicas >= 600, "the replicas served {on_replicas} GETs");
    // (the two checks of a write read through the primary-only client)
    assert!(on_masters.iter().sum::<u64>() <= 2, "the masters served reads: {on_masters:?}");

    // By hand: READONLY on a replica's proxy serves the read there; without it, MOVED.
    let key = "replica:2:7";
    let owner = owner_port(&s, key).unwrap();
    let reader = s.hosts.iter().map(|h| h.proxy.port).find(|p| {
        *p != owner && {
            let mut c = Conn::connect(*p);
            c.cmd(&["READONLY"]);
            c.cmd(&["GET", key]) == bulk(key)
        }
    });
    let reader = reader.expect("some other proxy serves the key's replica reads");
    let mut c = Conn::connect(reader);
    assert!(error_text(&c.cmd(&["GET", key])).starts_with("MOVED"));
    assert_eq!(c.cmd(&["READONLY"]), simple("OK"));
    assert_eq!(c.cmd(&["GET", key]), bulk(key));
    assert!(error_text(&c.cmd(&["SET", key, "x"])).starts_with("MOVED"), "writes go to the master");
    assert_eq!(c.cmd(&["READWRITE"]), simple("OK"));
    assert!(error_text(&c.cmd(&["GET", key])).starts_with("MOVED"));
}
