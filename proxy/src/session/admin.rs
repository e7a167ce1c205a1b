//! Commands about the proxy and the cluster rather than about keys: `CLUSTER`, `CONFIG`,
//! `CLIENT`, `COMMAND` and `INFO`.

use super::{err, no_admin, ok, Pending, Session};
use crate::clients::KillFilter;
use crate::cluster::{cluster_info, cluster_nodes, cluster_shards, cluster_slots, LocalHealth};
use crate::command;
use crate::resp::{self, Frame, Request};
use crate::slot::{key_slot, node_id};
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl Session {
    /// `CLIENT …` about this proxy's own client connections, as a Redis node answers about its
    /// own: a cluster client fans `CLIENT LIST` out to every node and merges.
    pub(super) fn client(&mut self, args: &[Bytes]) -> Pending {
        let Some(sub) = args.get(1) else {
            return err("ERR wrong number of arguments for 'client' command");
        };
        let sub = sub.to_ascii_lowercase();
        let arity_error =
            || err(&format!("ERR wrong number of arguments for 'client|{}' command", String::from_utf8_lossy(&sub)));
        let on_off = |v: &Bytes| match v.to_ascii_lowercase().as_slice() {
            b"on" => Some(true),
            b"off" => Some(false),
            _ => None,
        };
        match sub.as_slice() {
            b"setname" if args.len() == 3 => {
                if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return err("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.info.set_name(if args[2].is_empty() { None } else { Some(args[2].clone()) });
                ok()
            }
            b"getname" if args.len() == 2 => Pending::Ready(match self.info.name() {
                Some(n) => resp::bulk(&n),
                None => Frame::Null.to_bytes(self.proto),
            }),
            b"id" if args.len() == 2 => Pending::Ready(resp::integer(self.id as i64)),
            b"setinfo" if args.len() == 4 => {
                let value = &args[3];
                if value.iter().any(|b| *b < b'!' || *b > b'~') {
                    return err(&format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        String::from_utf8_lossy(&args[2])
                    ));
                }
                let value = String::from_utf8_lossy(&value[..value.len().min(128)]).into_owned();
                let mut text = self.info.text.lock().unwrap_or_else(|e| e.into_inner());
                match args[2].to_ascii_lowercase().as_slice() {
                    b"lib-name" => text.lib_name = value,
                    b"lib-ver" => text.lib_ver = value,
                    _ => {
                        return err(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2])));
                    }
                }
                ok()
            }
            b"info" if args.len() == 2 => Pending::Ready(self.text_reply(format!("{}\n", self.info.line()))),
            b"list" => self.client_list(&args[2..]),
            b"kill" if !self.admin => no_admin("client|kill"),
            b"kill" if args.len() == 3 => {
                // The old form: one `ip:port`, `+OK` or an error.
                let addr = String::from_utf8_lossy(&args[2]);
                match self.state.clients.all().into_iter().find(|c| c.addr == addr) {
                    Some(c) => {
                        c.kill();
                        ok()
                    }
                    None => err("ERR No such client"),
                }
            }
            b"kill" => match KillFilter::parse(&args[2..]) {
                Ok(filter) => {
                    let mut killed = 0;
                    for c in self.state.clients.all().iter().filter(|c| filter.matches(c, self.id)) {
                        c.kill();
                        killed += 1;
                    }
                    Pending::Ready(resp::integer(killed))
                }
                Err(e) => err(&e),
            },
            // The proxy never evicts clients, so either setting holds.
            b"no-evict" if args.len() == 3 => match on_off(&args[2]) {
                Some(on) => {
                    self.info.no_evict.store(on, Ordering::Relaxed);
                    ok()
                }
                None => err("ERR syntax error"),
            },
            b"trackinginfo" if args.len() == 2 => Pending::Ready(
                Frame::Map(vec![
                    (Frame::bulk_str("flags"), Frame::Set(vec![Frame::bulk_str("off")])),
                    (Frame::bulk_str("redirect"), Frame::Integer(-1)),
                    (Frame::bulk_str("prefixes"), Frame::Array(vec![])),
                ])
                .to_bytes(self.proto),
            ),
            b"getredir" if args.len() == 2 => Pending::Ready(resp::integer(-1)),
            b"setname" | b"getname" | b"id" | b"setinfo" | b"info" | b"no-evict" | b"trackinginfo" | b"getredir" => {
                arity_error()
            }
            _ => err(&format!(
                "ERR_COMMAND_NOT_SUPPORTED: 'client {}' is not supported by the moonraft proxy ({})",
                String::from_utf8_lossy(&sub).chars().take(64).collect::<String>(),
                match sub.as_slice() {
                    b"tracking" | b"caching" => "client-side caching needs invalidations from every node; not built",
                    b"pause" | b"unpause" => "pause the proxies' nodes directly",
                    b"reply" => "every command of a proxied connection gets its reply",
                    b"no-touch" => "commands share backend connections, so a per-client LRU setting cannot hold",
                    _ => "unknown subcommand",
                }
            )),
        }
    }

    /// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id …]`.
    fn client_list(&self, args: &[Bytes]) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Authentication required.");
        }
        let mut kind = None;
        let mut ids: Option<Vec<u64>> = None;
        let mut i = 0;
        while i < args.len() {
            match args[i].to_ascii_lowercase().as_slice() {
                b"type" if i + 1 < args.len() => {
                    let t = args[i + 1].to_ascii_lowercase();
                    if !matches!(t.as_slice(), b"normal" | b"master" | b"replica" | b"slave" | b"pubsub") {
                        return err(&format!("ERR Unknown client type '{}'", String::from_utf8_lossy(&args[i + 1])));
                    }
                    kind = Some(t);
                    i += 2;
                }
                b"id" if i + 1 < args.len() => {
                    let mut list = Vec::new();
                    for a in &args[i + 1..] {
                        match resp::parse_int(a).filter(|n| *n > 0) {
                            Some(n) => list.push(n as u64),
                            None => return err("ERR Invalid client ID"),
                        }
                    }
                    ids = Some(list);
                    i = args.len();
                }
                _ => return err("ERR syntax error"),
            }
        }
        let mut out = String::new();
        for c in self.state.clients.all() {
            if kind.as_deref().is_none_or(|k| c.is_type(k)) && ids.as_ref().is_none_or(|ids| ids.contains(&c.id)) {
                out.push_str(&c.line());
                out.push('\n');
            }
        }
        Pending::Ready(self.text_reply(out))
    }

    /// A text reply: a bulk string, or a verbatim string in RESP3 (as Redis answers
    /// `CLIENT LIST`, `CLUSTER NODES`, `INFO`).
    fn text_reply(&self, s: String) -> Bytes {
        if self.proto >= 3 {
            Frame::Verbatim("txt".into(), Bytes::from(s)).to_bytes(3)
        } else {
            resp::bulk(s.as_bytes())
        }
    }

    pub(super) fn cluster(&self, args: &[Bytes]) -> Pending {
        let Some(sub) = args.get(1) else {
            return err("Missing sub command");
        };
        let installed = self.state.installed.load();
        let table = &installed.table;
        let announce = &self.state.announce;
        let text = |s: String| self.text_reply(s);
        match sub.to_ascii_lowercase().as_slice() {
            b"nodes" => {
                Pending::Ready(text(cluster_nodes(table, announce, self.state.config.cluster_nodes_version == "v2")))
            }
            b"slots" => match cluster_slots(table, announce, self.readonly) {
                Ok(f) => Pending::Ready(f.to_bytes(self.proto)),
                Err(e) => err(&e),
            },
            b"shards" => {
                let (state, readonly, proto) = (self.state.clone(), self.readonly, self.proto);
                Pending::Task(Box::pin(async move {
                    let installed = state.installed.load_full();
                    let local = local_health(&state, &installed.table.nodes).await;
                    match cluster_shards(&installed.table, &state.announce, readonly, local) {
                        Ok(f) => f.to_bytes(proto),
                        Err(e) => resp::error(&e),
                    }
                }))
            }
            b"info" => Pending::Ready(text(cluster_info(table))),
            b"myid" => Pending::Ready(resp::bulk(node_id(&table.meta.name, announce).as_bytes())),
            b"keyslot" => match args.get(2) {
                Some(k) if args.len() == 3 => Pending::Ready(resp::integer(key_slot(k) as i64)),
                _ => err("Missing key"),
            },
            _ => err(&format!(
                "Unsupported sub command: CLUSTER {}",
                String::from_utf8_lossy(sub).chars().take(64).collect::<String>()
            )),
        }
    }

    /// `CONFIG GET <proxy field>` answers the proxy's own setting (undermoon's fields, as a
    /// bulk string); any other `CONFIG GET` (the Redis keys clients probe, e.g. `maxmemory*`,
    /// `cluster-require-full-coverage`) is answered by the first local node, read-only.
    pub(super) fn config(&mut self, req: &Request) -> Pending {
        let args = &req.args;
        let Some(sub) = args.get(1) else {
            return err("Missing sub command");
        };
        let cfg = &self.state.config;
        let field = args.get(2).map(|f| String::from_utf8_lossy(f).to_ascii_lowercase());
        match sub.to_ascii_lowercase().as_slice() {
            b"get" => {
                let Some(field) = field else {
                    return err("Missing sub command");
                };
                let value = match field.as_str() {
                    "address" => cfg.address.clone(),
                    "announce_address" => self.state.announce.clone(),
                    "announce_host" => {
                        self.state.announce.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_default()
                    }
                    "slowlog_len" => cfg.slowlog_len.to_string(),
                    "thread_number" => cfg.thread_number.to_string(),
                    "backend_conn_num" => cfg.backend_conn_num.to_string(),
                    "slowlog_log_slower_than" => {
                        self.state.slowlog.log_slower_than_us.load(Ordering::Relaxed).to_string()
                    }
                    "slowlog_sample_rate" => self.state.slowlog.sample_rate.load(Ordering::Relaxed).to_string(),
                    "active_redirection" => cfg.active_redirection.to_string(),
                    "max_redirections" => match cfg.max_redirections {
                        0 => "none".into(),
                        n => n.min(4).to_string(),
                    },
                    _ if args.len() == 3 && self.authenticated => return self.node_config_get(req),
                    _ => return err(&format!("config field {field} not found")),
                };
                Pending::Ready(resp::bulk(value.as_bytes()))
            }
            b"set" if !self.admin => no_admin("config|set"),
            b"set" => {
                let (Some(field), Some(value)) = (field, args.get(3)) else {
                    return err("Missing sub command");
                };
                let value = String::from_utf8_lossy(value);
                match field.as_str() {
                    "slowlog_log_slower_than" => match value.parse::<i64>() {
                        Ok(v) => {
                            self.state.slowlog.log_slower_than_us.store(v, Ordering::Relaxed);
                            ok()
                        }
                        Err(_) => err("InvalidValue"),
                    },
                    "slowlog_sample_rate" => match value.parse::<u64>() {
                        Ok(v) => {
                            self.state.slowlog.sample_rate.store(v, Ordering::Relaxed);
                            ok()
                        }
                        Err(_) => err("InvalidValue"),
                    },
                    "address" | "announce_address" | "announce_host" | "slowlog_len" | "thread_number"
                    | "backend_conn_num" | "active_redirection" | "max_redirections" => err("ReadonlyField"),
                    _ => err("FieldNotFound"),
                }
            }
            _ => err("invalid config sub-command"),
        }
    }

    /// `COMMAND` is answered by a local node; the plain form is filtered to what the proxy
    /// supports, so client libraries learn the real command set.
    pub(super) fn command(&self, req: Request) -> Pending {
        if !self.authenticated {
            return err("NOAUTH Password not given by AUTH command");
        }
        let pool = {
            let installed = self.state.installed.load();
            if !installed.table.has_cluster() || installed.table.nodes.is_empty() {
                return err("ERR_CLUSTER_NOT_FOUND");
            }
            installed.pool(0, self.proto, &self.state.registry)
        };
        let Some(pool) = pool else {
            return err("ERR_CLUSTER_NOT_FOUND");
        };
        let proto = self.proto;
        let filter = req.args.len() == 1;
        Pending::Task(Box::pin(async move {
            let reply = match pool.call(&req).await {
                Ok(r) => r,
                Err(e) => return resp::error(&e.to_string()),
            };
            if !filter {
                return reply;
            }
            match Frame::parse(&reply) {
                Ok(Some((Frame::Array(items), _))) => {
                    let kept = items
                        .into_iter()
                        .filter(|c| match c {
                            Frame::Array(fields) => fields
                                .first()
                                .and_then(Frame::as_bytes)
                                .map(|n| command::is_supported_name(&String::from_utf8_lossy(n).to_ascii_lowercase()))
                                .unwrap_or(false),
                            _ => false,
                        })
                        .collect();
                    Frame::Array(kept).to_bytes(proto)
                }
                _ => resp::error(&format!("invalid command reply: {}", String::from_utf8_lossy(&reply).trim_end())),
            }
        }))
    }

    pub(super) fn info(&self) -> String {
        let s = &self.state;
        let version = crate::build_version();
        let installed = s.installed.load();
        format!(
            "version:{version}\r\n\r\n# Stats\r\n\
             total_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n\
             # Server\r\nredis_version:{}\r\nmoonraft_version:{version}\r\nredis_mode:cluster\r\n\r\n\
             # Clients\r\nconnected_clients:{}\r\n\r\n\
             # Cluster\r\ncluster_enabled:1\r\ncluster_name:{}\r\nepoch:{}\r\n",
            s.total_connections.load(Ordering::Relaxed),
            s.total_commands.load(Ordering::Relaxed),
            crate::state::redis_version(s),
            s.connected_clients.load(Ordering::Relaxed),
            installed.table.meta.name,
            installed.table.epoch,
        )
    }

    /// `CONFIG GET <pattern>` of the first local node, keeping only `READABLE_NODE_CONFIG`
    /// (never `requirepass`, `masterauth` or anything else that a `*` would reveal).
    fn node_config_get(&mut self, req: &Request) -> Pending {
        self.ask_nodes(req, super::node_scoped::Nodes::First, self.proto, |mut replies, proto| {
            let pairs: Vec<(Frame, Frame)> = match replies.pop() {
                Some(Ok(Frame::Array(items))) => {
                    let mut it = items.into_iter();
                    std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
                }
                Some(Ok(Frame::Map(pairs))) => pairs,
                Some(Ok(other)) => return resp::error(&format!("ERR unexpected CONFIG GET reply {other:?}")),
                Some(Err(e)) => return resp::error(&e),
                None => return resp::error("ERR_CLUSTER_NOT_FOUND"),
            };
            let kept: Vec<(Frame, Frame)> = pairs
                .into_iter()
                .filter(|(k, _)| k.as_bytes().is_some_and(|k| READABLE_NODE_CONFIG.iter().any(|r| r.as_bytes() == k)))
                .collect();
            if proto >= 3 {
                Frame::Map(kept).to_bytes(proto)
            } else {
                Frame::Array(kept.into_iter().flat_map(|(k, v)| [k, v]).collect()).to_bytes(proto)
            }
        })
    }
}

/// Redis settings a client may read through the proxy (what client libraries and tools probe).
const READABLE_NODE_CONFIG: &[&str] = &[
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "maxmemory-clients",
    "cluster-require-full-coverage",
    "cluster-allow-reads-when-down",
    "databases",
    "save",
    "appendonly",
    "appendfsync",
    "timeout",
    "tcp-keepalive",
    "notify-keyspace-events",
    "lua-time-limit",
    "busy-reply-threshold",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "hz",
    "maxclients",
    "lfu-log-factor",
    "lfu-decay-time",
    "slowlog-log-slower-than",
    "slowlog-max-len",
    "latency-tracking",
];

/// Asks each of this proxy's Redis nodes for `INFO replication` (1 s each at most) for the
/// proxy's own `CLUSTER SHARDS` entry.
async fn local_health(state: &crate::state::ProxyState, nodes: &[String]) -> LocalHealth {
    let req = Request::from_strs(&["INFO", "replication"]);
    let mut health = LocalHealth { offset: 0, online: true };
    for node in nodes {
        let pool = state.registry.pool(node, 2);
        let reply = tokio::time::timeout(std::time::Duration::from_secs(1), pool.call(&req)).await;
        let offset = match &reply {
            Ok(Ok(info)) if info.first() == Some(&b'$') => String::from_utf8_lossy(info)
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("master_repl_offset:").and_then(|v| v.parse::<i64>().ok())),
            _ => None,
        };
        match offset {
            Some(o) => health.offset = health.offset.max(o),
            None => health.online = false,
        }
    }
    health
}
