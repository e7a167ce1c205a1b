//! The system under test as real processes from the release `moonraft` binary: brokers (one per
//! host), and for data-plane workloads coordinators and proxies, each proxy with its two
//! redis-servers on a host of its own. Every process logs under `DIR/logs/` and is killed when
//! the topology is dropped (also on failure or Ctrl-C).

use crate::net::Net;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Broker,
    Coordinator,
    Proxy,
    Redis,
}

pub struct Proc {
    pub name: String,
    pub role: Role,
    pub host: usize,
    program: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
}

impl Proc {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: sending a signal to a child we started.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                // A stopped process dies on SIGKILL too, but continue it so it is reaped at once.
                self.signal(libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if self.child.is_some() && !self.paused {
            self.signal(libc::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Broker {
    pub id: u64,
    pub http: String,
    pub grpc: String,
}

pub struct ProxyHost {
    pub address: String,
    pub nodes: [String; 2],
}

pub struct Topology {
    pub net: Net,
    pub procs: Vec<Proc>,
    pub brokers: Vec<Broker>,
    pub proxies: Vec<ProxyHost>,
    pub coordinator_admins: Vec<String>,
    bin: String,
    logs: PathBuf,
}

/// Options of the system under test.
#[derive(Debug, Clone)]
pub struct Shape {
    pub brokers: usize,
    pub coordinators: usize,
    pub proxies: usize,
    pub broker_flags: Vec<String>,
    pub isolate: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn wait_tcp(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(a) = addr.parse::<std::net::SocketAddr>() {
            if std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Topology {
    /// Starts everything. Hosts: one per broker, then one per proxy (with its redis pair);
    /// coordinators share the brokers' hosts.
    pub fn start(shape: &Shape, bin: &str, dir: &Path) -> Result<Topology> {
        if !Path::new(bin).exists() {
            bail!("{bin} not found: build it with `cargo build --release` (or pass --bin)");
        }
        // A run starts from nothing: an earlier run's data in the same place would be a foreign
        // group to these brokers.
        let logs = dir.join("logs");
        let _ = std::fs::remove_dir_all(&logs);
        let _ = std::fs::remove_dir_all(dir.join("data"));
        std::fs::create_dir_all(&logs)?;
        let net = Net::new(shape.brokers + shape.proxies, shape.isolate);
        let mut t = Topology {
            net,
            procs: Vec::new(),
            brokers: Vec::new(),
            proxies: Vec::new(),
            coordinator_admins: Vec::new(),
            bin: bin.to_owned(),
            logs,
        };
        let port = |t: &Topology, fixed: u16| if t.net.isolated { fixed } else { free_port() };
        // Brokers.
        let mut members = Vec::new();
        for i in 0..shape.brokers {
            let ip = t.net.hosts[i].ip.clone();
            let (h, g) = (port(&t, 7799), port(&t, 7800));
            let b = Broker { id: i as u64 + 1, http: format!("{ip}:{h}"), grpc: format!("{ip}:{g}") };
            members.push(format!("{}={}/{}", b.id, b.grpc, b.http));
            t.brokers.push(b);
        }
        let initial = members.join(",");
        for i in 0..shape.brokers {
            let data = dir.join(format!("data/broker{}", i + 1));
            std::fs::create_dir_all(&data)?;
            let (http, grpc) = (t.brokers[i].http.clone(), t.brokers[i].grpc.clone());
            let mut args: Vec<String> = [
                "broker",
                "--node-id",
                &(i + 1).to_string(),
                "--address",
                &http,
                "--grpc-address",
                &grpc,
                "--data-dir",
                data.to_str().unwrap_or("."),
                "--bootstrap",
                "true",
                "--initial-members",
                &initial,
                "--failure-purge-interval",
                "1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(shape.broker_flags.iter().cloned());
            t.spawn(&format!("broker{}", i + 1), Role::Broker, i, &t.bin.clone(), args)?;
        }
        for b in &t.brokers {
            if !wait_tcp(&b.http, Duration::from_secs(20)) {
                bail!("broker {} did not start (see {})", b.http, t.logs.display());
            }
        }
        // Proxies and their Redis nodes.
        for p in 0..shape.proxies {
            let host = shape.brokers + p;
            let ip = t.net.hosts[host].ip.clone();
            let mut nodes = Vec::new();
            for r in 0..2 {
                let rport = port(&t, 7001 + r);
                let rdir = dir.join(format!("data/redis-p{}-{}", p + 1, r + 1));
                std::fs::create_dir_all(&rdir)?;
                let args: Vec<String> = [
                    "--port",
                    &rport.to_string(),
                    "--bind",
                    &ip,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--repl-diskless-sync-delay",
                    "0",
                    "--dir",
                    rdir.to_str().unwrap_or("."),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                t.spawn(&format!("redis-p{}-{}", p + 1, r + 1), Role::Redis, host, "redis-server", args)?;
                nodes.push(format!("{ip}:{rport}"));
            }
            let pport = port(&t, 6001);
            let address = format!("{ip}:{pport}");
            let args = vec!["proxy".to_owned(), "--address".to_owned(), address.clone()];
            t.spawn(&format!("proxy{}", p + 1), Role::Proxy, host, &t.bin.clone(), args)?;
            t.proxies.push(ProxyHost { address, nodes: [nodes[0].clone(), nodes[1].clone()] });
        }
        for p in &t.proxies {
            for a in std::iter::once(&p.address).chain(p.nodes.iter()) {
                if !wait_tcp(a, Duration::from_secs(20)) {
                    bail!("{a} did not start (see {})", t.logs.display());
                }
            }
        }
        // Coordinators, on the brokers' hosts.
        let grpc_list = t.brokers.iter().map(|b| b.grpc.clone()).collect::<Vec<_>>().join(",");
        for c in 0..shape.coordinators {
            let host = c % shape.brokers.max(1);
            let ip = t.net.hosts[host].ip.clone();
            let admin = format!("{ip}:{}", port(&t, 6699));
            let args = vec![
                "coordinator".to_owned(),
                "--address".to_owned(),
                admin.clone(),
                "--broker-address".to_owned(),
                grpc_list.clone(),
                "--reporter-id".to_owned(),
                format!("co{}", c + 1),
            ];
            t.spawn(&format!("coordinator{}", c + 1), Role::Coordinator, host, &t.bin.clone(), args)?;
            t.coordinator_admins.push(admin);
        }
        Ok(t)
    }

    fn spawn(&mut self, name: &str, role: Role, host: usize, program: &str, args: Vec<String>) -> Result<()> {
        let log = self.logs.join(format!("{name}.log"));
        self.procs.push(Proc {
            name: name.to_owned(),
            role,
            host,
            program: program.to_owned(),
            args,
            log,
            child: None,
            paused: false,
        });
        self.launch(self.procs.len() - 1)
    }

    fn launch(&mut self, i: usize) -> Result<()> {
        let p = &self.procs[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&p.log)?;
        let err = log.try_clone()?;
        let child = self
            .net
            .command(p.host, &p.program)
            .args(&p.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", p.name))?;
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    /// Starts a killed process again, with the same arguments and data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.procs[i].kill();
        self.launch(i)
    }

    /// Indexes of the processes with this role.
    pub fn of(&self, role: Role) -> Vec<usize> {
        self.procs.iter().enumerate().filter(|(_, p)| p.role == role).map(|(i, _)| i).collect()
    }

    /// Every process back: resumed, and started again if it is not running.
    pub fn heal_processes(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            self.procs[i].resume();
            if !self.procs[i].running() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// Stops every process and removes the network (idempotent).
    pub fn teardown(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        self.net.teardown();
    }
}
