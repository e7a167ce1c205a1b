//! "Hosts": each one its own network namespace with a veth to a bridge, so that a partition is
//! real packet loss (iptables DROP rules inside the namespaces). Without root, every host is
//! 127.0.0.1 and partitions are refused.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

pub struct Host {
    /// The namespace, or `None` on loopback.
    pub ns: Option<String>,
    /// The address processes on this host bind to and are reached at.
    pub ip: String,
}

pub struct Net {
    pub hosts: Vec<Host>,
    torn_down: bool,
    /// Namespaces and a bridge were made (partitions possible).
    pub isolated: bool,
    bridge: Option<String>,
    /// Why not isolated, when not.
    pub why_not: Option<String>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Namespaces and bridges of earlier runs whose harness is gone (killed with SIGKILL).
fn clean_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("mrj-") else { continue };
        let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        // SAFETY: kill with signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } != 0 {
            let bridge = format!("mrj{pid}");
            let _ = run(&["ip", "netns", "del", name]);
            let _ = run(&["iptables", "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
            let _ = run(&["ip", "link", "del", &bridge]);
        }
    }
}

impl Net {
    /// `n` hosts, isolated in namespaces when `want_isolation` and possible.
    pub fn new(n: usize, want_isolation: bool) -> Net {
        let loopback = |why: Option<String>| Net {
            torn_down: false,
            hosts: (0..n).map(|_| Host { ns: None, ip: "127.0.0.1".into() }).collect(),
            isolated: false,
            bridge: None,
            why_not: why,
        };
        if !want_isolation {
            return loopback(Some("isolation not asked for".into()));
        }
        if !is_root() {
            return loopback(Some("not root: network namespaces cannot be made".into()));
        }
        clean_stale();
        match Net::isolated(n) {
            Ok(net) => net,
            Err(e) => loopback(Some(format!("network namespaces could not be made: {e}"))),
        }
    }

    fn isolated(n: usize) -> Result<Net> {
        let pid = std::process::id();
        // A /24 per run: 10.<200-249>.<x>.0, from the pid, away from docker's ranges.
        let (a, b) = (200 + (pid / 256) % 50, pid % 256);
        let bridge = format!("mrj{pid}");
        let mut net =
            Net { torn_down: false, hosts: Vec::new(), isolated: true, bridge: Some(bridge.clone()), why_not: None };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("10.{a}.{b}.1/24"), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // Hosts talk through the bridge; where br_netfilter passes bridged frames through the
        // FORWARD chain and its policy is DROP (as docker sets it), let ours through.
        run(&["iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])?;
        for i in 0..n {
            let ns = format!("mrj-{pid}-n{}", i + 1);
            let (outside, inside) = (format!("mrj{pid}h{i}"), format!("mrj{pid}g{i}"));
            let ip = format!("10.{a}.{b}.{}", 10 + i);
            run(&["ip", "netns", "add", &ns])?;
            net.hosts.push(Host { ns: Some(ns.clone()), ip: ip.clone() });
            run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            run(&["ip", "link", "set", &inside, "netns", &ns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{ip}/24"), "dev", &inside])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inside, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// A command that runs `program` on host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        match &self.hosts[i].ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Cuts every host of a group off from the hosts of the other groups (packets dropped both
    /// ways); hosts in no group keep every link.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<()> {
        if !self.isolated {
            bail!("partitions need network namespaces ({})", self.why_not.clone().unwrap_or_default());
        }
        let group_of = |h: usize| groups.iter().position(|g| g.contains(&h));
        for (i, host) in self.hosts.iter().enumerate() {
            let Some(ns) = &host.ns else { continue };
            for (j, other) in self.hosts.iter().enumerate() {
                let (gi, gj) = (group_of(i), group_of(j));
                if gi.is_some() && gj.is_some() && gi != gj {
                    run(&["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &other.ip, "-j", "DROP"])?;
                    run(&["ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &other.ip, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Cuts exactly the given (a, b) links.
    pub fn cut_links(&self, links: &[(usize, usize)]) -> Result<()> {
        if !self.isolated {
            bail!("partitions need network namespaces");
        }
        for &(a, b) in links {
            for (x, y) in [(a, b), (b, a)] {
                let (Some(ns), ip) = (&self.hosts[x].ns, &self.hosts[y].ip) else { continue };
                run(&["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", ip, "-j", "DROP"])?;
                run(&["ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) {
        for host in &self.hosts {
            if let Some(ns) = &host.ns {
                let _ = run(&["ip", "netns", "exec", ns, "iptables", "-F"]);
            }
        }
    }
}

impl Net {
    /// Removes the namespaces and the bridge (once).
    pub fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        for host in &self.hosts {
            if let Some(ns) = &host.ns {
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
        if let Some(b) = &self.bridge {
            let _ = run(&["iptables", "-D", "FORWARD", "-i", b, "-o", b, "-j", "ACCEPT"]);
            let _ = run(&["ip", "link", "del", b]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
