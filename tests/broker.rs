//! `/api/v3` conformance against real broker processes: one suite, run against a 1-member and a
//! 3-member group (the latter spreading requests over all members, so followers forward), plus
//! restart and leader-kill checks with RocksDB on disk.

mod common;

use common::*;
use serde_json::{json, Value};
use std::cell::Cell;
use std::time::Duration;

/// Sends requests to the members in turn, retrying `409 RETRY` (transient during elections).
struct Api {
    addrs: Vec<String>,
    next: Cell<usize>,
}

impl Api {
    fn new(group: &BrokerGroup) -> Api {
        Api {
            addrs: group.members.iter().filter(|m| m.proc.child.is_some()).map(|m| m.http.clone()).collect(),
            next: Cell::new(0),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        self.call_with(method, path, body, &[])
    }

    fn call_with(&self, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> HttpResponse {
        for _ in 0..100 {
            let i = self.next.get();
            self.next.set(i + 1);
            let addr = &self.addrs[i % self.addrs.len()];
            match http_with(addr, method, &format!("/api/v3{path}"), body, headers) {
                Ok(r) if r.status == 409 && r.body.starts_with(b"{\"error\":\"RETRY\"") => {}
                Ok(r) if r.status == 503 => {}
                Ok(r) => return r,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{method} {path}: no answer after retries");
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 200, "{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        r
    }

    fn err(&self, method: &str, path: &str, body: Option<&str>, status: u16, code: &str) {
        let r = self.call(method, path, body);
        assert_eq!((r.status, r.error_code()), (status, code.to_owned()), "{method} {path}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|x| format!("{x:02x}")).collect()
}

fn register(api: &Api, i: u32) -> HttpResponse {
    let body = json!({
        "proxy_address": format!("server_proxy{i}:600{i}"),
        "nodes": [format!("redis{}:6379", 2 * i - 1), format!("redis{}:6379", 2 * i)],
    });
    api.call("POST", "/proxies/meta", Some(&body.to_string()))
}

fn epoch(api: &Api) -> u64 {
    api.ok("GET", "/epoch", None).json().as_u64().expect("epoch is a number")
}

/// The conformance suite: every endpoint, success and documented errors.
fn conformance(api: &Api) {
    // The package version and, built from a git checkout, the commit it was built from.
    let version = String::from_utf8_lossy(&api.ok("GET", "/version", None).body).into_owned();
    let out = std::process::Command::new(BIN).arg("--version").output().expect("moonraft --version");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("moonraft {version}"));
    let commit = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok();
    match commit.filter(|c| c.status.success()) {
        Some(c) => assert!(
            version.starts_with(&format!(
                "{}+{}",
                env!("CARGO_PKG_VERSION"),
                String::from_utf8_lossy(&c.stdout).trim()
            )),
            "{version}"
        ),
        None => assert_eq!(version, env!("CARGO_PKG_VERSION")),
    }
    // register the walkthrough's six proxies
    for i in 1..=6 {
        assert_eq!(register(api, i).status, 200);
    }
    assert_eq!(epoch(api), 6);
    let again = register(api, 1);
    assert_eq!((again.status, again.error_code().as_str()), (409, "ALREADY_EXISTED"));
    api.err(
        "POST",
        "/proxies/meta",
        Some(r#"{"proxy_address":"nocolon","nodes":["a:1","a:2"]}"#),
        400,
        "INVALID_PROXY_ADDRESS",
    );
    api.err("POST", "/proxies/meta", Some(r#"{"proxy_address":"a:1","nodes":["a:1"]}"#), 400, "INVALID_REQUEST");
    api.err("POST", "/proxies/meta", Some("{not json"), 400, "INVALID_REQUEST");
    let addrs = api.ok("GET", "/proxies/addresses", None).json();
    assert_eq!(addrs["addresses"].as_array().unwrap().len(), 6);
    assert_eq!(addrs["addresses"][0], "server_proxy1:6001", "sorted");
    let page = api.ok("GET", "/proxies/addresses?offset=2&limit=2", None).json();
    assert_eq!(page["addresses"], json!(["server_proxy3:6003", "server_proxy4:6004"]));
    // create a cluster
    api.ok("POST", "/clusters/meta/mycluster", Some(r#"{"node_number": 4}"#));
    assert_eq!(epoch(api), 7);
    api.err("POST", "/clusters/meta/mycluster", Some(r#"{"node_number": 4}"#), 409, "ALREADY_EXISTED");
    api.err("POST", "/clusters/meta/bad!name", Some(r#"{"node_number": 4}"#), 400, "INVALID_CLUSTER_NAME");
    api.err("POST", "/clusters/meta/other", Some(r#"{"node_number": 6}"#), 400, "INVALID_NODE_NUMBER");
    api.err("POST", "/clusters/meta/other", Some(r#"{"node_number": 12}"#), 409, "NO_AVAILABLE_RESOURCE");
    api.err("POST", "/clusters/meta/other", Some(r#"{"nodes": 4}"#), 400, "INVALID_REQUEST");
    let names = api.ok("GET", "/clusters/names", None).json();
    assert_eq!(names, json!({"names": ["mycluster"]}));
    let cluster = api.ok("GET", "/clusters/meta/mycluster", None).json();
    let nodes = cluster["cluster"]["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 4);
    assert_eq!(cluster["cluster"]["epoch"], 7);
    assert_eq!(nodes[0]["slots"][0]["range_list"], json!([[0, 8191]]));
    assert_eq!(nodes[2]["slots"][0]["range_list"], json!([[8192, 16383]]));
    assert!(nodes[0]["address"].as_str().unwrap().starts_with("redis"));
    assert_eq!(api.ok("GET", "/clusters/meta/nosuch", None).json(), json!({"cluster": null}));
    assert_eq!(api.ok("GET", "/clusters/meta/bad!name", None).json(), json!({"cluster": null}));
    let info = api.ok("GET", "/clusters/info/mycluster", None).json();
    assert_eq!(
        info,
        json!({"name": "mycluster", "node_number": 4, "node_number_with_slots": 4, "is_migrating": false, "migrations": []})
    );
    api.err("GET", "/clusters/info/nosuch", None, 404, "CLUSTER_NOT_FOUND");
    let first_proxy = nodes[0]["proxy_address"].as_str().unwrap().to_owned();
    let p = api.ok("GET", &format!("/proxies/meta/{first_proxy}"), None).json();
    assert_eq!(p["proxy"]["cluster_name"], "mycluster");
    assert_eq!(p["proxy"]["peers"].as_array().unwrap().len(), 1);
    assert_eq!(api.ok("GET", "/proxies/meta/nosuch:1", None).json(), json!({"proxy": null}));
    // gzip only when asked
    let gz = api.call_with("GET", "/clusters/meta/mycluster", None, &[("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(api.ok("GET", "/clusters/meta/mycluster", None).header("content-encoding"), None);
    // scale out: PATCH + expand, one task exposed at a time, commit
    let added = api.ok("PATCH", "/clusters/nodes/mycluster", Some(r#"{"node_number": 4}"#)).json();
    assert_eq!(added.as_array().unwrap().len(), 4);
    assert!(added.as_array().unwrap().iter().all(|n| n["slots"] == json!([])));
    api.err("PUT", "/clusters/nodes/mycluster", Some(r#"{"cluster_node_number": 8}"#), 409, "NODE_NUM_ALREADY_ENOUGH");
    api.err("POST", "/clusters/migrations/shrink/mycluster/4", None, 409, "FREE_NODE_FOUND");
    api.ok("POST", "/clusters/migrations/expand/mycluster", None);
    api.err("POST", "/clusters/migrations/expand/mycluster", None, 409, "MIGRATION_RUNNING");
    api.err("PATCH", "/clusters/config/mycluster", Some(r#"{"migration_scan_count":"8"}"#), 409, "MIGRATION_RUNNING");
    let c = api.ok("GET", "/clusters/meta/mycluster", None).json();
    let tags: Vec<Value> = c["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["slots"].as_array().unwrap().clone())
        .filter(|s| s["tag"] != "None")
        .collect();
    assert_eq!(tags.len(), 2, "one migrating and one importing range exposed: {tags:?}");
    let migrating = tags.iter().find(|t| t["tag"].get("Migrating").is_some()).unwrap().clone();
    // The running migration is in the cluster info; no proxy runs here, so its progress
    // says why it is unknown instead of inventing numbers.
    let info = api.ok("GET", "/clusters/info/mycluster", None).json();
    assert_eq!(info["migrations"].as_array().map(Vec::len), Some(1), "{info}");
    let m = &info["migrations"][0];
    assert_eq!(m["range_list"], migrating["range_list"]);
    assert_eq!(m["src_proxy_address"], migrating["tag"]["Migrating"]["src_proxy_address"]);
    assert!(m["error"].as_str().is_some_and(|e| e.contains("no progress from the source proxy")), "{m}");
    let task = json!({"cluster_name": "mycluster", "slot_range": migrating});
    api.ok("PUT", "/clusters/migrations", Some(&task.to_string()));
    api.err("PUT", "/clusters/migrations", Some(&task.to_string()), 404, "MIGRATION_TASK_NOT_FOUND");
    let none_tag = json!({"cluster_name": "mycluster", "slot_range": {"range_list": [[0, 1]], "tag": "None"}});
    api.err("PUT", "/clusters/migrations", Some(&none_tag.to_string()), 400, "INVALID_MIGRATION_TASK");
    // the second task is exposed now; commit it too
    let c = api.ok("GET", "/clusters/meta/mycluster", None).json();
    let next = c["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["slots"].as_array().unwrap().clone())
        .find(|s| s["tag"].get("Importing").is_some())
        .expect("second task exposed");
    api.ok("PUT", "/clusters/migrations", Some(&json!({"cluster_name": "mycluster", "slot_range": next}).to_string()));
    let info = api.ok("GET", "/clusters/info/mycluster", None).json();
    assert_eq!(info["is_migrating"], false);
    assert_eq!(info["node_number_with_slots"], 8);
    // config
    api.ok("PATCH", "/clusters/config/mycluster", Some(r#"{"compression_strategy":"set_get_only"}"#));
    // Conditional writes: the ETag is the cluster's epoch; If-Match applies only at that epoch.
    let got = api.ok("GET", "/clusters/meta/mycluster", None);
    let cluster_epoch = got.json()["cluster"]["epoch"].as_u64().unwrap();
    assert_eq!(got.header("etag"), Some(format!("\"{cluster_epoch}\"").as_str()));
    let body = Some(r#"{"compression_strategy":"allow_all"}"#);
    let stale = format!("\"{}\"", cluster_epoch - 1);
    let r = api.call_with("PATCH", "/clusters/config/mycluster", body, &[("If-Match", &stale)]);
    assert_eq!((r.status, r.json()), (412, json!({"error": "EPOCH_MISMATCH", "epoch": cluster_epoch})));
    let r =
        api.call_with("PATCH", "/clusters/config/mycluster", body, &[("If-Match", &format!("\"{cluster_epoch}\""))]);
    assert_eq!(r.status, 200);
    let r =
        api.call_with("PATCH", "/clusters/config/mycluster", body, &[("If-Match", &format!("\"{cluster_epoch}\""))]);
    assert_eq!((r.status, r.error_code()), (412, "EPOCH_MISMATCH".to_owned()), "the epoch moved on");
    let r = api.call_with("PATCH", "/clusters/config/mycluster", body, &[("If-Match", "soon")]);
    assert_eq!((r.status, r.error_code()), (400, "INVALID_REQUEST".to_owned()));
    let r = api.call_with("PATCH", "/clusters/config/nosuch", body, &[("If-Match", "\"1\"")]);
    assert_eq!((r.status, r.error_code()), (404, "CLUSTER_NOT_FOUND".to_owned()));
    let bad = api.call("PATCH", "/clusters/config/mycluster", Some(r#"{"migration_scan_count":"0"}"#));
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"error": "INVALID_CONFIG", "key": "migration_scan_count", "value": "0", "message": "INVALID_VALUE"})
    );
    // failures and failover
    let victim = first_proxy.clone();
    api.ok("POST", &format!("/failures/{victim}/coordinator1"), None);
    assert_eq!(api.ok("GET", "/failures", None).json(), json!({"addresses": [victim]}));
    let before = api.ok("GET", "/metadata", None).body;
    api.ok("GET", "/failures", None);
    assert_eq!(api.ok("GET", "/metadata", None).body, before, "GET /failures does not mutate");
    let replaced = api.ok("POST", &format!("/proxies/failover/{victim}"), None).json();
    let replacement = replaced["proxy"]["address"].as_str().expect("a replacement proxy").to_owned();
    assert_ne!(replacement, victim);
    assert_eq!(api.ok("POST", &format!("/proxies/failover/{victim}"), None).json(), json!({"proxy": null}));
    assert_eq!(api.ok("GET", "/proxies/failed/addresses", None).json(), json!({"addresses": [victim]}));
    api.err("POST", "/proxies/failover/nosuch:1", None, 404, "PROXY_NOT_FOUND");
    // A failed proxy that answers again is recovered (what coordinators do by themselves):
    // it leaves the failed set and is free; a second call finds nothing to do.
    assert_eq!(api.ok("POST", &format!("/proxies/recover/{victim}"), None).json(), json!({"recovered": true}));
    assert_eq!(api.ok("GET", "/proxies/failed/addresses", None).json(), json!({"addresses": []}));
    assert_eq!(api.ok("POST", &format!("/proxies/recover/{victim}"), None).json(), json!({"recovered": false}));
    api.err("POST", "/proxies/recover/nosuch:1", None, 404, "PROXY_NOT_FOUND");
    // Reports withdrawn by their reporter; heartbeats make the default quorum a majority.
    api.ok("POST", &format!("/failures/{replacement}/coordinator1"), None);
    assert_eq!(
        api.ok("DELETE", &format!("/failures/{replacement}/coordinator1"), None).json(),
        json!({"withdrawn": true})
    );
    assert_eq!(
        api.ok("DELETE", &format!("/failures/{replacement}/coordinator1"), None).json(),
        json!({"withdrawn": false})
    );
    assert_eq!(api.ok("GET", "/coordinators", None).json(), json!({"coordinators": [], "failure_quorum": 1}));
    api.ok("PUT", "/coordinators/coordinator1", None);
    api.ok("PUT", "/coordinators/coordinator2", None);
    let seen = api.ok("GET", "/coordinators", None).json();
    assert_eq!(seen["failure_quorum"], 2, "{seen}");
    assert_eq!(seen["coordinators"][1]["reporter_id"], "coordinator2");
    assert_eq!(seen["coordinators"][1]["alive"], true);
    api.ok("POST", &format!("/failures/{replacement}/coordinator1"), None);
    assert_eq!(api.ok("GET", "/failures", None).json(), json!({"addresses": []}), "1 of 2 live coordinators");
    api.ok("POST", &format!("/failures/{replacement}/coordinator2"), None);
    assert_eq!(api.ok("GET", "/failures", None).json(), json!({"addresses": [replacement]}));
    api.ok("DELETE", &format!("/failures/{replacement}/coordinator1"), None);
    api.ok("DELETE", &format!("/failures/{replacement}/coordinator2"), None);
    api.ok("POST", &format!("/proxies/failover/{victim}"), None);
    api.err("DELETE", &format!("/proxies/meta/{replacement}"), None, 409, "IN_USE");
    api.ok("DELETE", &format!("/proxies/meta/{victim}"), None);
    api.err("DELETE", &format!("/proxies/meta/{victim}"), None, 404, "PROXY_NOT_FOUND");
    api.ok("PUT", "/clusters/balance/mycluster", None);
    api.err("PUT", "/clusters/balance/nosuch", None, 404, "CLUSTER_NOT_FOUND");
    let check = api.ok("POST", "/resources/failures/check", None).json();
    assert!(check["hosts_cannot_fail"].is_array());
    // epochs
    let e = epoch(api);
    api.err("PUT", &format!("/epoch/{e}"), None, 409, "EPOCH_SMALLER_THAN_CURRENT");
    api.ok("PUT", &format!("/epoch/{}", e + 10), None);
    assert_eq!(epoch(api), e + 10);
    // metadata dump and restore
    let dump = api.ok("GET", "/metadata", None).json();
    assert_eq!(dump["version"], "mem-broker-0.2");
    assert_eq!(dump["global_epoch"], e + 10);
    api.ok("PUT", "/metadata", Some(&dump.to_string()));
    let mut old = dump.clone();
    old["global_epoch"] = json!(1);
    api.err("PUT", "/metadata", Some(&old.to_string()), 409, "EPOCH_SMALLER_THAN_CURRENT");
    let mut wrong = dump.clone();
    wrong["version"] = json!("mem-broker-0.1");
    api.err("PUT", "/metadata", Some(&wrong.to_string()), 409, "INVALID_META_VERSION");
    // Documents that break the store's invariants are refused as a whole (400, naming the
    // problem), and every member keeps serving the state it had.
    let before = api.ok("GET", "/metadata", None).body;
    let entry = |src_part: u64| {
        json!({"range_list": [[0, 10]], "is_migrating": true,
               "meta": {"epoch": 1, "src_chunk_index": 0, "src_chunk_part": src_part, "dst_chunk_index": 0, "dst_chunk_part": 2}})
    };
    let mut part2 = dump.clone();
    part2["clusters"]["mycluster"]["chunks"][0]["migrating_slots"][0] = json!([entry(0)]);
    let mut dangling = dump.clone();
    dangling["clusters"]["mycluster"]["chunks"][0]["proxy_addresses"][0] = json!("ghost:1");
    let mut overlap = dump.clone();
    overlap["clusters"]["mycluster"]["chunks"][0]["stable_slots"][1]["range_list"][0] = json!([0, 16383]);
    let mut out_of_range = dump.clone();
    out_of_range["clusters"]["mycluster"]["chunks"][0]["stable_slots"][0]["range_list"] = json!([[0, 20000]]);
    for (name, doc) in
        [("part 2", part2), ("dangling proxy", dangling), ("overlap", overlap), ("slot 20000", out_of_range)]
    {
        let r = api.call("PUT", "/metadata", Some(&doc.to_string()));
        assert_eq!((r.status, r.error_code()), (400, "INVALID_METADATA".to_owned()), "{name}");
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: names the problem");
    }
    for _ in 0..api.addrs.len() {
        assert_eq!(api.ok("GET", "/metadata", None).body, before, "a refused restore changed nothing");
        api.ok("GET", "/clusters/meta/mycluster", None);
    }
    // shrink back and remove the drained chunk
    api.ok("POST", "/clusters/migrations/shrink/mycluster/4", None);
    loop {
        let c = api.ok("GET", "/clusters/meta/mycluster", None).json();
        let Some(t) = c["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["slots"].as_array().unwrap().clone())
            .find(|s| s["tag"].get("Migrating").is_some())
        else {
            break;
        };
        api.ok("PUT", "/clusters/migrations", Some(&json!({"cluster_name": "mycluster", "slot_range": t}).to_string()));
    }
    api.ok("DELETE", "/clusters/free_nodes/mycluster", None);
    api.err("DELETE", "/clusters/free_nodes/mycluster", None, 404, "FREE_NODE_NOT_FOUND");
    assert_eq!(api.ok("GET", "/clusters/info/mycluster", None).json()["node_number"], 4);
    // delete the cluster
    api.ok("DELETE", "/clusters/meta/mycluster", None);
    api.err("DELETE", "/clusters/meta/mycluster", None, 404, "CLUSTER_NOT_FOUND");
    api.err("DELETE", "/clusters/meta/bad!name", None, 400, "INVALID_CLUSTER_NAME");
    // compatibility endpoints
    api.err("PUT", "/config", Some(r#"{"replica_addresses": []}"#), 409, "USE_RAFT_MEMBERSHIP_API");
    let cfg = api.ok("GET", "/config", None).json();
    assert_eq!(cfg["replica_addresses"].as_array().unwrap().len(), api.addrs.len() - 1);
    // unknown routes and non-numeric path segments: 404
    assert_eq!(api.call("GET", "/nope", None).status, 404);
    assert_eq!(api.call("PUT", "/epoch/abc", None).status, 404);
    assert_eq!(api.call("POST", "/clusters/migrations/shrink/mycluster/x", None).status, 404);
}

#[test]
fn conformance_one_member() {
    let group = BrokerGroup::start(1);
    conformance(&Api::new(&group));
}

#[test]
fn conformance_three_members_spread_over_all() {
    let group = BrokerGroup::start(3);
    let api = Api::new(&group);
    conformance(&api);
    // every member serves the same store (followers forward reads to the leader, and their
    // own replicas converge)
    let dumps: Vec<Vec<u8>> =
        group.members.iter().map(|m| http(&m.http, "GET", "/api/v3/metadata", None).unwrap().body).collect();
    assert!(dumps.windows(2).all(|w| w[0] == w[1]));
    let status = group.members[0].status().unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
}

#[test]
fn state_survives_restart_of_every_member() {
    let mut group = BrokerGroup::start(3);
    let api = Api::new(&group);
    for i in 1..=4 {
        assert_eq!(register(&api, i).status, 200);
    }
    api.ok("POST", "/clusters/meta/c1", Some(r#"{"node_number": 4}"#));
    let before = api.ok("GET", "/metadata", None).body;
    for m in &mut group.members {
        m.proc.kill();
    }
    for m in &mut group.members {
        m.spawn();
    }
    assert!(group.wait_leader(Duration::from_secs(20)).is_some(), "{}", group.logs());
    let api = Api::new(&group);
    assert_eq!(api.ok("GET", "/metadata", None).body, before, "state identical after a full restart");
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut group = BrokerGroup::start(3);
    let leader = group.wait_leader(Duration::from_secs(10)).unwrap();
    let api = Api::new(&group);
    let mut acknowledged = Vec::new();
    for i in 1..=20u32 {
        if i == 10 {
            let m = group.members.iter_mut().find(|m| m.id == leader).unwrap();
            m.proc.kill();
        }
        let body =
            json!({"proxy_address": format!("p{i}:6000"), "nodes": [format!("p{i}:7000"), format!("p{i}:7001")]});
        let api = Api {
            addrs: group.members.iter().filter(|m| m.proc.child.is_some()).map(|m| m.http.clone()).collect(),
            next: api.next.clone(),
        };
        let r = api.call("POST", "/proxies/meta", Some(&body.to_string()));
        if r.status == 200 || r.error_code() == "ALREADY_EXISTED" {
            acknowledged.push(format!("p{i}:6000"));
        }
    }
    assert_eq!(acknowledged.len(), 20);
    let survivors = Api {
        addrs: group.members.iter().filter(|m| m.proc.child.is_some()).map(|m| m.http.clone()).collect(),
        next: Default::default(),
    };
    let addrs = survivors.ok("GET", "/proxies/addresses", None).json();
    for a in &acknowledged {
        assert!(addrs["addresses"].as_array().unwrap().contains(&json!(a)), "{a} lost");
    }
    // the killed member comes back and catches up
    let m = group.members.iter_mut().find(|m| m.id == leader).unwrap();
    m.spawn();
    let back = m.http.clone();
    assert!(eventually(Duration::from_secs(20), || {
        http(&back, "GET", "/api/v3/raft/status", None)
            .ok()
            .map(|r| {
                r.json()["last_applied_index"] == survivors.ok("GET", "/raft/status", None).json()["last_applied_index"]
            })
            .unwrap_or(false)
    }));
}

#[test]
fn a_minority_refuses_writes_and_linearizable_reads() {
    let mut group = BrokerGroup::start_with(3, &["--proposal-timeout-ms", "1000", "--forward-timeout-ms", "1000"]);
    let api = Api::new(&group);
    assert_eq!(register(&api, 1).status, 200);
    // leave one member alone
    for m in group.members.iter_mut().skip(1) {
        m.proc.kill();
    }
    let alone = group.members[0].http.clone();
    // A lone former leader may still answer reads while its leader lease (800 ms) runs: wait,
    // bounded, until it refuses one; from then on every write and read must be refused.
    let refuses_reads = eventually(Duration::from_secs(10), || {
        http(&alone, "GET", "/api/v3/proxies/addresses", None).is_ok_and(|r| r.status == 409)
    });
    assert!(refuses_reads, "a lone member kept answering linearizable reads:\n{}", group.logs());
    let body = json!({"proxy_address": "q:6000", "nodes": ["q:7000", "q:7001"]}).to_string();
    for _ in 0..3 {
        let w = http(&alone, "POST", "/api/v3/proxies/meta", Some(&body)).unwrap();
        assert_eq!((w.status, w.error_code().as_str()), (409, "RETRY"), "write on a minority");
        let r = http(&alone, "GET", "/api/v3/proxies/addresses", None).unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (409, "RETRY"), "linearizable read on a minority");
    }
    // bring one back: a majority again, and the refused write was never applied
    group.members[1].spawn();
    assert!(group.wait_leader(Duration::from_secs(20)).is_some(), "{}", group.logs());
    let api = Api { addrs: vec![alone, group.members[1].http.clone()], next: Default::default() };
    let addrs = api.ok("GET", "/proxies/addresses", None).json();
    assert_eq!(addrs["addresses"], json!(["server_proxy1:6001"]));
}

#[test]
fn oversized_and_malformed_bodies() {
    let group = BrokerGroup::start_with(1, &["--max-body-bytes", "1024"]);
    let api = Api::new(&group);
    let big = format!(r#"{{"node_number": 4, "pad": "{}"}}"#, "x".repeat(4096));
    assert_eq!(api.call("POST", "/clusters/meta/c", Some(&big)).status, 413);
    api.err("POST", "/clusters/meta/c", Some(r#"{"node_number": "four"}"#), 400, "INVALID_REQUEST");
    api.err("POST", "/clusters/meta/c", Some(r#"{"node_number": -4}"#), 400, "INVALID_REQUEST");
    api.err("PUT", "/metadata", Some(r#"{"version": 3}"#), 400, "INVALID_REQUEST");
    // What the HTTP layer refuses by itself is JSON too, with a code.
    api.err("POST", "/clusters/meta/c", Some(&big), 413, "PAYLOAD_TOO_LARGE");
    api.err("GET", "/clusters/names?offset=-1", None, 400, "INVALID_REQUEST");
    api.err("GET", "/nothing/here", None, 404, "NOT_FOUND");
    api.err("PUT", "/epoch/twelve", None, 404, "NOT_FOUND");
    // Epochs stay where every JSON client reads them exactly, and can never wrap.
    api.err("PUT", "/epoch/9007199254740992", None, 400, "EPOCH_TOO_LARGE");
    api.err("PUT", "/epoch/18446744073709551615", None, 400, "EPOCH_TOO_LARGE");
    // nothing was applied
    assert_eq!(epoch(&api), 0);
    // The OpenAPI document lists every operation (the unit test in src/broker/openapi.rs checks
    // its shape; scripts/api-fuzz.sh fuzzes the API from it).
    let doc = api.call("GET", "/openapi.json", None).json();
    assert!(doc["paths"]["/clusters/meta/{name}"]["post"]["requestBody"].is_object());
    assert_eq!(doc["servers"][0]["url"], "/api/v3");
}

#[test]
fn a_learner_catches_up_and_becomes_a_voter() {
    let mut group = BrokerGroup::start(3);
    let api = Api::new(&group);
    for i in 1..=4 {
        assert_eq!(register(&api, i).status, 200);
    }
    api.ok("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#));
    // a fourth broker, started empty (no bootstrap)
    let (h, g) = (free_port(), free_port());
    let dir = TempDir::new("learner");
    let mut learner = BrokerProc::new(4, (h, g), &dir.0, &[]);
    learner.spawn();
    assert!(eventually(Duration::from_secs(10), || learner.status().is_some()));
    let uninit = http(&learner.http, "GET", "/api/v3/epoch", None).unwrap();
    assert_eq!((uninit.status, uninit.error_code().as_str()), (503, "RAFT_NOT_INITIALIZED"));
    let body = json!({"id": 4, "raft_address": learner.grpc, "http_address": learner.http}).to_string();
    api.ok("POST", "/raft/learners", Some(&body));
    // the learner's own replica reaches the same store: compare its state with the leader's
    let want = api.ok("GET", "/metadata", None).body;
    assert!(eventually(Duration::from_secs(20), || {
        learner
            .status()
            .map(|s| s["last_applied_index"] == api.ok("GET", "/raft/status", None).json()["last_applied_index"])
            .unwrap_or(false)
    }));
    // reads through the learner are forwarded; the dump is the same bytes
    assert_eq!(http(&learner.http, "GET", "/api/v3/metadata", None).unwrap().body, want);
    // and its own replica hashes to the same SHA-256 as the dump
    let own = learner.status().unwrap()["state_sha256"].as_str().unwrap().to_owned();
    assert_eq!(own, sha256_hex(&want));
    for m in &group.members {
        let same = || m.status().is_some_and(|s| s["state_sha256"] == own.as_str());
        assert!(eventually(Duration::from_secs(5), same), "member {} differs", m.id);
    }
    api.err("PUT", "/raft/membership", Some(r#"{"voters": [1, 2, 9]}"#), 400, "INVALID_MEMBERSHIP");
    api.err("PUT", "/raft/membership", Some(r#"{"voters": []}"#), 400, "INVALID_MEMBERSHIP");
    api.ok("PUT", "/raft/membership", Some(r#"{"voters": [1, 2, 3, 4]}"#));
    let status = learner.status().unwrap();
    assert!(status["members"].as_array().unwrap().iter().all(|m| m["voter"] == true), "{status}");
    group.members[2].proc.kill();
    assert_eq!(register(&Api { addrs: vec![learner.http.clone()], next: Default::default() }, 5).status, 200);
}

#[test]
fn epoch_recovery_jumps_past_every_proxy() {
    let group = BrokerGroup::start(1);
    let api = Api::new(&group);
    // a real proxy that has seen epoch 100 (e.g. the broker was restored from an old backup)
    let proxy = Proxy::start(&[]);
    let set = proxy.conn().cmd(&["UMCTL", "SETCLUSTER", "v2", "100", "NOFLAG", ""]);
    assert_eq!(set, simple("OK"));
    let body = json!({"proxy_address": proxy.addr(), "nodes": ["127.0.0.1:1", "127.0.0.1:2"]}).to_string();
    api.ok("POST", "/proxies/meta", Some(&body));
    let gone = json!({"proxy_address": "127.0.0.1:1", "nodes": ["127.0.0.1:3", "127.0.0.1:4"]}).to_string();
    api.ok("POST", "/proxies/meta", Some(&gone));
    let r = api.ok("PUT", "/epoch/recovery", None).json();
    assert_eq!(r, json!({"failed_addresses": ["127.0.0.1:1"]}));
    assert_eq!(epoch(&api), 102);
}

#[test]
fn auto_scales_out_after_proxies_sync_and_gives_up_when_they_do_not() {
    let group = BrokerGroup::start_with(1, &["--auto-sync-timeout-ms", "1500"]);
    let api = Api::new(&group);
    let proxies: Vec<Proxy> = (0..6).map(|_| Proxy::start(&[])).collect();
    for (i, p) in proxies.iter().enumerate() {
        let body = json!({
            "proxy_address": p.addr(),
            "nodes": [format!("127.0.0.{}:7000", i + 1), format!("127.0.0.{}:7001", i + 1)],
            "host": format!("host{i}"),
        });
        api.ok("POST", "/proxies/meta", Some(&body.to_string()));
    }
    api.ok("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#));
    api.ok("POST", "/clusters/migrations/auto/c/4", None); // same size: nothing to do
                                                           // no coordinator pushes metadata, so the proxies never reach the new epoch: bounded wait
    let r = api.call("POST", "/clusters/migrations/auto/c/8", None);
    assert_eq!((r.status, r.error_code().as_str()), (409, "PROXY_NOT_SYNC"));
    assert_eq!(api.ok("GET", "/clusters/info/c", None).json()["node_number"], 8);
    // a retry first removes the chunks the failed call added, then adds them again
    let addrs: Vec<String> = proxies.iter().map(Proxy::addr).collect();
    let target = api.addrs[0].clone();
    let caller = std::thread::spawn(move || {
        http(&target, "POST", "/api/v3/clusters/migrations/auto/c/8", None).expect("auto call")
    });
    // play the coordinator once the call has added the nodes: every proxy gets a newer epoch
    let added = eventually(Duration::from_secs(10), || {
        http(&api.addrs[0], "GET", "/api/v3/clusters/meta/c", None)
            .is_ok_and(|r| r.json()["cluster"]["nodes"].as_array().is_some_and(|n| n.len() == 8))
    });
    assert!(added, "the auto call did not add the nodes");
    for a in &addrs {
        let port: u16 = a.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(Conn::connect(port).cmd(&["UMCTL", "SETCLUSTER", "v2", "1000", "NOFLAG", ""]), simple("OK"));
    }
    let r = caller.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let info = api.ok("GET", "/clusters/info/c", None).json();
    assert_eq!(info["node_number"], 8, "chunks were not added twice");
    assert_eq!(info["is_migrating"], true, "expand started");
    api.err("POST", "/clusters/migrations/auto/c/8", None, 409, "MIGRATION_RUNNING");
    assert_eq!(api.call("POST", "/clusters/migrations/auto/c/x", None).status, 404);
}

#[test]
fn a_broker_refuses_another_members_data_dir() {
    let mut group = BrokerGroup::start(1);
    group.members[0].proc.kill();
    let data = group.members[0].dir.clone();
    let out = std::process::Command::new(BIN)
        .args(["broker", "--node-id", "7", "--address", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-address", &format!("127.0.0.1:{}", free_port()), "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to broker node_id 1, not 7"), "{err}");
}

/// A data dir left over by another group (same node id, same addresses) cannot vote in or be
/// overwritten by a new group: the new group's RPCs are refused with FOREIGN_GROUP, and the
/// two majority members serve on.
#[test]
fn a_data_dir_of_another_group_is_refused() {
    let dir = TempDir::new("foreign-group");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let member = |i: usize| format!("{}=127.0.0.1:{}/127.0.0.1:{}", i + 1, ports[i].1, ports[i].0);
    // Group A: member 3 alone, with some state.
    let old_init = member(2);
    let mut old = BrokerProc::new(3, ports[2], &dir.0, &["--bootstrap", "true", "--initial-members", &old_init]);
    old.spawn();
    assert!(eventually(Duration::from_secs(20), || old.status().is_some_and(|s| s["leader_id"] == 3)));
    let body = r#"{"proxy_address":"old:6000","nodes":["o1:1","o2:1"]}"#;
    assert!(eventually(Duration::from_secs(10), || {
        http(&old.http, "POST", "/api/v3/proxies/meta", Some(body)).is_ok_and(|r| r.status == 200)
    }));
    let old_group = old.status().unwrap()["group_id"].as_str().unwrap().to_owned();
    old.proc.kill();

    // Group B: members 1, 2 fresh and member 3 on A's data dir, all bootstrapping {1, 2, 3}.
    let init = (0..3).map(member).collect::<Vec<_>>().join(",");
    let flags = ["--bootstrap", "true", "--initial-members", init.as_str()];
    let mut members: Vec<BrokerProc> =
        (0..3).map(|i| BrokerProc::new(i as u64 + 1, ports[i], &dir.0, &flags)).collect();
    for m in &mut members {
        m.spawn();
    }
    let leader_of = |m: &BrokerProc| m.status().and_then(|s| s["leader_id"].as_u64());
    assert!(eventually(Duration::from_secs(20), || {
        let (a, b) = (leader_of(&members[0]), leader_of(&members[1]));
        a.is_some() && a == b && a != Some(3)
    }));
    let new_group = members[0].status().unwrap()["group_id"].as_str().unwrap().to_owned();
    assert_ne!(new_group, old_group);
    let body = r#"{"proxy_address":"new:6000","nodes":["n1:1","n2:1"]}"#;
    assert!(eventually(Duration::from_secs(10), || {
        http(&members[1].http, "POST", "/api/v3/proxies/meta", Some(body)).is_ok_and(|r| r.status == 200)
    }));
    // Member 3 kept its own group and data, and says why it refuses.
    let log = std::fs::read_to_string(&members[2].log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&members[2].log)
            .unwrap_or_default()
            .contains("FOREIGN_GROUP")),
        "{log}"
    );
    let status = members[2].status().expect("member 3 answers");
    assert_eq!(status["group_id"], old_group.as_str());
    let addrs = http(&members[2].http, "GET", "/api/v3/proxies/addresses", None).unwrap().json();
    assert_eq!(addrs["addresses"], json!(["old:6000"]));
    let addrs = http(&members[0].http, "GET", "/api/v3/proxies/addresses", None).unwrap().json();
    assert_eq!(addrs["addresses"], json!(["new:6000"]));
}

/// Unmounts a test tmpfs even when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A member whose disk fills up answers `500 STORAGE_ERROR` (no hang, no panic), keeps
/// answering status, and after space is freed and it restarts has every acknowledged write.
#[test]
fn a_full_disk_answers_storage_error_and_loses_nothing_acknowledged() {
    let dir = TempDir::new("disk-full");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let (h, g) = (free_port(), free_port());
    let init = format!("1=127.0.0.1:{g}/127.0.0.1:{h}");
    let mut m = BrokerProc::new(1, (h, g), &mnt, &["--bootstrap", "true", "--initial-members", &init]);
    m.log = dir.0.join("b1.log");
    m.spawn();
    assert!(eventually(Duration::from_secs(20), || m.status().is_some_and(|s| s["leader_id"] == 1)));
    let addr = m.http.clone();
    let register = |i: usize| {
        let body = format!(r#"{{"proxy_address":"p{i}:6000","nodes":["r{i}:1","r{i}:2"]}}"#);
        http(&addr, "POST", "/api/v3/proxies/meta", Some(&body)).expect("an answer")
    };
    let mut acked = vec![];
    for i in 0..5 {
        assert_eq!(register(i).status, 200);
        acked.push(format!("p{i}:6000"));
    }
    // Fill the disk.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }
    let mut storage_errors = 0;
    for i in 5..200 {
        let r = register(i);
        match r.status {
            200 => acked.push(format!("p{i}:6000")),
            500 => {
                assert_eq!(r.error_code(), "STORAGE_ERROR", "{}", String::from_utf8_lossy(&r.body));
                storage_errors += 1;
                if storage_errors == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(storage_errors, 3, "the full disk was never reported");
    assert_eq!(http(&m.http, "GET", "/api/v3/raft/status", None).unwrap().status, 200);
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");

    // Free the space and restart: every acknowledged write is there, and writes work again.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    m.proc.kill();
    m.spawn();
    assert!(eventually(Duration::from_secs(20), || m.status().is_some_and(|s| s["leader_id"] == 1)));
    let mut addrs = None;
    assert!(eventually(Duration::from_secs(10), || {
        addrs =
            http(&m.http, "GET", "/api/v3/proxies/addresses", None).ok().filter(|r| r.status == 200).map(|r| r.json());
        addrs.is_some()
    }));
    let addrs = addrs.unwrap();
    let listed: Vec<&str> = addrs["addresses"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for a in &acked {
        assert!(listed.contains(&a.as_str()), "acknowledged {a} lost: {listed:?}");
    }
    assert_eq!(register(1000).status, 200);
}

/// A call forwarded by a follower gets the leader's own answer even when it takes longer than
/// `forward_timeout_ms`: here an `auto` scale-out waiting for proxies that never sync (none
/// runs) ends in `PROXY_NOT_SYNC` after ~6 s. The follower used to give up at 5 s with `RETRY`
/// while the leader carried on, so the client's retry met `NODE_NUMBER_CHANGING`.
#[test]
fn a_slow_forwarded_call_gets_the_leaders_answer_not_retry() {
    let group = BrokerGroup::start_with(3, &["--auto-sync-timeout-ms", "8000"]);
    let leader = group.wait_leader(Duration::from_secs(20)).expect("a leader");
    let api = Api::new(&group);
    for i in 1..=4 {
        let body = json!({"proxy_address": format!("127.0.0.1:{}", free_port()), "nodes": [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())], "host": format!("h{i}")});
        api.ok("POST", "/proxies/meta", Some(&body.to_string()));
    }
    api.ok("POST", "/clusters/meta/slow", Some(r#"{"node_number": 4}"#));
    let follower = group.members.iter().find(|m| m.id != leader).expect("a follower");
    let started = std::time::Instant::now();
    let r = http(&follower.http, "POST", "/api/v3/clusters/migrations/auto/slow/8", None).expect("an answer");
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.error_code()),
        (409, "PROXY_NOT_SYNC".to_owned()),
        "after {took:?}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(took > Duration::from_secs(5), "the call should have outlived the old 5 s forward timeout: {took:?}");
}

/// A write the leader proposed but could not commit (its followers are gone) answers `RETRY`
/// with `"outcome":"unknown"`: it may still be applied, so a blind retry of a non-idempotent
/// call could apply it twice. (A plain `RETRY` means nothing was applied.)
#[test]
fn a_proposal_that_times_out_says_its_outcome_is_unknown() {
    let mut group = BrokerGroup::start_with(3, &["--proposal-timeout-ms", "1000"]);
    let leader = group.wait_leader(Duration::from_secs(20)).expect("a leader");
    let api = Api::new(&group);
    register(&api, 1);
    for m in group.members.iter_mut().filter(|m| m.id != leader) {
        m.proc.kill();
    }
    let leader_http = group.members.iter().find(|m| m.id == leader).unwrap().http.clone();
    let body = json!({"proxy_address": "server_proxy9:6009", "nodes": ["redis17:6379", "redis18:6379"]});
    let r = http(&leader_http, "POST", "/api/v3/proxies/meta", Some(&body.to_string())).expect("an answer");
    assert_eq!((r.status, r.json()), (409, json!({"error": "RETRY", "outcome": "unknown"})));
}

/// A request's id (the caller's `X-Moonraft-Request-Id`, or one the broker makes) comes back in
/// the response and is in the log lines of the member that took it and of the leader it was
/// forwarded to.
#[test]
fn a_request_id_follows_a_forwarded_request_into_the_leaders_log() {
    let group = BrokerGroup::start(3);
    let leader = group.wait_leader(Duration::from_secs(10)).expect("a leader");
    let follower = group.members.iter().find(|m| m.id != leader).expect("a follower");
    let body = r#"{"proxy_address": "traced:6000", "nodes": ["traced:7000", "traced:7001"]}"#;
    let mut answered = None;
    for _ in 0..50 {
        let r = http_with(
            &follower.http,
            "POST",
            "/api/v3/proxies/meta",
            Some(body),
            &[("X-Moonraft-Request-Id", "trace-me-42")],
        )
        .expect("the follower answers");
        if r.status == 200 {
            answered = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = answered.expect("the registration succeeded through the follower");
    assert_eq!(r.header("x-moonraft-request-id"), Some("trace-me-42"));
    let log_of = |id: u64| {
        std::fs::read_to_string(&group.members.iter().find(|m| m.id == id).expect("member").log).unwrap_or_default()
    };
    let logged = eventually(Duration::from_secs(5), || {
        log_of(leader).contains("trace-me-42") && log_of(follower.id).contains("trace-me-42")
    });
    assert!(logged, "the id is not in both logs:\n{}", group.logs());
    // Without one, the member makes one; an unusable one (too long) is replaced.
    let own = follower.http("GET", "/api/v3/proxies/addresses", None).expect("answer");
    let id = own.header("x-moonraft-request-id").expect("an id").to_owned();
    assert!(id.starts_with(&format!("{}-", follower.id)), "{id}");
    let long = "x".repeat(65);
    let r = http_with(&follower.http, "GET", "/api/v3/proxies/addresses", None, &[("X-Moonraft-Request-Id", &long)])
        .expect("answer");
    assert_ne!(r.header("x-moonraft-request-id"), Some(long.as_str()));
}
