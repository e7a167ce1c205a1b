//! Failure detection tells a dead proxy from a slow start or a blip, with real processes: 3
//! brokers, 2 coordinators, proxies with their redis-servers. Proxies registered before they
//! run are not failed over (start-up grace), one that never starts is (the grace ends); a proxy
//! paused for less than the failure window is left alone; a killed one is failed over; when it
//! comes back it returns to the free pool by itself.
//!
//! The cases that need root (a coordinator cut off from one proxy by a firewall rule, a proxy
//! name that resolves only later) are in `tests/root_faults.rs`.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn cluster(b: &BrokerGroup, name: &str) -> Value {
    b.call("GET", &format!("/clusters/meta/{name}"), None).json()["cluster"].clone()
}

#[test]
fn slow_starts_and_blips_are_not_failures_but_a_crash_is() {
    let brokers = BrokerGroup::start(3);
    let dir = TempDir::new("detection");
    // Four hosts whose proxies are registered before they run, and one that never runs.
    let redis: Vec<[Redis; 2]> = (0..4).map(|_| [Redis::start(), Redis::start()]).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    for (i, (p, r)) in ports.iter().zip(&redis).enumerate() {
        register_proxy(&brokers, &format!("127.0.0.1:{p}"), [&r[0].addr(), &r[1].addr()], &format!("host{i}"));
    }

    let grace = "6000";
    let flags = ["--startup-grace-ms", grace];
    let grpc = brokers.grpc_addresses();
    let coordinators: Vec<Coordinator> =
        (0..2).map(|i| Coordinator::start(&grpc, &dir.0, &format!("co{i}"), &flags)).collect();
    let logs = |proxies: &[&Proxy]| {
        let mut s = brokers.logs();
        for (i, c) in coordinators.iter().enumerate() {
            s.push_str(&format!("--- coordinator {i} ---\n{}", c.log_text()));
        }
        for p in proxies {
            s.push_str(&format!("--- proxy {} ---\n{}", p.addr(), p.log_text()));
        }
        s
    };

    // Both coordinators are alive for the brokers: a failover needs both of their reports.
    let quorum_two = eventually(Duration::from_secs(10), || {
        brokers.call("GET", "/coordinators", None).json()["failure_quorum"] == 2
    });
    assert!(quorum_two, "{}", brokers.call("GET", "/coordinators", None).json());

    // The proxies come up well after the failure window, within the grace.
    std::thread::sleep(Duration::from_millis(2500));
    let mut proxies: Vec<Proxy> =
        ports.iter().map(|p| Proxy::start_on(*p, &[]).expect("the registered port is still free")).collect();
    assert_eq!(brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let c = cluster(&brokers, "c");
    let epoch = c["epoch"].as_u64().unwrap();
    let synced = eventually(Duration::from_secs(10), || {
        master_proxies(&c).iter().all(|p| proxy_epoch(port_of_addr(p)).is_some_and(|e| e >= epoch))
    });
    assert!(synced, "{}", logs(&proxies.iter().collect::<Vec<_>>()));
    // Registered after the cluster was made, so that it cannot be chosen for it.
    let never = format!("127.0.0.1:{}", free_port());
    register_proxy(&brokers, &never, ["127.0.0.1:1", "127.0.0.1:2"], "never");

    // The proxy that never started is reported and failed once the grace is over: the grace
    // is a bound, not an exemption.
    let failed_never = eventually(Duration::from_secs(20), || failed_set(&brokers) == vec![never.clone()]);
    assert!(failed_never, "{:?}\n{}", failed_set(&brokers), logs(&proxies.iter().collect::<Vec<_>>()));
    for p in &proxies {
        let addr = p.addr();
        assert!(!reported(&brokers).contains(&addr), "{addr} was reported");
        for co in &coordinators {
            let text = co.log_text();
            assert!(
                !text.lines().any(|l| l.contains("reporting failure") && l.contains(&addr)),
                "a slow start was reported:\n{text}"
            );
        }
    }

    // A master proxy paused for half a second (less than the 1 s failure window) is left alone.
    let masters = master_proxies(&cluster(&brokers, "c"));
    let paused = proxies.iter().position(|p| p.addr() == masters[0]).unwrap();
    proxies[paused].proc.signal("STOP");
    std::thread::sleep(Duration::from_millis(500));
    proxies[paused].proc.signal("CONT");
    let untouched = always(Duration::from_secs(3), || {
        failed_set(&brokers) == vec![never.clone()] && cluster(&brokers, "c")["epoch"].as_u64() == Some(epoch)
    });
    assert!(untouched, "a 500 ms pause was failed over:\n{}", logs(&proxies.iter().collect::<Vec<_>>()));
    let mut client = Conn::connect(port_of_addr(&masters[0]));
    let r = client.cmd(&["SET", "{a}x", "1"]);
    assert!(r == simple("OK") || error_text(&r).starts_with("MOVED"), "{r:?}");

    // Keys on every master, so the victim's Redis holds data when it is killed.
    let cc = ClusterClient { entry: masters.iter().map(|m| port_of_addr(m)).collect(), password: None };
    for i in 0..100 {
        let r = cc.cmd(&["SET", &format!("key{i}"), "old"], Duration::from_secs(10));
        assert_eq!(r, Ok(simple("OK")), "SET key{i}");
    }
    // kill -9 of a master proxy: failed over.
    let victim = masters[0].clone();
    let victim_redis: Vec<u16> = redis[paused].iter().map(|r| r.port).collect();
    let dbsize = |port: u16| match Conn::try_connect(port).ok().and_then(|mut c| c.try_cmd(&["DBSIZE"]).ok()) {
        Some(moonraft_proxy::resp::Frame::Integer(n)) => n,
        _ => -1,
    };
    assert!(victim_redis.iter().any(|p| dbsize(*p) > 0), "the victim's Redis holds keys");
    let killed_at = Instant::now();
    proxies[paused].proc.kill();
    let failed_over = eventually(Duration::from_secs(20), || {
        failed_set(&brokers).contains(&victim) && !master_proxies(&cluster(&brokers, "c")).contains(&victim)
    });
    assert!(failed_over, "{victim} was not failed over:\n{}", logs(&proxies.iter().collect::<Vec<_>>()));
    println!("kill -9 → failed over in {} ms", killed_at.elapsed().as_millis());

    // It comes back (same port, same Redis): a free proxy again within a few seconds.
    let back = Proxy::start_on(port_of_addr(&victim), &[]).expect("the killed proxy's port is still free");
    proxies[paused] = back;
    let free_again = eventually(Duration::from_secs(15), || {
        let p = brokers.call("GET", &format!("/proxies/meta/{victim}"), None).json();
        !failed_set(&brokers).contains(&victim) && p["proxy"]["cluster_name"].is_null()
    });
    assert!(free_again, "{victim} did not return to the pool:\n{}", logs(&proxies.iter().collect::<Vec<_>>()));
    let recoveries: u64 = coordinators.iter().map(|c| c.info_counter("recoveries")).sum();
    assert!(recoveries >= 1, "no coordinator counted the recovery");
    assert!(
        coordinators.iter().any(|c| c.log_text().contains("failed proxy answers healthily again")),
        "the recovery is not in the logs"
    );
    // Its Redis nodes were emptied before it rejoined the pool: their keys are older than its
    // replacement's, and a cluster that gets this proxy later must not see them.
    assert_eq!(victim_redis.iter().map(|p| dbsize(*p)).collect::<Vec<_>>(), vec![0, 0]);
    // As a free proxy it gets metadata (no slots) and serves nothing.
    let synced_free = eventually(Duration::from_secs(10), || {
        let want = brokers.call("GET", &format!("/proxies/meta/{victim}"), None).json()["proxy"]["epoch"].as_u64();
        want.is_some_and(|w| proxy_epoch(port_of_addr(&victim)).is_some_and(|e| e >= w))
    });
    assert!(synced_free, "{}", logs(&proxies.iter().collect::<Vec<_>>()));
    // The never-started proxy is still failed: only a healthy answer recovers.
    assert!(failed_set(&brokers).contains(&never));
}
