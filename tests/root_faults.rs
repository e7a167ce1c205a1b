//! Faults that need root to make: a firewall rule that cuts one coordinator off from one proxy
//! (iptables `owner` match on the coordinator's uid, set with `setpriv`), and proxy names that
//! resolve only later (a private `/etc/hosts` bind-mounted in the coordinators' own mount
//! namespace, with `unshare`). Marked `#[ignore]`; `scripts/test.sh` runs them when it runs as
//! root (CI does) and says so when it cannot.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// An iptables rule in the OUTPUT chain, deleted when dropped (also when the test fails).
struct Rule(Vec<String>);

impl Rule {
    fn add(spec: &[String]) -> Rule {
        let ok = Command::new("iptables").arg("-I").arg("OUTPUT").args(spec).status().is_ok_and(|s| s.success());
        assert!(ok, "iptables -I OUTPUT {spec:?} failed");
        Rule(spec.to_vec())
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").arg("OUTPUT").args(&self.0).status();
    }
}

#[test]
#[ignore = "needs root (iptables, setpriv): scripts/test.sh runs it as root"]
fn one_coordinator_cut_off_from_a_proxy_does_not_get_it_failed_over() {
    let mut s = Stack::start(4, 0, &[]);
    let grpc = s.brokers.grpc_addresses();
    // Coordinator 0 runs under a uid of its own, so a firewall rule can match its packets.
    let uid = (20_000 + std::process::id() % 30_000).to_string();
    let setpriv = ["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"];
    s.coordinators.push(Coordinator::start_wrapped(&setpriv, &grpc, &s.dir.0, "cut", &[]));
    s.coordinators.push(Coordinator::start(&grpc, &s.dir.0, "fine", &[]));
    let two = eventually(Duration::from_secs(10), || {
        s.brokers.call("GET", "/coordinators", None).json()["failure_quorum"] == 2
    });
    assert!(two, "{}", s.brokers.call("GET", "/coordinators", None).json());

    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number": 4}"#)).status, 200);
    let c = s.cluster("c");
    let epoch = c["epoch"].as_u64().unwrap();
    let victim = master_proxies(&c)[0].clone();
    let synced = eventually(Duration::from_secs(10), || proxy_epoch(port_of_addr(&victim)).is_some_and(|e| e >= epoch));
    assert!(synced, "{}", s.logs());

    // Cut: every packet from coordinator "cut" to the proxy's port is dropped.
    let spec: Vec<String> = ["-o", "lo", "-p", "tcp", "--dport", &port_of_addr(&victim).to_string(), "-m", "owner"]
        .iter()
        .map(|x| x.to_string())
        .chain(["--uid-owner".to_owned(), uid.clone(), "-j".to_owned(), "DROP".to_owned()])
        .collect();
    let rule = Rule::add(&spec);
    // The cut coordinator sees the proxy down past the window and reports it...
    let reported_by_cut =
        eventually(Duration::from_secs(15), || s.coordinators[0].info_counter("failure_reports") >= 1);
    assert!(reported_by_cut, "the cut was not seen:\n{}", s.logs());
    assert!(reported(&s.brokers).contains(&victim));
    // ... but one view is not a quorum: nothing is failed over, and the proxy keeps serving
    // (the other coordinator renews its lease).
    let untouched = always(Duration::from_secs(4), || {
        failed_set(&s.brokers).is_empty()
            && s.brokers.call("GET", "/failures", None).json()["addresses"] == serde_json::json!([])
            && s.cluster("c")["epoch"].as_u64() == Some(epoch)
    });
    assert!(untouched, "one coordinator's view failed a proxy over:\n{}", s.logs());
    let mut client = Conn::connect(port_of_addr(&victim));
    let r = client.cmd(&["SET", "{a}x", "1"]);
    assert!(r == simple("OK") || error_text(&r).starts_with("MOVED"), "{r:?}");
    assert_eq!(s.coordinators[1].info_counter("failure_reports"), 0, "the other coordinator reported it");

    // Healed: the cut coordinator withdraws its report, the proxy has no record left.
    drop(rule);
    let withdrawn = eventually(Duration::from_secs(10), || {
        s.coordinators[0].info_counter("failure_reports_withdrawn") >= 1 && !reported(&s.brokers).contains(&victim)
    });
    assert!(withdrawn, "{}", s.logs());

    // A real crash is seen by both and failed over.
    s.host(&victim).proxy.proc.kill();
    let failed_over = eventually(Duration::from_secs(20), || {
        failed_set(&s.brokers).contains(&victim) && !master_proxies(&s.cluster("c")).contains(&victim)
    });
    assert!(failed_over, "{}", s.logs());
}

/// Rewrites `path` in place (the bind mount follows the inode, not the name).
fn write_in_place(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open hosts file");
    f.write_all(text.as_bytes()).expect("write hosts file");
}

#[test]
#[ignore = "needs root (mount namespaces): scripts/test.sh runs it as root"]
fn a_proxy_name_that_resolves_late_is_not_a_failure_but_a_dead_one_is() {
    let brokers = BrokerGroup::start(3);
    let dir = TempDir::new("late-dns");
    let base = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let hosts = dir.0.join("hosts");
    std::fs::write(&hosts, &base).unwrap();
    let tag = std::process::id();
    let (late, dead) = (format!("mr-late-{tag}.invalid"), format!("mr-dead-{tag}.invalid"));

    // "late": a running proxy whose name resolves only after 2 s. "dead": a name that resolves
    // from the start to a port where nothing listens.
    let redis = [Redis::start(), Redis::start()];
    // It announces itself under the name it is registered with (pushes carry TARGET=<name>).
    let (proxy, late_addr) = (0..5)
        .find_map(|_| {
            let port = free_port();
            let addr = format!("{late}:{port}");
            Proxy::start_on(port, &["--announce-address", &addr]).map(|p| (p, addr))
        })
        .expect("a proxy");
    let dead_addr = format!("{dead}:{}", free_port());
    write_in_place(&hosts, &format!("{base}\n127.0.0.1 {dead}\n"));
    register_proxy(&brokers, &late_addr, [&redis[0].addr(), &redis[1].addr()], "late");
    register_proxy(&brokers, &dead_addr, ["127.0.0.1:1", "127.0.0.1:2"], "dead");

    // No start-up grace: only the rule that a failed name lookup says nothing about the proxy
    // keeps "late" from being reported.
    let unshare = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        hosts.to_str().unwrap(),
    ];
    let grpc = brokers.grpc_addresses();
    let flags = ["--startup-grace-ms", "0"];
    let coordinators: Vec<Coordinator> =
        (0..2).map(|i| Coordinator::start_wrapped(&unshare, &grpc, &dir.0, &format!("co{i}"), &flags)).collect();
    let logs = || {
        let mut s = brokers.logs();
        for (i, c) in coordinators.iter().enumerate() {
            s.push_str(&format!("--- coordinator {i} ---\n{}", c.log_text()));
        }
        s
    };
    let never_reported = |b: &BrokerGroup| !reported(b).contains(&late_addr) && !failed_set(b).contains(&late_addr);
    assert!(always(Duration::from_secs(2), || never_reported(&brokers)), "{}", logs());
    write_in_place(&hosts, &format!("{base}\n127.0.0.1 {dead}\n127.0.0.1 {late}\n"));

    // "late" is synced by both coordinators once its name resolves (a push is the only one
    // these coordinators can make: "dead" never answers); "dead" is failed (detection is on).
    let synced = eventually(Duration::from_secs(10), || {
        let want = brokers.call("GET", &format!("/proxies/meta/{late_addr}"), None).json()["proxy"]["epoch"].as_u64();
        want.is_some_and(|w| proxy_epoch(proxy.port).is_some_and(|e| e >= w))
            && coordinators.iter().all(|c| c.info_counter("pushes") >= 1)
            && never_reported(&brokers)
    });
    assert!(synced, "{}", logs());
    let dead_failed = eventually(Duration::from_secs(15), || failed_set(&brokers).contains(&dead_addr));
    assert!(dead_failed, "{}", logs());
    assert!(never_reported(&brokers), "{}", logs());
    for c in &coordinators {
        assert!(!c.log_text().lines().any(|l| l.contains("reporting failure") && l.contains(&late)), "{}", logs());
    }

    // Its name disappears and then it dies (a killed container): the address it last
    // resolved to is still probed, so the death is seen.
    write_in_place(&hosts, &format!("{base}\n127.0.0.1 {dead}\n"));
    let mut proxy = proxy;
    proxy.proc.kill();
    let late_failed = eventually(Duration::from_secs(15), || failed_set(&brokers).contains(&late_addr));
    assert!(late_failed, "{}", logs());
}
