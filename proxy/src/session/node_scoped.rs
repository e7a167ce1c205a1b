//! Commands a Redis Cluster node answers for itself, which cluster clients send to every
//! primary and merge: `SCAN`, `KEYS`, `DBSIZE`, `RANDOMKEY`, `FLUSHDB`/`FLUSHALL`, `SCRIPT`,
//! `FUNCTION`, `TIME`, `LASTSAVE`, `MEMORY USAGE`, and `INFO`'s Redis sections.
//!
//! The proxy is one "node" to its clients but fronts several master nodes, so each of these is
//! asked of every local master node and the answers are merged as one node would answer:
//! counts added, key lists joined, a `SCAN` cursor that walks the nodes one after the other.

use super::{err, Pending, Session};
use crate::command::{Blocking, CommandSpec, KeySpec};
use crate::resp::{self, Frame, Request};
use bytes::Bytes;
use std::sync::atomic::Ordering;

/// `SCAN` cursors carry the local node index in their low bits and the node's own cursor in
/// the rest. Ten bits: far more nodes than a proxy fronts (two).
const NODE_BITS: u32 = 10;

/// `MEMORY USAGE <key> [SAMPLES n]`: routed by its key like a data command.
pub(super) static MEMORY_USAGE: CommandSpec = CommandSpec {
    name: "memory",
    arity: -3,
    keys: KeySpec::Range { first: 2, last: 2, step: 1 },
    blocking: Blocking::No,
};

/// `MEMORY USAGE …` (the one `MEMORY` subcommand about a key).
pub(super) fn is_memory_usage(name: &str, args: &[Bytes]) -> bool {
    name == "memory" && args.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"usage"))
}

/// Encodes node `node` at its cursor `cursor` as the client's cursor.
pub(super) fn encode_cursor(node: usize, cursor: u64) -> Option<u64> {
    let c = cursor.checked_mul(1 << NODE_BITS)?;
    Some(c | node as u64)
}

/// The node index and that node's cursor of a client's cursor.
pub(super) fn decode_cursor(cursor: u64) -> (usize, u64) {
    ((cursor & ((1 << NODE_BITS) - 1)) as usize, cursor >> NODE_BITS)
}

/// Which local master nodes a node-scoped command is asked of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nodes {
    All,
    First,
}

/// Replies of every local master node (in node order), each `Err` with its error text.
type NodeReplies = Vec<Result<Frame, String>>;

fn parse_reply(reply: Result<Bytes, String>) -> Result<Frame, String> {
    let bytes = reply?;
    match Frame::parse(&bytes) {
        Ok(Some((Frame::Error(e), _))) => Err(e),
        Ok(Some((f, _))) => Ok(f),
        _ => Err(format!("ERR unreadable reply: {}", String::from_utf8_lossy(&bytes).trim_end())),
    }
}

fn first_error(replies: &NodeReplies) -> Option<Bytes> {
    replies.iter().find_map(|r| r.as_ref().err()).map(|e| resp::error(e))
}

impl Session {
    /// Handles `name` if it is a node-scoped command; `None` for any other command.
    pub(super) fn node_scoped(&mut self, name: &str, req: &Request) -> Option<Pending> {
        let args = &req.args;
        let sub = args.get(1).map(|a| a.to_ascii_lowercase());
        let sub = sub.as_deref();
        let reply = match (name, sub) {
            ("dbsize", _) if args.len() == 1 => self.fan_out(req, sum_integers),
            ("keys", _) if args.len() == 2 => self.fan_out(req, join_arrays),
            ("randomkey", _) if args.len() == 1 => self.fan_out(req, |r, proto| {
                let key = r.iter().find_map(|x| x.as_ref().ok().filter(|f| !matches!(f, Frame::Null)));
                key.cloned().unwrap_or(Frame::Null).to_bytes(proto)
            }),
            ("flushdb" | "flushall", _) if args.len() <= 2 => self.fan_out(req, all_ok),
            ("script", Some(b"load")) if args.len() == 3 => self.fan_out(req, first_of_all),
            ("script", Some(b"flush")) if args.len() <= 3 => self.fan_out(req, all_ok),
            ("script", Some(b"exists")) if args.len() >= 3 => self.fan_out(req, all_exist),
            ("function", Some(b"load" | b"delete" | b"flush" | b"restore")) => self.fan_out(req, first_of_all),
            ("function", Some(b"list" | b"dump" | b"stats")) => self.on_first_node(req),
            ("time" | "lastsave", _) if args.len() == 1 => self.on_first_node(req),
            ("scan", _) if args.len() >= 2 => self.scan(req),
            ("slowlog", _) => self.slowlog(args),
            ("dbsize" | "keys" | "randomkey" | "flushdb" | "flushall" | "time" | "lastsave" | "scan", _) => {
                err(&format!("ERR wrong number of arguments for '{name}' command"))
            }
            _ => return None,
        };
        Some(reply)
    }

    /// Sends `req` to every local master node and merges the replies with `merge`.
    fn fan_out<F>(&mut self, req: &Request, merge: F) -> Pending
    where
        F: FnOnce(NodeReplies, u8) -> Bytes + Send + 'static,
    {
        self.ask_nodes(req, Nodes::All, self.proto, merge)
    }

    /// `req` as the first local master node answers it.
    pub(super) fn on_first_node(&mut self, req: &Request) -> Pending {
        self.ask_nodes(req, Nodes::First, self.proto, |mut r, proto| match r.pop() {
            Some(Ok(f)) => f.to_bytes(proto),
            Some(Err(e)) => resp::error(&e),
            None => resp::error("ERR_CLUSTER_NOT_FOUND"),
        })
    }

    /// Sends `req` to `nodes` over their `proto` connections (all at once, after the client's
    /// earlier replies) and merges the replies, in node order, with `merge`.
    pub(super) fn ask_nodes<F>(&mut self, req: &Request, nodes: Nodes, proto: u8, merge: F) -> Pending
    where
        F: FnOnce(NodeReplies, u8) -> Bytes + Send + 'static,
    {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let installed = self.state.installed.load();
        let count = match nodes {
            Nodes::All => installed.table.nodes.len(),
            Nodes::First => installed.table.nodes.len().min(1),
        };
        let pools: Vec<_> = (0..count).filter_map(|i| installed.pool(i, proto, &self.state.registry)).collect();
        if pools.is_empty() {
            return err("ERR_CLUSTER_NOT_FOUND");
        }
        let (raw, pin, client_proto) = (req.raw.clone(), self.id as usize, self.proto);
        self.after_earlier_replies(async move {
            let mut receivers = Vec::with_capacity(pools.len());
            for pool in &pools {
                receivers.push(pool.send(raw.clone(), pin).await);
            }
            let mut replies = Vec::with_capacity(receivers.len());
            for rx in receivers {
                let reply = match rx.await {
                    Ok(Ok(b)) => Ok(b),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("ERR backend connection broke before the reply arrived".to_owned()),
                };
                replies.push(parse_reply(reply));
            }
            merge(replies, client_proto)
        })
    }

    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]` over every local master node in turn.
    fn scan(&mut self, req: &Request) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let Some(cursor) = std::str::from_utf8(&req.args[1]).ok().and_then(|c| c.parse::<u64>().ok()) else {
            return err("ERR invalid cursor");
        };
        let (node, node_cursor) = decode_cursor(cursor);
        let (pool, nodes) = {
            let installed = self.state.installed.load();
            (installed.pool(node, self.proto, &self.state.registry), installed.table.nodes.len())
        };
        if nodes == 0 {
            return err("ERR_CLUSTER_NOT_FOUND");
        }
        let Some(pool) = pool else {
            // A cursor for a node this proxy no longer has: the scan is over.
            return Pending::Ready(Frame::Array(vec![Frame::bulk_str("0"), Frame::Array(vec![])]).to_bytes(self.proto));
        };
        let mut args = req.args.clone();
        args[1] = Bytes::from(node_cursor.to_string());
        let node_req = Request::from_args(args);
        let proto = self.proto;
        self.after_earlier_replies(async move {
            let reply = parse_reply(pool.call(&node_req).await.map_err(|e| e.to_string()));
            let (next, keys) = match reply {
                Ok(Frame::Array(mut parts)) if parts.len() == 2 => {
                    let keys = parts.pop().unwrap_or(Frame::Array(vec![]));
                    let next = parts.pop().and_then(|c| c.as_bytes().map(<[u8]>::to_vec)).unwrap_or_default();
                    (String::from_utf8_lossy(&next).parse::<u64>().ok(), keys)
                }
                Ok(other) => return resp::error(&format!("ERR unexpected SCAN reply {other:?}")),
                Err(e) => return resp::error(&e),
            };
            let client_cursor = match next {
                Some(0) if node + 1 < nodes => encode_cursor(node + 1, 0),
                Some(0) => Some(0),
                Some(c) => encode_cursor(node, c),
                None => None,
            };
            let Some(client_cursor) = client_cursor else {
                return resp::error("ERR the node's SCAN cursor does not fit the proxy's cursor");
            };
            Frame::Array(vec![Frame::Bulk(Bytes::from(client_cursor.to_string())), keys]).to_bytes(proto)
        })
    }

    /// `INFO`: the Redis sections as the first local node answers them, with the proxy's own
    /// clients and counters, the keyspace of every local node added up, and the proxy's
    /// section (version, cluster, epoch) first.
    pub(super) fn info_command(&mut self, req: &Request) -> Pending {
        let own = self.info();
        if !self.authenticated || !self.state.installed.load().table.has_cluster() {
            return Pending::Ready(resp::bulk(own.as_bytes()));
        }
        let (connected, connections, commands) = (
            self.state.connected_clients.load(Ordering::Relaxed),
            self.state.total_connections.load(Ordering::Relaxed),
            self.state.total_commands.load(Ordering::Relaxed),
        );
        // From RESP2 connections: INFO is a bulk string in both protocols.
        self.ask_nodes(req, Nodes::All, 2, move |replies, _| {
            let texts: Vec<String> = replies
                .into_iter()
                .filter_map(|r| match r {
                    Ok(Frame::Bulk(t)) => Some(String::from_utf8_lossy(&t).into_owned()),
                    _ => None,
                })
                .collect();
            resp::bulk(merge_info(&own, &texts, connected, connections, commands).as_bytes())
        })
    }
}

/// The proxy's own `INFO` text followed by the first node's sections, with the counters the
/// proxy knows better (its clients, connections, commands) replaced and `# Keyspace` summed
/// over all nodes.
fn merge_info(own: &str, nodes: &[String], connected: usize, connections: u64, commands: u64) -> String {
    let Some(first) = nodes.first() else { return own.to_owned() };
    let mut out = String::with_capacity(own.len() + first.len());
    out.push_str(&own_fields_not_in(own, first));
    out.push_str("\r\n");
    let mut in_keyspace = false;
    for line in first.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            in_keyspace = line.eq_ignore_ascii_case("# keyspace");
            out.push_str(line);
            out.push_str("\r\n");
            if in_keyspace {
                for (db, keys, expires) in sum_keyspace(nodes) {
                    out.push_str(&format!("{db}:keys={keys},expires={expires},avg_ttl=0\r\n"));
                }
            }
            continue;
        }
        if in_keyspace {
            continue;
        }
        let (key, _) = line.split_once(':').unwrap_or((line, ""));
        let replaced = match key {
            "connected_clients" => Some(connected.to_string()),
            "total_connections_received" => Some(connections.to_string()),
            "total_commands_processed" => Some(commands.to_string()),
            "redis_mode" => Some("cluster".to_owned()),
            "cluster_enabled" => Some("1".to_owned()),
            // The proxy's own section says these already.
            "tcp_port" | "process_id" | "run_id" | "config_file" | "executable" => None,
            _ => {
                out.push_str(line);
                out.push_str("\r\n");
                continue;
            }
        };
        if let Some(v) = replaced {
            out.push_str(&format!("{key}:{v}\r\n"));
        }
    }
    out
}

/// The proxy's own `INFO` lines whose field the node's text does not have (the node's real
/// `redis_version`, counters the proxy replaces …, are said once, in the node's sections), and
/// the section headers still holding a field.
fn own_fields_not_in(own: &str, node: &str) -> String {
    let field = |line: &str| line.split_once(':').map(|(k, _)| k.to_owned());
    let node_fields: std::collections::HashSet<String> = node.lines().filter_map(field).collect();
    let mut out = String::new();
    let mut header: Option<&str> = None;
    for line in own.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with('#') {
            header = Some(line);
            continue;
        }
        match field(line) {
            Some(f) if !node_fields.contains(&f) => {
                if let Some(h) = header.take() {
                    out.push_str("\r\n");
                    out.push_str(h);
                    out.push_str("\r\n");
                }
                out.push_str(line);
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out
}

/// `dbN:keys=…,expires=…` lines of every node, added up per database.
fn sum_keyspace(nodes: &[String]) -> Vec<(String, u64, u64)> {
    let mut dbs: Vec<(String, u64, u64)> = Vec::new();
    for text in nodes {
        for line in text.lines() {
            let Some((db, fields)) = line.trim_end_matches('\r').split_once(':') else { continue };
            if !db.starts_with("db") || db[2..].parse::<u32>().is_err() {
                continue;
            }
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match dbs.iter_mut().find(|(d, _, _)| d == db) {
                Some(e) => {
                    e.1 += field("keys");
                    e.2 += field("expires");
                }
                None => dbs.push((db.to_owned(), field("keys"), field("expires"))),
            }
        }
    }
    dbs
}

fn sum_integers(replies: NodeReplies, _proto: u8) -> Bytes {
    if let Some(e) = first_error(&replies) {
        return e;
    }
    let total: i64 = replies
        .iter()
        .filter_map(|r| match r {
            Ok(Frame::Integer(n)) => Some(*n),
            _ => None,
        })
        .sum();
    resp::integer(total)
}

fn join_arrays(replies: NodeReplies, proto: u8) -> Bytes {
    if let Some(e) = first_error(&replies) {
        return e;
    }
    let mut all = Vec::new();
    for r in replies.into_iter().flatten() {
        if let Frame::Array(items) | Frame::Set(items) = r {
            all.extend(items);
        }
    }
    Frame::Array(all).to_bytes(proto)
}

fn all_ok(replies: NodeReplies, _proto: u8) -> Bytes {
    first_error(&replies).unwrap_or_else(|| Bytes::from_static(resp::OK))
}

/// Every node must succeed; the answer is the first node's (e.g. the SHA of `SCRIPT LOAD`).
fn first_of_all(replies: NodeReplies, proto: u8) -> Bytes {
    if let Some(e) = first_error(&replies) {
        return e;
    }
    match replies.into_iter().next() {
        Some(Ok(f)) => f.to_bytes(proto),
        _ => resp::error("ERR_CLUSTER_NOT_FOUND"),
    }
}

/// `SCRIPT EXISTS`: a script exists when every node has it.
fn all_exist(replies: NodeReplies, proto: u8) -> Bytes {
    if let Some(e) = first_error(&replies) {
        return e;
    }
    let mut result: Option<Vec<i64>> = None;
    for r in replies.into_iter().flatten() {
        let Frame::Array(items) = r else { continue };
        let flags: Vec<i64> = items.iter().map(|f| matches!(f, Frame::Integer(1)) as i64).collect();
        result = Some(match result {
            None => flags,
            Some(prev) => prev.iter().zip(flags).map(|(a, b)| a & b).collect(),
        });
    }
    Frame::Array(result.unwrap_or_default().into_iter().map(Frame::Integer).collect()).to_bytes(proto)
}

/// A channel nobody subscribes to: publishing on it is the cheapest write that Redis
/// propagates to replicas, and so moves a connection's replication offset (see `wait`).
const WAIT_MARK: &[u8] = b"__moonraft:wait";

impl Session {
    /// `WAIT numreplicas timeout`: how many replicas of the node of this client's last write
    /// have everything up to it. The client's writes travel on shared connections, so Redis
    /// cannot tell which offset is the client's; the proxy publishes on its own connection to
    /// that node after the client's earlier replies (which moves that connection's offset past
    /// every write the client has seen acknowledged) and waits there.
    pub(super) fn wait(&mut self, args: &[Bytes]) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        if args.len() != 3 {
            return err("ERR wrong number of arguments for 'wait' command");
        }
        let (Some(replicas), Some(timeout)) = (resp::parse_int(&args[1]), resp::parse_int(&args[2])) else {
            return err("ERR value is not an integer or out of range");
        };
        if timeout < 0 {
            return err("ERR timeout is negative");
        }
        let node = match &self.last_write {
            super::LastWrite::Node(node) => node.clone(),
            super::LastWrite::Forwarded => {
                return err("ERR WAIT after a write this proxy forwarded to another proxy is not supported: send the write and WAIT to the proxy serving its slot (a cluster client does)");
            }
            // No write yet: every replica has all of this client's writes, as Redis says.
            super::LastWrite::None => match self.state.installed.load().table.nodes.first() {
                Some(node) => node.clone(),
                None => return Pending::Ready(resp::integer(0)),
            },
        };
        let publish =
            Request::from_args(vec![Bytes::from_static(b"PUBLISH"), Bytes::from_static(WAIT_MARK), Bytes::new()]);
        let wait = Request::from_args(vec![
            Bytes::from_static(b"WAIT"),
            Bytes::from(replicas.to_string()),
            Bytes::from(timeout.to_string()),
        ]);
        let raw = [publish.raw, wait.raw].concat();
        let exchange = self.dedicated_exchange(node.clone(), super::Reuse::OrConnect);
        self.after_earlier_replies(async move {
            match exchange.run(&raw, 2).await {
                Ok(mut replies) => replies.pop().unwrap_or_default(),
                Err(e) => resp::error(&e.message(&node)),
            }
        })
    }
}

impl Session {
    /// `SLOWLOG GET [count] | LEN | RESET | HELP`: the proxy's own slow log in Redis's format
    /// (id, unix time, microseconds, arguments, client address, client name). Only sampled
    /// commands are timed (`slowlog_sample_rate`); the time is the whole proxy round trip.
    fn slowlog(&mut self, args: &[Bytes]) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let sub = args.get(1).map(|a| a.to_ascii_lowercase()).unwrap_or_default();
        let log = &self.state.slowlog;
        match (sub.as_slice(), args.len()) {
            (b"get", 2 | 3) => {
                let count = match args.get(2).map(|c| resp::parse_int(c)) {
                    None => Some(10),
                    Some(Some(-1)) => None,
                    Some(Some(n)) if n >= 0 => Some(n as usize),
                    Some(_) => return err("ERR count should be greater than or equal to -1"),
                };
                let entries = log
                    .get(count)
                    .into_iter()
                    .map(|r| {
                        let unix = r.created.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
                        Frame::Array(vec![
                            Frame::Integer(r.id as i64),
                            Frame::Integer(unix as i64),
                            Frame::Integer(r.wait_done.as_micros().min(i64::MAX as u128) as i64),
                            Frame::Array(r.args.into_iter().map(Frame::Bulk).collect()),
                            Frame::Bulk(Bytes::from(r.client_addr)),
                            Frame::Bulk(Bytes::from(r.client_name)),
                        ])
                    })
                    .collect();
                Pending::Ready(Frame::Array(entries).to_bytes(self.proto))
            }
            (b"len", 2) => Pending::Ready(resp::integer(log.len() as i64)),
            (b"reset", 2) if !self.admin => super::no_admin("slowlog|reset"),
            (b"reset", 2) => {
                log.reset();
                super::ok()
            }
            (b"help", 2) => Pending::Ready(
                Frame::Array(
                    [
                        "SLOWLOG <subcommand> [<arg> ...]. Subcommands are:",
                        "GET [<count>]",
                        "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                        "    Entries are made of: id, timestamp, time in microseconds, arguments array,",
                        "    client IP and port, client name.",
                        "    Only one command in slowlog_sample_rate is timed by the proxy.",
                        "LEN",
                        "    Return the length of the slowlog.",
                        "RESET",
                        "    Reset the slowlog.",
                    ]
                    .iter()
                    .map(|l| Frame::Simple((*l).into()))
                    .collect(),
                )
                .to_bytes(self.proto),
            ),
            (b"get" | b"len" | b"reset" | b"help", _) | (_, 1) => {
                err(&format!("ERR wrong number of arguments for 'slowlog|{}' command", String::from_utf8_lossy(&sub)))
            }
            _ => err(&format!(
                "ERR unknown subcommand '{}'. Try SLOWLOG HELP.",
                String::from_utf8_lossy(&sub).chars().take(64).collect::<String>()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_walk_the_nodes_in_turn() {
        assert_eq!(decode_cursor(0), (0, 0));
        let c = encode_cursor(1, 12345).unwrap();
        assert_eq!(decode_cursor(c), (1, 12345));
        assert_eq!(encode_cursor(1, 0), Some(1));
        assert_eq!(decode_cursor(1), (1, 0));
        assert!(encode_cursor(0, u64::MAX).is_none());
    }

    #[test]
    fn info_keeps_node_sections_and_adds_up_the_keyspace() {
        let a = "# Server\r\nredis_version:7.0.15\r\ntcp_port:7001\r\n# Clients\r\nconnected_clients:40\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=10\r\n".to_owned();
        let b = "# Keyspace\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n".to_owned();
        let own = "version:x\r\n\r\n# Server\r\nredis_version:7.0.0\r\nmoonraft_version:x\r\n\r\n# Clients\r\nconnected_clients:2\r\n";
        let merged = merge_info(own, &[a, b], 2, 9, 100);
        assert!(merged.starts_with("version:x"));
        assert!(merged.contains("redis_version:7.0.15\r\n"));
        assert!(merged.contains("moonraft_version:x\r\n"));
        assert_eq!(merged.matches("redis_version:").count(), 1, "{merged}");
        assert_eq!(merged.matches("connected_clients:").count(), 1, "{merged}");
        assert!(merged.contains("connected_clients:2\r\n"));
        assert!(!merged.contains("tcp_port"));
        assert!(merged.contains("db0:keys=7,expires=1,avg_ttl=0\r\n"), "{merged}");
    }
}
