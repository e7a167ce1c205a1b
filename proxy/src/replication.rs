//! Replication control (`UMCTL SETREPL`, `docs/protocol.md#setrepl`): the proxy keeps its Redis
//! nodes in the roles the coordinator asked for by re-sending `REPLICAOF` periodically.

use crate::backend::{connect, read_reply};
use crate::cluster::Flags;
use crate::resp::{parse_u64, Request};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplEntry {
    pub role: Role,
    pub cluster: String,
    pub node: String,
    /// (peer node, peer proxy): replicas of a master, or the master of a replica.
    pub peers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRepl {
    pub epoch: u64,
    pub flags: Flags,
    pub entries: Vec<ReplEntry>,
}

impl SetRepl {
    /// Parses the arguments after `UMCTL SETREPL`; `None` → `-Invalid arguments`.
    pub fn parse(args: &[Bytes]) -> Option<SetRepl> {
        let s = |b: &Bytes| std::str::from_utf8(b).ok().map(str::to_owned);
        let epoch = parse_u64(args.first()?)?;
        let flags = Flags::parse(args.get(1)?);
        let mut entries = Vec::new();
        let mut i = 2;
        while i < args.len() {
            let role = if args[i].eq_ignore_ascii_case(b"master") {
                Role::Master
            } else if args[i].eq_ignore_ascii_case(b"replica") {
                Role::Replica
            } else {
                return None;
            };
            let cluster = s(args.get(i + 1)?)?;
            let node = s(args.get(i + 2)?)?;
            let count = parse_u64(args.get(i + 3)?)? as usize;
            if count > args.len() {
                return None;
            }
            i += 4;
            let mut peers = Vec::with_capacity(count);
            for _ in 0..count {
                peers.push((s(args.get(i)?)?, s(args.get(i + 1)?)?));
                i += 2;
            }
            if role == Role::Replica && peers.is_empty() {
                return None;
            }
            crate::config::check_address(&node).ok()?;
            entries.push(ReplEntry { role, cluster, node, peers });
        }
        Some(SetRepl { epoch, flags, entries })
    }
}

/// Running replicators, one per (cluster, node).
#[derive(Default)]
pub struct Replication {
    pub epoch: u64,
    running: HashMap<(String, String), (ReplEntry, JoinHandle<()>)>,
}

impl Drop for Replication {
    fn drop(&mut self) {
        for (_, (_, h)) in self.running.drain() {
            h.abort();
        }
    }
}

/// How a replicator logs in to its node, and what its node needs to log in to its master.
/// (No `Debug`: it holds passwords.)
#[derive(Clone, Default)]
pub struct NodeLogin {
    /// Encoded `AUTH`, sent first on the connection.
    pub auth: Option<Bytes>,
    /// `CONFIG SET masteruser/masterauth …`, sent once per connection before `REPLICAOF`, so a
    /// replica can sync from a master with `requirepass`.
    pub setup: Vec<Request>,
}

impl NodeLogin {
    pub fn of(config: &crate::config::ProxyConfig, auth: Option<Bytes>) -> NodeLogin {
        let mut setup = Vec::new();
        if let Some(p) = &config.backend_password {
            if let Some(u) = &config.backend_user {
                setup.push(Request::from_strs(&["CONFIG", "SET", "masteruser", u]));
            }
            setup.push(Request::from_strs(&["CONFIG", "SET", "masterauth", p]));
        }
        NodeLogin { auth, setup }
    }
}

impl Replication {
    /// Installs new replication metadata: unchanged replicators keep running, new ones start,
    /// missing ones stop.
    pub fn apply(&mut self, cmd: SetRepl, interval: Duration, login: NodeLogin) {
        self.epoch = cmd.epoch;
        let mut next: HashMap<(String, String), (ReplEntry, JoinHandle<()>)> = HashMap::new();
        for entry in cmd.entries {
            let key = (entry.cluster.clone(), entry.node.clone());
            match self.running.remove(&key) {
                Some((old, handle)) if old == entry => {
                    next.insert(key, (old, handle));
                }
                previous => {
                    if let Some((_, h)) = previous {
                        h.abort();
                    }
                    let handle = tokio::spawn(run_replicator(entry.clone(), interval, login.clone()));
                    next.insert(key, (entry, handle));
                }
            }
        }
        for (_, (_, h)) in self.running.drain() {
            h.abort();
        }
        self.running = next;
    }

    pub fn entries(&self) -> Vec<ReplEntry> {
        let mut v: Vec<ReplEntry> = self.running.values().map(|(e, _)| e.clone()).collect();
        v.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
        v
    }

    /// `UMCTL READY`'s replication half: replicators exist and none is a master.
    pub fn only_replicas(&self) -> bool {
        !self.running.is_empty() && self.running.values().all(|(e, _)| e.role == Role::Replica)
    }
}

/// Resolves the master's address to `ip port` for REPLICAOF (Redis wants an address it can
/// connect to; names are resolved here because undermoon did the same).
async fn replicaof_args(master: &str) -> Result<(String, String), String> {
    let (host, port) = master.rsplit_once(':').ok_or_else(|| format!("invalid master address {master}"))?;
    let mut addrs = tokio::net::lookup_host(master).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let ip = addrs.next().ok_or_else(|| format!("cannot resolve {host}"))?.ip();
    Ok((ip.to_string(), port.to_owned()))
}

async fn assert_role(
    entry: &ReplEntry,
    conn: &mut Option<crate::tls::Stream>,
    login: &NodeLogin,
) -> Result<(), String> {
    let req = match entry.role {
        Role::Master => Request::from_strs(&["REPLICAOF", "NO", "ONE"]),
        Role::Replica => {
            let (ip, port) = replicaof_args(&entry.peers[0].0).await?;
            Request::from_strs(&["REPLICAOF", &ip, &port])
        }
    };
    if conn.is_none() {
        let mut stream = connect(&entry.node, 2, Duration::from_secs(1), 1 << 20, login.auth.as_ref(), None)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        for cmd in &login.setup {
            let run = async {
                use tokio::io::AsyncWriteExt;
                stream.write_all(&cmd.raw).await?;
                read_reply(&mut stream, &mut BytesMut::new(), 1 << 20).await
            };
            match tokio::time::timeout(Duration::from_secs(2), run).await {
                Ok(Ok(reply)) if reply.first() == Some(&b'+') => {}
                Ok(Ok(reply)) => {
                    return Err(format!("CONFIG SET masterauth: {}", String::from_utf8_lossy(&reply).trim_end()))
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("CONFIG SET masterauth timed out".into()),
            }
        }
        *conn = Some(stream);
    }
    let Some(stream) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let result = async {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&req.raw).await?;
        read_reply(stream, &mut BytesMut::new(), 1 << 20).await
    };
    match tokio::time::timeout(Duration::from_secs(2), result).await {
        Ok(Ok(reply)) if reply.first() == Some(&b'+') => Ok(()),
        Ok(Ok(reply)) => Err(String::from_utf8_lossy(&reply).trim_end().to_owned()),
        Ok(Err(e)) => {
            *conn = None;
            Err(e.to_string())
        }
        Err(_) => {
            *conn = None;
            Err("timed out".into())
        }
    }
}

async fn run_replicator(entry: ReplEntry, interval: Duration, login: NodeLogin) {
    let mut conn = None;
    let mut last_ok = None;
    loop {
        let r = assert_role(&entry, &mut conn, &login).await;
        match (&r, &last_ok) {
            (Ok(()), Some(true)) => {}
            (Ok(()), _) => {
                info!(node = %entry.node, cluster = %entry.cluster, role = ?entry.role, "replication role set")
            }
            (Err(e), _) => {
                warn!(node = %entry.node, cluster = %entry.cluster, role = ?entry.role, "cannot set replication role: {e}")
            }
        }
        last_ok = Some(r.is_ok());
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Bytes> {
        s.split_whitespace().map(|t| Bytes::copy_from_slice(if t == "\"\"" { b"" } else { t.as_bytes() })).collect()
    }

    #[test]
    fn parses_spec_example() {
        let r = SetRepl::parse(&toks("7 NOFLAG master mycluster server_proxy5:7009 1 server_proxy6:7012 server_proxy6:6006 replica mycluster server_proxy5:7010 1 server_proxy6:7011 server_proxy6:6006")).unwrap();
        assert_eq!(r.epoch, 7);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[1].role, Role::Replica);
        assert_eq!(r.entries[1].peers[0], ("server_proxy6:7011".into(), "server_proxy6:6006".into()));
        let free = SetRepl::parse(&toks("3 NOFLAG master \"\" n:1 0")).unwrap();
        assert_eq!(free.entries[0].cluster, "");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(SetRepl::parse(&toks("x NOFLAG")).is_none());
        assert!(SetRepl::parse(&toks("1")).is_none());
        assert!(SetRepl::parse(&toks("1 NOFLAG boss c n:1 0")).is_none());
        assert!(SetRepl::parse(&toks("1 NOFLAG master c n:1 2 a:1 b:1")).is_none());
        assert!(SetRepl::parse(&toks("1 NOFLAG replica c n:1 0")).is_none());
        assert!(SetRepl::parse(&toks("1 NOFLAG master c nonode 0")).is_none());
        assert!(SetRepl::parse(&toks("1 NOFLAG master c n:1 99999999999")).is_none());
    }
}
