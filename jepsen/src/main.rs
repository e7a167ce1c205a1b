//! `moonraft-jepsen`: starts a real moonraft topology, runs client workers while a nemesis
//! injects faults, heals, reads back, and checks the recorded history. See `USAGE`.

mod checker;
mod client;
mod history;
mod nemesis;
mod net;
mod report;
mod rng;
mod topology;
mod workload;

use anyhow::{bail, Context, Result};
use checker::Validity;
use history::Recorder;
use nemesis::{Fault, Nemesis};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use topology::{Shape, Topology};
use workload::{Ctx, Worker, Workload};

const USAGE: &str = "moonraft-jepsen: fault injection against a real moonraft topology

moonraft-jepsen test --workload W [--nemesis N1,N2,...] [options]
moonraft-jepsen check --workload W --out DIR     check DIR/history.jsonl again

test options:
  --workload W            register | set | epoch        (brokers: /api/v3 and gRPC)
                          redis-register | redis-set    (through the proxies, cluster client)
  --nemesis N1,N2         faults, one at a time on a schedule (default: none):
                          kill         SIGKILL a process, restart it after the fault
                          pause        SIGSTOP, SIGCONT after the fault
                          partition    random halves, isolated leader, ring/bridge (needs root)
                          member       remove a voter, add it back as a learner, promote it
                          coordinator  kill or pause a coordinator
                          migrate      scale the Redis cluster 4 -> 8 -> 4 ... (redis-* only)
                          kill/pause hit brokers for broker workloads, proxies and Redis
                          for redis-* workloads
  --time-limit S          seconds of workload (default 60)
  --concurrency C         client workers (default 10)
  --rate R                operations per second, all workers together (default 1000; 0: as
                          fast as they go — a fast workload makes gigabytes of history in
                          minutes)
  --out DIR               history.jsonl, results.json, report.html, logs/ (default
                          jepsen-out/<workload>-<time>)
  --nemesis-interval S    average seconds of a fault and of the quiet between (default 5)
  --brokers N             broker members (default 3; 5 makes ring partitions richer)
  --proxies N             proxies, each with 2 redis-servers (redis-*: default 4)
  --coordinators N        (redis-*: default 2)
  --bin PATH              the moonraft binary (default /var/tmp/moonraft-target/release/moonraft)
  --seed N                random seed (default: from the clock; printed)
  --op-timeout-ms N       a client call's bound (default 10000)
  --max-steps N           linearizability search budget per key (default 20000000)
  --no-netns              run on loopback even as root (no partitions)
  --unsafe-local-reads    TEST ONLY: brokers answer reads from their own copy, so the
                          checker has something to find

Hosts: as root every broker and every proxy with its Redis pair gets a network namespace
(veth to a bridge) and partitions are packet drops; otherwise everything runs on 127.0.0.1
(said on the first line) and the partition nemesis is refused.
Exit: 0 valid, 1 anomaly found, 2 unknown or the run itself broke.";

struct Args {
    cmd: String,
    workload: Workload,
    faults: Vec<Fault>,
    time_limit: u64,
    concurrency: u64,
    rate: u64,
    out: Option<PathBuf>,
    interval: u64,
    brokers: usize,
    proxies: Option<usize>,
    coordinators: Option<usize>,
    bin: String,
    seed: Option<u64>,
    op_timeout_ms: u64,
    max_steps: u64,
    netns: bool,
    unsafe_local_reads: bool,
}

fn parse(argv: &[String]) -> Result<Args> {
    let Some(cmd) = argv.first() else { bail!("a command is needed\n\n{USAGE}") };
    if cmd == "--help" || cmd == "-h" || cmd == "help" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    if cmd != "test" && cmd != "check" {
        bail!("unknown command {cmd:?}\n\n{USAGE}");
    }
    let mut a = Args {
        cmd: cmd.clone(),
        workload: Workload::Register,
        faults: Vec::new(),
        time_limit: 60,
        concurrency: 10,
        rate: 1000,
        out: None,
        interval: 5,
        brokers: 3,
        proxies: None,
        coordinators: None,
        bin: std::env::var("MOONRAFT_BIN").unwrap_or_else(|_| "/var/tmp/moonraft-target/release/moonraft".into()),
        seed: None,
        op_timeout_ms: 10_000,
        max_steps: 20_000_000,
        netns: true,
        unsafe_local_reads: false,
    };
    let mut workload_given = false;
    let mut i = 1;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let mut value = || -> Result<String> {
            i += 1;
            argv.get(i).cloned().with_context(|| format!("{flag} needs a value"))
        };
        let num =
            |v: String| -> Result<u64> { v.parse().with_context(|| format!("{flag}: expected a number, got {v:?}")) };
        match flag {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--workload" => {
                let v = value()?;
                a.workload = Workload::parse(&v).with_context(|| format!("unknown workload {v:?}"))?;
                workload_given = true;
            }
            "--nemesis" => {
                let v = value()?;
                for n in v.split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "none") {
                    a.faults.push(Fault::parse(n).with_context(|| format!("unknown nemesis {n:?}"))?);
                }
            }
            "--time-limit" => a.time_limit = num(value()?)?,
            "--concurrency" => a.concurrency = num(value()?)?.max(1),
            "--rate" => a.rate = num(value()?)?,
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--nemesis-interval" => a.interval = num(value()?)?.max(1),
            "--brokers" => a.brokers = num(value()?)?.clamp(1, 9) as usize,
            "--proxies" => a.proxies = Some(num(value()?)?.min(32) as usize),
            "--coordinators" => a.coordinators = Some(num(value()?)?.min(8) as usize),
            "--bin" => a.bin = value()?,
            "--seed" => a.seed = Some(num(value()?)?),
            "--op-timeout-ms" => a.op_timeout_ms = num(value()?)?.max(100),
            "--max-steps" => a.max_steps = num(value()?)?,
            "--no-netns" => a.netns = false,
            "--unsafe-local-reads" => a.unsafe_local_reads = true,
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
        i += 1;
    }
    if !workload_given {
        bail!("--workload is required\n\n{USAGE}");
    }
    if a.faults.contains(&Fault::Migrate) && !a.workload.data_plane() {
        bail!("the migrate nemesis needs a redis-* workload");
    }
    Ok(a)
}

/// Kills every process and removes the network when dropped, whatever ended the run.
struct Teardown(Arc<Mutex<Topology>>);

impl Drop for Teardown {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).teardown();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn test(a: Args, out: PathBuf) -> Result<i32> {
    let seed = a.seed.unwrap_or_else(|| now_secs() ^ u64::from(std::process::id()));
    let data_plane = a.workload.data_plane();
    let shape = Shape {
        brokers: a.brokers,
        coordinators: if data_plane { a.coordinators.unwrap_or(2) } else { a.coordinators.unwrap_or(0) },
        proxies: if data_plane { a.proxies.unwrap_or(4) } else { a.proxies.unwrap_or(0) },
        broker_flags: if a.unsafe_local_reads {
            vec!["--unsafe-local-reads".into(), "true".into()]
        } else {
            Vec::new()
        },
        isolate: a.netns,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let topo = Topology::start(&shape, &a.bin, &out)?;
    let hosts_line = if topo.net.isolated {
        format!("hosts: {} network namespaces on a bridge (partitions are packet drops)", topo.net.hosts.len())
    } else {
        format!("hosts: loopback only ({}); partitions refused", topo.net.why_not.clone().unwrap_or_default())
    };
    eprintln!("{hosts_line}");
    if !topo.net.isolated && a.faults.contains(&Fault::Partition) {
        bail!("the partition nemesis needs network namespaces: {}", topo.net.why_not.clone().unwrap_or_default());
    }
    eprintln!(
        "moonraft-jepsen: workload {} nemesis {:?} for {} s, {} workers at {} ops/s, seed {seed}, out {}",
        a.workload.name(),
        a.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        a.time_limit,
        a.concurrency,
        if a.rate == 0 { "unlimited".to_owned() } else { a.rate.to_string() },
        out.display()
    );
    let brokers: Vec<(String, String)> = topo.brokers.iter().map(|b| (b.http.clone(), b.grpc.clone())).collect();
    let proxies: Vec<String> = topo.proxies.iter().map(|p| p.address.clone()).collect();
    let proxy_nodes: Vec<[String; 2]> = topo.proxies.iter().map(|p| p.nodes.clone()).collect();
    let topo = Arc::new(Mutex::new(topo));
    let _teardown = Teardown(topo.clone());
    let rec = Arc::new(Recorder::new(Some(&out.join("history.jsonl")))?);
    let ctx = Arc::new(Ctx {
        rec: rec.clone(),
        brokers: brokers.clone(),
        proxies: proxies.clone(),
        proxy_nodes,
        timeout: Duration::from_millis(a.op_timeout_ms),
        kind: a.workload,
    });
    let initial = workload::setup(&ctx).await.context("workload set-up")?;

    // Workers and the nemesis.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.time_limit);
    let mut workers = Vec::new();
    for id in 0..a.concurrency {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        let proxies = proxies.clone();
        // Each worker's share of the rate, as a gap between the starts of its operations.
        let gap = (a.rate > 0).then(|| Duration::from_secs_f64(a.concurrency as f64 / a.rate as f64));
        workers.push(tokio::spawn(async move {
            let mut w = Worker::new(id, seed, &proxies);
            let mut next = tokio::time::Instant::now();
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if let Some(gap) = gap {
                    tokio::time::sleep_until(next).await;
                    next = (next + gap).max(tokio::time::Instant::now() - gap * 4);
                }
                workload::op(&ctx, &mut w).await;
                // After a refusal or an unknown outcome, a short pause: a worker would otherwise
                // spin on instant RETRYs during a fault and drown the history in them.
                if ctx.rec.last_kind(id) != Some(history::Kind::Ok) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let nemesis =
        Nemesis::new(a.faults.clone(), topo.clone(), rec.clone(), seed, Duration::from_secs(a.interval), data_plane);
    let current = nemesis.current.clone();
    let disturbed = nemesis.disturbed_data.clone();
    let nemesis_task = tokio::spawn(nemesis.run(stop.clone()));
    // Progress, once a second, until the time limit.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()))).await;
        let (n, ok, fail, info) = rec.counts();
        eprintln!(
            "[{:>4}s] invoked {n} ok {ok} fail {fail} info {info} | fault: {}",
            started.elapsed().as_secs(),
            current.lock().unwrap_or_else(|e| e.into_inner())
        );
        rec.flush();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let mut nemesis = nemesis_task.await.context("the nemesis task failed")?;
    eprintln!("healing every fault, then final reads");
    nemesis.heal_all().await;
    settle(&ctx, data_plane).await;
    let mut w = Worker::new(a.concurrency, seed, &proxies);
    workload::final_reads(&ctx, &mut w).await;
    rec.flush();

    let events = rec.events();
    let allow_loss = data_plane && disturbed.load(Ordering::Relaxed);
    let results = check(&events, a.workload, &initial, a.max_steps, allow_loss, &a, seed, &hosts_line);
    write_results(&out, &events, &results)?;
    Ok(exit_code(&results))
}

/// Waits until the brokers answer linearizable reads on every member (and, for data-plane
/// workloads, until no migration runs), bounded.
async fn settle(ctx: &Ctx, data_plane: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let http: Vec<String> = ctx.brokers.iter().map(|b| b.0.clone()).collect();
    for b in &http {
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = client::http(b, "GET", "/api/v3/epoch", None, &[], Duration::from_secs(5)).await {
                if r.status == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    if data_plane {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while tokio::time::Instant::now() < deadline {
            let info = nemesis::api(
                &http,
                "GET",
                &format!("/clusters/info/{}", workload::REDIS_CLUSTER),
                None,
                Duration::from_secs(10),
            )
            .await;
            if info.is_some_and(|r| r.json()["is_migrating"] == false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Metadata pushes and replica promotion after the last fault.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    events: &[history::Event],
    workload: Workload,
    initial: &BTreeMap<String, Option<i64>>,
    max_steps: u64,
    allow_loss: bool,
    a: &Args,
    seed: u64,
    hosts_line: &str,
) -> serde_json::Value {
    let checked_at = Instant::now();
    let outcome = match workload {
        Workload::Register | Workload::RedisRegister => checker::registers(events, initial, max_steps, allow_loss),
        Workload::Set | Workload::RedisSet => checker::sets(events),
        Workload::Epoch => checker::epochs(events),
    };
    // A redis-set with failover may lose acknowledged adds (asynchronous replication): counted
    // as lost, not as an anomaly.
    let (valid, anomalies) = if allow_loss && workload == Workload::RedisSet && outcome.valid == Validity::Invalid {
        let only_lost = outcome.anomalies.iter().all(|a| a["unexpected"].as_array().is_none_or(|u| u.is_empty()));
        if only_lost {
            (Validity::Valid, Vec::new())
        } else {
            (outcome.valid, outcome.anomalies.clone())
        }
    } else {
        (outcome.valid, outcome.anomalies.clone())
    };
    let counts = checker::counts(events);
    json!({
        "valid": valid.json(),
        "workload": workload.name(),
        "nemesis": a.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "time_limit_s": a.time_limit,
        "concurrency": a.concurrency,
        "rate": a.rate,
        "seed": seed,
        "hosts": hosts_line,
        "ops": counts.ops,
        "ok": counts.ok,
        "fail": counts.fail,
        "info": counts.info,
        "anomalies": anomalies,
        "lost": outcome.lost,
        "loss_allowed": allow_loss,
        "loss_note": if allow_loss { "proxies or Redis were killed or paused, so failovers may have promoted replicas that had not received every acknowledged write (Redis replication is asynchronous): such writes are counted in `lost` and `lost_window`, not reported as anomalies" } else { "no failover of Redis data was provoked: any lost acknowledged write is an anomaly" },
        "details": outcome.details,
        "initial": initial,
        "check_ms": checked_at.elapsed().as_millis() as u64,
    })
}

fn write_results(out: &std::path::Path, events: &[history::Event], results: &serde_json::Value) -> Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(results)?)?;
    std::fs::write(out.join("report.html"), report::html(events, results))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "valid": results["valid"], "workload": results["workload"], "nemesis": results["nemesis"],
            "ops": results["ops"], "ok": results["ok"], "fail": results["fail"], "info": results["info"],
            "lost": results["lost"], "anomalies": results["anomalies"].as_array().map(Vec::len),
            "check_ms": results["check_ms"], "out": out.display().to_string(),
        }))?
    );
    Ok(())
}

fn exit_code(results: &serde_json::Value) -> i32 {
    match &results["valid"] {
        serde_json::Value::Bool(true) => 0,
        serde_json::Value::Bool(false) => 1,
        _ => 2,
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let out =
        a.out.clone().unwrap_or_else(|| PathBuf::from(format!("jepsen-out/{}-{}", a.workload.name(), now_secs())));
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async move {
        if a.cmd == "check" {
            return recheck(&a, &out);
        }
        tokio::select! {
            r = test(a, out) => match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: the run broke: {e:#}");
                    2
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: stopping every process");
                2
            }
        }
    });
    // Dropping the runtime drops the test (and its Teardown) before we exit.
    drop(rt);
    std::process::exit(code);
}

/// `check`: the checker again over a recorded history.
fn recheck(a: &Args, out: &std::path::Path) -> i32 {
    let events = match history::load(&out.join("history.jsonl")) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let initial: BTreeMap<String, Option<i64>> = std::fs::read_to_string(out.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|r| serde_json::from_value(r["initial"].clone()).ok())
        .unwrap_or_default();
    let allow_loss = a.workload.data_plane()
        && events.iter().any(|e| e.process == history::NEMESIS && (e.f == "kill" || e.f == "pause"));
    let results = check(&events, a.workload, &initial, a.max_steps, allow_loss, a, 0, "recheck");
    if let Err(e) = write_results(out, &events, &results) {
        eprintln!("error: {e:#}");
        return 2;
    }
    exit_code(&results)
}
