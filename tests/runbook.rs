//! The procedures of `docs/operations.md`, run as written (with this machine's addresses)
//! against real brokers on real ports, a real proxy and real Redis: adding and removing a
//! broker, backing up and restoring the metadata into another group, and rebuilding a group
//! that lost its majority from a survivor's copy.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// The ids of the voters `raft status` lists.
fn voters(ctl: &Ctl) -> Vec<u64> {
    let status = ctl.json(&["raft", "status"]);
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["voter"] == true).filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn a_broker_is_added_and_another_removed_as_the_runbook_says() {
    let mut group = BrokerGroup::start(3);
    let leader = group.wait_leader(Duration::from_secs(20)).expect("a leader");
    let ctl = Ctl { brokers: group.grpc_addresses() };
    // "Start the new member … without bootstrap", then add it as a learner and a voter.
    let dir = TempDir::new("broker4");
    let mut fourth = BrokerProc::new(4, (free_port(), free_port()), &dir.0, &[]);
    fourth.spawn();
    ctl.ok(&["raft", "add-learner", "4", &fourth.grpc, &fourth.http]);
    ctl.ok(&["raft", "membership", "1", "2", "3", "4"]);
    assert_eq!(voters(&ctl), vec![1, 2, 3, 4]);
    // The new member has the group's data: a write through it is applied everywhere.
    let body = r#"{"proxy_address": "p1:6001", "nodes": ["r1:7001", "r1:7002"]}"#;
    let mut registered = false;
    for _ in 0..50 {
        if fourth.http("POST", "/api/v3/proxies/meta", Some(body)).is_ok_and(|r| r.status == 200) {
            registered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(registered, "a write through the new member failed:\n{}", group.logs());
    // "Remove or replace a broker": a follower leaves (the runbook's `membership 1 2 4 --remove`).
    let leaving = [1u64, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let staying: Vec<String> = [1u64, 2, 3, 4].iter().filter(|id| **id != leaving).map(u64::to_string).collect();
    let mut args = vec!["raft", "membership"];
    args.extend(staying.iter().map(String::as_str));
    args.push("--remove");
    ctl.ok(&args);
    // "Then stop it": a removed member keeps its last view of the group, so ask the others.
    group.members.iter_mut().find(|m| m.id == leaving).expect("the leaving member").proc.kill();
    let remaining: Vec<String> = group.members.iter().filter(|m| m.id != leaving).map(|m| m.grpc.clone()).collect();
    let ctl = Ctl { brokers: format!("{},{}", remaining.join(","), fourth.grpc) };
    let expected: Vec<u64> = [1u64, 2, 3, 4].into_iter().filter(|id| *id != leaving).collect();
    assert_eq!(voters(&ctl), expected);
    let status = ctl.json(&["raft", "status"]);
    assert!(
        status["members"].as_array().is_some_and(|m| m.iter().all(|m| m["id"].as_u64() != Some(leaving))),
        "member {leaving} is still listed: {status}"
    );
    // The group still commits with the three voters left.
    let body = r#"{"proxy_address": "p2:6002", "nodes": ["r2:7001", "r2:7002"]}"#;
    assert_eq!(group.call("POST", "/proxies/meta", Some(body)).status, 200);
}

/// Registers four proxies on four hosts (the first one `real`, a live proxy) and creates a
/// cluster of four nodes.
fn populate(ctl: &Ctl, real: &SingleProxy) {
    let proxy = format!("127.0.0.1:{}", real.proxy.port);
    ctl.ok(&["proxy", "register", &proxy, &real.a.addr(), &real.b.addr(), "--host", "host1"]);
    for i in 2..=4 {
        ctl.ok(&[
            "proxy",
            "register",
            &format!("p{i}:600{i}"),
            &format!("r{i}:7001"),
            &format!("r{i}:7002"),
            "--host",
            &format!("host{i}"),
        ]);
    }
    ctl.ok(&["cluster", "create", "shop", "4"]);
}

/// The cluster as the group stores it, without the epoch (which a restore may move).
fn cluster_shape(ctl: &Ctl) -> Value {
    let mut c = ctl.json(&["cluster", "show", "shop"]);
    if let Some(o) = c.as_object_mut() {
        o.remove("epoch");
    }
    c
}

#[test]
fn a_backup_is_restored_into_another_group_and_the_epoch_passes_the_proxies() {
    let real = SingleProxy::start(&[]);
    let old = BrokerGroup::start(3);
    let ctl = Ctl { brokers: old.grpc_addresses() };
    populate(&ctl, &real);
    let shape = cluster_shape(&ctl);
    let backup = TempDir::new("backup");
    let file = backup.0.join("moonraft-backup.json");
    ctl.ok(&["metadata", "dump", file.to_str().expect("utf8")]);

    // The live proxy has since seen far newer metadata than the backup holds.
    let mut c = real.proxy.conn();
    let newer = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "900", "FORCE", "test", &real.a.addr(), "1", "0-16383"]);
    assert_eq!(newer, simple("OK"));

    let new = BrokerGroup::start(3);
    let ctl = Ctl { brokers: new.grpc_addresses() };
    ctl.ok(&["metadata", "restore", file.to_str().expect("utf8")]);
    let out = ctl.run(&["epoch", "recover"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The three made-up proxies cannot be asked, and the command says so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p2:6002"), "{stderr}");
    let epoch: u64 = ctl.ok(&["epoch"]).trim().parse().expect("an epoch");
    assert!(epoch > 900, "the epoch {epoch} did not pass the proxy's 900");
    assert_eq!(cluster_shape(&ctl), shape, "the restored cluster differs from the backup");
    // A stale backup is refused once the group has moved on.
    let (code, err) = ctl.fails(&["metadata", "restore", file.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(err.contains("EPOCH_SMALLER_THAN_CURRENT"), "{err}");
}

#[test]
fn a_group_that_lost_its_majority_is_rebuilt_from_a_survivors_copy() {
    let real = SingleProxy::start(&[]);
    let mut old = BrokerGroup::start(3);
    let ctl = Ctl { brokers: old.grpc_addresses() };
    populate(&ctl, &real);
    let shape = cluster_shape(&ctl);
    // Two of three members are lost.
    let survivor = old.members.len() - 1;
    for m in old.members.iter_mut().take(survivor) {
        m.proc.kill();
    }
    // The survivor restarts with --unsafe-local-reads true and its own copy is dumped.
    let s = &mut old.members[survivor];
    s.proc.kill();
    s.args.extend(["--unsafe-local-reads".to_owned(), "true".to_owned()]);
    s.spawn();
    let from_survivor = Ctl { brokers: s.grpc.clone() };
    let backup = TempDir::new("survivor");
    let file = backup.0.join("survivor.json");
    let mut dumped = false;
    for _ in 0..100 {
        if from_survivor.run(&["metadata", "dump", file.to_str().expect("utf8")]).status.success() {
            dumped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dumped, "no dump from the survivor:\n{}", old.logs());
    // A new group under a new group name, restored from that copy.
    let new = BrokerGroup::start_with(3, &["--group-name", "g2"]);
    let ctl = Ctl { brokers: new.grpc_addresses() };
    ctl.ok(&["metadata", "restore", file.to_str().expect("utf8")]);
    ctl.ok(&["epoch", "recover"]);
    assert_eq!(cluster_shape(&ctl), shape);
    let names: Value = ctl.json(&["clusters"]);
    assert_eq!(names.as_array().map(Vec::len), Some(1), "{names}");
}
