//! Faults on a schedule: a quiet spell, then one fault from the chosen set for a while, then its
//! heal; every start and end is recorded in the history (process `NEMESIS`) so the report can
//! shade it. Everything is healed before the final phase (`heal_all`).

use crate::client;
use crate::history::{Kind, Note, Recorder, NEMESIS};
use crate::rng::Rng;
use crate::topology::{Role, Topology};
use crate::workload::REDIS_CLUSTER;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a process, start it again after the fault's time.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Cut the brokers' network: random halves, an isolated leader, or a bridge (majority ring).
    Partition,
    /// Remove a voter, add it back as a learner, promote it.
    Member,
    /// Kill or pause a coordinator.
    Coordinator,
    /// Scale the Redis cluster out and in (slot migration).
    Migrate,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "partition" => Fault::Partition,
            "member" => Fault::Member,
            "coordinator" => Fault::Coordinator,
            "migrate" => Fault::Migrate,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Member => "member",
            Fault::Coordinator => "coordinator",
            Fault::Migrate => "migrate",
        }
    }
}

pub struct Nemesis {
    pub faults: Vec<Fault>,
    pub topo: Arc<Mutex<Topology>>,
    pub rec: Arc<Recorder>,
    pub rng: Rng,
    /// How long a fault lasts and how long the quiet between faults is (on average).
    pub interval: Duration,
    /// Whether data-plane processes (proxies, Redis) are the targets of kill/pause.
    pub data_plane: bool,
    /// What is going on now, for the progress line.
    pub current: Arc<Mutex<String>>,
    /// Failovers may have happened (a master proxy or Redis was killed or paused).
    pub disturbed_data: Arc<std::sync::atomic::AtomicBool>,
    scaled_out: bool,
}

fn topo_lock(t: &Mutex<Topology>) -> std::sync::MutexGuard<'_, Topology> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// An `/api/v3` call to any broker, retried until it answers something other than `RETRY` or
/// the deadline passes.
pub async fn api(
    brokers: &[String],
    method: &str,
    path: &str,
    body: Option<&str>,
    within: Duration,
) -> Option<client::HttpReply> {
    let deadline = tokio::time::Instant::now() + within;
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let addr = &brokers[i % brokers.len()];
        i += 1;
        if let Ok(r) = client::http(addr, method, &format!("/api/v3{path}"), body, &[], Duration::from_secs(30)).await {
            if !(r.status == 409 && r.error_code().as_deref() == Some("RETRY")) && r.status != 503 {
                return Some(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The leader's id, as the members that answer agree.
pub async fn leader(brokers: &[String]) -> Option<u64> {
    for b in brokers {
        if let Ok(r) = client::http(b, "GET", "/api/v3/raft/status", None, &[], Duration::from_secs(2)).await {
            if let Some(id) = r.json()["leader_id"].as_u64() {
                return Some(id);
            }
        }
    }
    None
}

impl Nemesis {
    pub fn new(
        faults: Vec<Fault>,
        topo: Arc<Mutex<Topology>>,
        rec: Arc<Recorder>,
        seed: u64,
        interval: Duration,
        data_plane: bool,
    ) -> Nemesis {
        Nemesis {
            faults,
            topo,
            rec,
            rng: Rng::new(seed ^ 0x5EED),
            interval,
            data_plane,
            current: Arc::new(Mutex::new("none".into())),
            disturbed_data: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            scaled_out: false,
        }
    }

    fn http_brokers(&self) -> Vec<String> {
        topo_lock(&self.topo).brokers.iter().map(|b| b.http.clone()).collect()
    }

    fn note(&self, f: &str, value: Value) -> Note {
        Note { process: NEMESIS, f: f.into(), value, ..Note::default() }
    }

    fn jitter(&mut self) -> Duration {
        let ms = self.interval.as_millis() as u64;
        Duration::from_millis(ms / 2 + self.rng.below(ms.max(1)))
    }

    /// Runs faults until `stop` is set.
    pub async fn run(mut self, stop: Arc<std::sync::atomic::AtomicBool>) -> Nemesis {
        use std::sync::atomic::Ordering;
        if self.faults.is_empty() {
            return self;
        }
        loop {
            let quiet = self.jitter();
            if sleep_or_stop(quiet, &stop).await {
                break;
            }
            let fault = self.faults[self.rng.below(self.faults.len() as u64) as usize];
            let how_long = self.jitter();
            let started = self.start(fault).await;
            let Some(desc) = started else { continue };
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = desc.to_string();
            self.rec.record(Kind::Invoke, self.note(fault.name(), desc.clone()));
            let stopped = sleep_or_stop(how_long, &stop).await;
            self.end(fault, &desc).await;
            self.rec.record(Kind::Ok, self.note(fault.name(), desc));
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = "none".into();
            if stopped || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        self
    }

    fn targets(&self, fault: Fault) -> Vec<usize> {
        let t = topo_lock(&self.topo);
        match fault {
            Fault::Coordinator => t.of(Role::Coordinator),
            _ if self.data_plane => {
                let mut v = t.of(Role::Proxy);
                v.extend(t.of(Role::Redis));
                v
            }
            _ => t.of(Role::Broker),
        }
    }

    /// Starts `fault`; returns a description of what was done (`None`: nothing could be done).
    async fn start(&mut self, fault: Fault) -> Option<Value> {
        match fault {
            Fault::Kill | Fault::Pause | Fault::Coordinator => {
                let targets = self.targets(fault);
                if targets.is_empty() {
                    return None;
                }
                let i = targets[self.rng.below(targets.len() as u64) as usize];
                let pause = fault == Fault::Pause || (fault == Fault::Coordinator && self.rng.below(2) == 1);
                let mut t = topo_lock(&self.topo);
                let p = &mut t.procs[i];
                if p.role == Role::Proxy || p.role == Role::Redis {
                    self.disturbed_data.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if pause {
                    p.pause();
                } else {
                    p.kill();
                }
                Some(json!({"action": if pause { "pause" } else { "kill" }, "process": p.name, "index": i}))
            }
            Fault::Partition => {
                let brokers = self.http_brokers();
                let n = brokers.len();
                let leader = leader(&brokers).await;
                let kind = self.rng.below(3);
                let t = topo_lock(&self.topo);
                let result = match kind {
                    0 => {
                        let mut ids: Vec<usize> = (0..n).collect();
                        self.rng.shuffle(&mut ids);
                        let cut = 1 + self.rng.below((n as u64).saturating_sub(1).max(1)) as usize;
                        let (a, b) = ids.split_at(cut.min(n - 1));
                        t.net
                            .partition(&[a.to_vec(), b.to_vec()])
                            .map(|_| json!({"partition": "halves", "groups": [a, b]}))
                    }
                    1 => {
                        let l = leader.map(|id| id as usize - 1).unwrap_or(0);
                        let rest: Vec<usize> = (0..n).filter(|&h| h != l).collect();
                        t.net
                            .partition(&[vec![l], rest])
                            .map(|_| json!({"partition": "isolated-leader", "leader": l + 1}))
                    }
                    _ => {
                        // Each broker keeps only its ring neighbours; with 3 that is a bridge:
                        // the middle one sees both, the ends cannot see each other.
                        let mut ids: Vec<usize> = (0..n).collect();
                        self.rng.shuffle(&mut ids);
                        let links: Vec<(usize, usize)> = if n <= 3 {
                            vec![(ids[0], ids[n - 1])]
                        } else {
                            let mut v = Vec::new();
                            for i in 0..n {
                                for j in i + 1..n {
                                    let d = (j - i).min(n - (j - i));
                                    if d > 1 {
                                        v.push((ids[i], ids[j]));
                                    }
                                }
                            }
                            v
                        };
                        t.net.cut_links(&links).map(|_| json!({"partition": "ring", "cut": links}))
                    }
                };
                match result {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("nemesis: partition refused: {e}");
                        None
                    }
                }
            }
            Fault::Member => {
                let brokers = self.http_brokers();
                let status = api(&brokers, "GET", "/raft/status", None, Duration::from_secs(10)).await?.json();
                let voters: Vec<u64> = status["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["voter"] == true)
                    .filter_map(|m| m["id"].as_u64())
                    .collect();
                if voters.len() < 3 {
                    return None;
                }
                let victim = voters[self.rng.below(voters.len() as u64) as usize];
                let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != victim).collect();
                let body = json!({"voters": rest, "remove": true}).to_string();
                let r = api(&brokers, "PUT", "/raft/membership", Some(&body), Duration::from_secs(30)).await;
                Some(json!({"member": "removed", "id": victim, "status": r.map(|r| r.status)}))
            }
            Fault::Migrate => {
                let brokers = self.http_brokers();
                let n = if self.scaled_out { 4 } else { 8 };
                let r = api(
                    &brokers,
                    "POST",
                    &format!("/clusters/migrations/auto/{REDIS_CLUSTER}/{n}"),
                    None,
                    Duration::from_secs(90),
                )
                .await;
                let status = r.as_ref().map(|r| r.status);
                if status == Some(200) {
                    self.scaled_out = !self.scaled_out;
                }
                Some(json!({"scale_to": n, "status": status, "error": r.and_then(|r| r.error_code())}))
            }
        }
    }

    /// Heals what `start` did.
    async fn end(&mut self, fault: Fault, desc: &Value) {
        match fault {
            Fault::Kill | Fault::Pause | Fault::Coordinator => {
                let Some(i) = desc["index"].as_u64() else { return };
                let mut t = topo_lock(&self.topo);
                let i = i as usize;
                t.procs[i].resume();
                if !t.procs[i].running() {
                    if let Err(e) = t.restart(i) {
                        eprintln!("nemesis: restart failed: {e}");
                    }
                }
            }
            Fault::Partition => topo_lock(&self.topo).net.heal(),
            Fault::Member => {
                if let Some(id) = desc["id"].as_u64() {
                    self.readd_member(id).await;
                }
            }
            Fault::Migrate => {}
        }
    }

    /// Adds member `id` back as a learner and makes every broker a voter again.
    async fn readd_member(&self, id: u64) {
        let (brokers, member) = {
            let t = topo_lock(&self.topo);
            let b = t
                .brokers
                .iter()
                .find(|b| b.id == id)
                .map(|b| json!({"id": b.id, "raft_address": b.grpc, "http_address": b.http}));
            (t.brokers.iter().map(|b| b.http.clone()).collect::<Vec<_>>(), b)
        };
        let Some(member) = member else { return };
        let all: Vec<u64> = topo_lock(&self.topo).brokers.iter().map(|b| b.id).collect();
        let _ = api(&brokers, "POST", "/raft/learners", Some(&member.to_string()), Duration::from_secs(60)).await;
        let body = json!({"voters": all}).to_string();
        let _ = api(&brokers, "PUT", "/raft/membership", Some(&body), Duration::from_secs(60)).await;
    }

    /// Heals everything before the final phase: network, processes, membership.
    pub async fn heal_all(&mut self) {
        {
            let mut t = topo_lock(&self.topo);
            t.net.heal();
            if let Err(e) = t.heal_processes() {
                eprintln!("heal: {e}");
            }
        }
        if self.faults.contains(&Fault::Member) {
            let brokers = self.http_brokers();
            let all: Vec<u64> = topo_lock(&self.topo).brokers.iter().map(|b| b.id).collect();
            if let Some(r) = api(&brokers, "GET", "/raft/status", None, Duration::from_secs(30)).await {
                let voters: Vec<u64> = r.json()["members"]
                    .as_array()
                    .map(|a| a.iter().filter(|m| m["voter"] == true).filter_map(|m| m["id"].as_u64()).collect())
                    .unwrap_or_default();
                for id in all.iter().filter(|id| !voters.contains(id)) {
                    self.readd_member(*id).await;
                }
            }
        }
    }
}

/// Sleeps `d`, waking early (returning true) when `stop` is set.
async fn sleep_or_stop(d: Duration, stop: &std::sync::atomic::AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100).min(deadline - tokio::time::Instant::now())).await;
    }
    stop.load(std::sync::atomic::Ordering::Relaxed)
}
