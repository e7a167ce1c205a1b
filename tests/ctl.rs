//! `moonraft ctl` end to end against a live 3-member group: every call goes over gRPC to a
//! follower (so the public `BrokerApi` forwarding is exercised), tables and `--json` are
//! checked, and errors print the `/api/v3` code with a hint.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// A follower's gRPC address (so every call is forwarded to the leader).
fn follower(group: &BrokerGroup) -> String {
    let leader = group.wait_leader(Duration::from_secs(20)).expect("leader");
    group.members.iter().find(|m| m.id != leader).expect("a follower").grpc.clone()
}

#[test]
fn ctl_drives_a_live_group_over_grpc() {
    let group = BrokerGroup::start(3);
    let ctl = Ctl { brokers: follower(&group) };

    // raft status: a table with one leader and three members; JSON agrees.
    let table = ctl.ok(&["raft", "status"]);
    assert_eq!(table.matches("leader").count(), 1, "{table}");
    assert_eq!(table.lines().count(), 1 + 1 + 3, "{table}");
    let status = ctl.json(&["raft", "status"]);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));

    // Register four proxies on four hosts, through the follower.
    for i in 1..=4 {
        let addr = format!("p{i}:600{i}");
        let host = format!("host{i}");
        let out = ctl.ok(&["proxy", "register", &addr, &format!("r{i}:7001"), &format!("r{i}:7002"), "--host", &host]);
        assert!(out.contains(&addr), "{out}");
    }
    let proxies = ctl.json(&["proxies"]);
    assert_eq!(proxies.as_array().map(Vec::len), Some(4));
    assert!(proxies.as_array().unwrap().iter().all(|p| p["state"] == "free"), "{proxies}");
    let table = ctl.ok(&["proxies"]);
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert!(table.contains("p3:6003") && table.contains("host3") && table.contains("r3:7001,r3:7002"), "{table}");

    // A watcher on another member sees the create as it commits.
    let watcher_addr = group.members[0].grpc.clone();
    let watcher = std::thread::spawn(move || {
        Command::new(BIN)
            .args(["ctl", "--broker", &watcher_addr, "--json", "watch", "--count", "2"])
            .output()
            .expect("watch")
    });
    // The member counts the open stream (`moonraft_broker_watch_subscribers`) once it is up.
    let member = group.members[0].http.clone();
    let subscribed = eventually(Duration::from_secs(10), || {
        http(&member, "GET", "/metrics", None)
            .is_ok_and(|r| String::from_utf8_lossy(&r.body).lines().any(|l| l == "moonraft_broker_watch_subscribers 1"))
    });
    assert!(subscribed, "the watch stream did not open");

    // Create a cluster and look at it.
    ctl.ok(&["cluster", "create", "shop", "4"]);
    let clusters = ctl.json(&["clusters"]);
    assert_eq!(clusters[0]["name"], "shop");
    assert_eq!(clusters[0]["nodes"], 4);
    assert_eq!(clusters[0]["migrating"], false);
    let show = ctl.ok(&["cluster", "show", "shop"]);
    assert!(show.contains("0-8191") && show.contains("8192-16383"), "{show}");
    assert_eq!(show.matches("master").count(), 2, "{show}");
    assert_eq!(show.matches("replica").count(), 2, "{show}");
    let shown = ctl.json(&["cluster", "show", "shop"]);
    assert_eq!(shown["nodes"].as_array().map(Vec::len), Some(4));

    let watched = watcher.join().expect("watcher");
    assert!(watched.status.success(), "{}", String::from_utf8_lossy(&watched.stderr));
    let events: Vec<Value> =
        String::from_utf8_lossy(&watched.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["resync"], true);
    assert_eq!(events[1]["clusters"], serde_json::json!(["shop"]));
    assert_eq!(events[1]["proxies"].as_array().map(Vec::len), Some(2), "{events:?}");

    // Errors: the /api/v3 code, a hint, exit status 1.
    let (code, err) = ctl.fails(&["cluster", "create", "shop", "4"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: ALREADY_EXISTED") && err.contains("hint:"), "{err}");
    let (code, err) = ctl.fails(&["cluster", "show", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("CLUSTER_NOT_FOUND"), "{err}");
    let (code, err) = ctl.fails(&["cluster", "create", "other", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("INVALID_NODE_NUMBER") && err.contains("multiples of 4"), "{err}");
    let (code, err) = ctl.fails(&["proxy", "remove", "p1:6001"]);
    assert!(code == 1 && (err.contains("IN_USE") || err.contains("PROXY_NOT_FOUND")), "{err}");
    let (code, err) = ctl.fails(&["cluster", "create"]);
    assert_eq!(code, 2, "{err}");
    let nobody = Ctl { brokers: format!("127.0.0.1:{}", free_port()) };
    let (code, err) = nobody.fails(&["clusters"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach any broker") && err.contains("hint"), "{err}");

    // Dump: byte-identical to GET /metadata; restore of the same dump is accepted.
    let dir = TempDir::new("ctl");
    let file = dir.0.join("dump.json");
    ctl.ok(&["metadata", "dump", file.to_str().unwrap()]);
    let dumped = std::fs::read(&file).unwrap();
    let http_dump = http(&group.members[2].http, "GET", "/api/v3/metadata", None).unwrap();
    assert_eq!(http_dump.status, 200);
    assert_eq!(dumped, http_dump.body);
    ctl.ok(&["metadata", "restore", file.to_str().unwrap()]);

    // Delete and scale calls go through too.
    ctl.ok(&["cluster", "delete", "shop"]);
    assert_eq!(ctl.json(&["clusters"]), serde_json::json!([]));
    ctl.ok(&["proxy", "remove", "p4:6004"]);
    assert_eq!(ctl.json(&["proxies"]).as_array().map(Vec::len), Some(3));
    let epoch: u64 = ctl.ok(&["epoch"]).trim().parse().expect("epoch");
    assert!(epoch > 0);
}
