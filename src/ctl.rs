//! `moonraft ctl`: the admin CLI, over the brokers' gRPC services (`BrokerApi`, `RaftAdmin`).
//! Tables for people, `--json` for scripts; an API error prints its code and a hint and exits 1,
//! a usage or connection problem exits 2.

use crate::auth::{BearerToken, Secret};
use anyhow::{anyhow, bail, Context, Result};
use moonraft_meta::Store;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proto::broker::raft_admin_client::RaftAdminClient;
use serde_json::{json, Value};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const USAGE: &str = "moonraft ctl — administer a moonraft broker group over gRPC

USAGE:
    moonraft ctl [--broker ADDR[,ADDR...]] [--json] <COMMAND> [ARGS]

    --broker   brokers' gRPC addresses (grpc_address), tried in order, or their
               HTTP /api/v3 addresses (the gRPC ones are learnt from them)
               (default: $MOONRAFT_BROKER, else 127.0.0.1:7800)
    --json     print JSON instead of tables
    --token    the brokers' admin_token, or read_token for reads only
               (default: $MOONRAFT_TOKEN; --token-file FILE reads it from a file)
    --tls-ca   CA (PEM) to verify brokers that serve TLS (default: $MOONRAFT_TLS_CA)

COMMANDS:
    clusters                             list clusters
    cluster show NAME                    a cluster's nodes, roles and slots
    cluster create NAME NODE_NUMBER      create a cluster (NODE_NUMBER: a multiple of 4)
    cluster delete NAME                  delete a cluster
    cluster scale NAME NODE_NUMBER       resize: add nodes and migrate, or migrate and remove
    cluster add-nodes NAME NODE_NUMBER   add NODE_NUMBER nodes (no slots yet)
    cluster expand NAME                  move slots onto nodes without slots
    cluster shrink NAME NODE_NUMBER      move slots off the last nodes
    cluster delete-free-nodes NAME       remove nodes that hold no slots
    cluster config NAME KEY=VALUE...     change a cluster's config
    cluster balance NAME                 spread masters over hosts
    cluster progress NAME [--watch]      running migrations: keys and bytes moved, rate, ETA
                                         (--watch: a live progress bar until they finish)
    proxies                              list registered proxies
    proxy show ADDRESS                   a proxy's view (what its coordinator pushes)
    proxy register ADDRESS NODE1 NODE2 [--host HOST] [--index N]
    proxy remove ADDRESS                 unregister a proxy (not one in use)
    proxy failover ADDRESS               replace a failed proxy by a free one
    failures                             proxies failed by a quorum of coordinators
    coordinators                         coordinators the brokers hear from, and the quorum
    proxy recover ADDRESS                return a failed proxy to the pool (coordinators do
                                         this by themselves once it answers again)
    epoch                                the global epoch
    epoch recover                        move the epoch past every registered proxy's (after
                                         a restore)
    raft status                          the group's members, leader and log
    raft add-learner ID RAFT_ADDRESS HTTP_ADDRESS
    raft membership ID... [--remove]     make exactly these members voters
    metadata dump [FILE]                 the whole store as JSON (stdout if no FILE)
    metadata restore FILE                replace the store (a dump) — epochs must not go back
    watch [--count N]                    print committed changes as they happen";

struct Ctl {
    channel: Channel,
    address: String,
    json: bool,
    token: BearerToken,
}

/// Parsed command line: global flags and the rest.
struct Args {
    brokers: Vec<String>,
    json: bool,
    token: Option<Secret>,
    tls_ca: Option<String>,
    rest: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut brokers = std::env::var("MOONRAFT_BROKER").ok().filter(|s| !s.is_empty());
    let mut json = false;
    let mut token = std::env::var("MOONRAFT_TOKEN").ok().and_then(|t| Secret::new(&t));
    let mut tls_ca = std::env::var("MOONRAFT_TLS_CA").ok().filter(|s| !s.is_empty());
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => json = true,
            "--token" => {
                i += 1;
                token = Secret::new(args.get(i).ok_or_else(|| anyhow!("--token needs a value"))?);
            }
            a if a.starts_with("--token=") => token = Secret::new(&a["--token=".len()..]),
            "--tls-ca" => {
                i += 1;
                tls_ca = Some(args.get(i).cloned().ok_or_else(|| anyhow!("--tls-ca needs a path"))?);
            }
            "--token-file" => {
                i += 1;
                let path = args.get(i).ok_or_else(|| anyhow!("--token-file needs a path"))?;
                token = Secret::new(&crate::auth::read_secret_file(path).map_err(|e| anyhow!(e))?);
            }
            "--broker" => {
                i += 1;
                brokers = Some(args.get(i).cloned().ok_or_else(|| anyhow!("--broker needs an address"))?);
            }
            a if a.starts_with("--broker=") => brokers = Some(a["--broker=".len()..].to_owned()),
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    let brokers = brokers.unwrap_or_else(|| "127.0.0.1:7800".to_owned());
    let brokers = brokers.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    Ok(Args { brokers, json, token, tls_ca, rest })
}

/// Exit status and message of a failed `ctl` run.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub fn main(args: &[String]) -> std::result::Result<(), Failure> {
    let usage = |e: anyhow::Error| Failure { code: 2, message: format!("{e:#}") };
    let parsed = parse_args(args).map_err(usage)?;
    if parsed.rest.is_empty() || matches!(parsed.rest[0].as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| usage(e.into()))?;
    runtime.block_on(async move {
        let token = BearerToken::new(parsed.token.as_ref()).map_err(|e| usage(anyhow!(e)))?;
        let tls = crate::tls::ClientTls::load(parsed.tls_ca.as_deref().map(std::path::Path::new))
            .map_err(|e| usage(anyhow!(e)))?;
        let ctl = Ctl::connect(&parsed.brokers, parsed.json, token, &tls).await.map_err(usage)?;
        let words: Vec<&str> = parsed.rest.iter().map(String::as_str).collect();
        ctl.run(&words).await.map_err(|e| match e.downcast::<ApiFailure>() {
            Ok(api) => Failure { code: 1, message: api.to_string() },
            Err(other) => usage(other),
        })
    })
}

/// An error answered by the broker: its `/api/v3` code, details and a hint.
#[derive(Debug)]
struct ApiFailure {
    code: String,
    detail: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.code)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = hint(&self.code) {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "CLUSTER_NOT_FOUND" => "list the clusters with `moonraft ctl clusters`",
        "PROXY_NOT_FOUND" => "list the proxies with `moonraft ctl proxies`",
        "ALREADY_EXISTED" => "pick another name or address, or delete the existing one first",
        "IN_USE" => "the proxy serves a cluster: scale the cluster in, or fail the proxy over first",
        "NO_AVAILABLE_RESOURCE" => {
            "not enough free proxies on distinct hosts: register more with `moonraft ctl proxy register`"
        }
        "INVALID_NODE_NUMBER" => "node numbers are positive multiples of 4",
        "INVALID_CLUSTER_NAME" => "cluster names are 1-31 characters of A-Z a-z 0-9 @ _ -",
        "INVALID_PROXY_ADDRESS" => "proxy addresses are host:port",
        "NODE_NUMBER_CHANGING" => "another scaling call is running on this cluster: wait for it and retry",
        "MIGRATION_RUNNING" => "a migration is running: wait until `moonraft ctl cluster show` shows no migration",
        "FREE_NODE_FOUND" => "remove the nodes without slots first: `moonraft ctl cluster delete-free-nodes NAME`",
        "FREE_NODE_NOT_FOUND" => "there are no nodes without slots: add some with `moonraft ctl cluster add-nodes`",
        "SLOTS_ALREADY_EVEN" => "the slots are already spread evenly: nothing to do",
        "NODE_NUM_ALREADY_ENOUGH" => "the cluster already has that many nodes",
        "RETRY" => "no leader reachable right now (election, or this member is in a minority): retry shortly",
        "RAFT_NOT_INITIALIZED" => {
            "initialise the group: start the members with bootstrap = true, or POST /api/v3/raft/init"
        }
        "INVALID_META_VERSION" | "EPOCH_SMALLER_THAN_CURRENT" => {
            "a restored dump must be from this version and have epochs not below the current ones"
        }
        "UNAUTHORIZED" => "the brokers need a token: pass --token (or MOONRAFT_TOKEN) with their admin_token",
        "FORBIDDEN" => "this token may only read: pass the admin_token to change anything",
        "PROXY_NOT_SYNC" => "some proxies did not reach the new epoch in time: check the coordinators, then retry",
        _ => return None,
    })
}

fn api_failure(status: tonic::Status) -> anyhow::Error {
    let body: Option<Value> = status
        .metadata()
        .get(moonraft_proto_error_trailer())
        .and_then(|v| v.to_str().ok())
        .and_then(|s| serde_json::from_str(s).ok());
    match body {
        Some(b) => {
            let code = b["error"].as_str().unwrap_or("UNKNOWN").to_owned();
            let detail = match (b["message"].as_str(), b["key"].as_str()) {
                (Some(m), Some(k)) => Some(format!("{k}: {m}")),
                (Some(m), None) => Some(m.to_owned()),
                _ => None,
            };
            ApiFailure { code, detail }.into()
        }
        None if status.code() == tonic::Code::Unauthenticated => {
            ApiFailure { code: "UNAUTHORIZED".into(), detail: None }.into()
        }
        None if status.code() == tonic::Code::PermissionDenied => {
            ApiFailure { code: "FORBIDDEN".into(), detail: None }.into()
        }
        None => anyhow!("the broker call failed: {} ({:?})", status.message(), status.code()),
    }
}

fn moonraft_proto_error_trailer() -> &'static str {
    crate::broker::grpc_api::ERROR_TRAILER
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

const CALL: Duration = Duration::from_secs(15);
/// `auto` waits for proxies (`auto_sync_timeout_ms`, 60 s by default).
const LONG_CALL: Duration = Duration::from_secs(120);

fn arg<'a>(words: &[&'a str], i: usize, what: &str) -> Result<&'a str> {
    words.get(i).copied().ok_or_else(|| anyhow!("missing {what}; see `moonraft ctl --help`"))
}

fn number(words: &[&str], i: usize, what: &str) -> Result<u64> {
    let s = arg(words, i, what)?;
    s.parse().map_err(|_| anyhow!("{what} must be a non-negative integer, not {s:?}"))
}

/// The value after `--flag` in `words`, if present.
fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1).copied())
}

impl Ctl {
    async fn connect(brokers: &[String], json: bool, token: BearerToken, tls: &crate::tls::ClientTls) -> Result<Ctl> {
        let brokers = crate::broker_addr::resolve(brokers, tls).await.map_err(|e| anyhow!(e))?;
        let mut last = None;
        for b in &brokers {
            let endpoint = tls.endpoint(b, Duration::from_secs(2)).map_err(|e| anyhow!(e))?;
            match endpoint.connect().await {
                Ok(channel) => return Ok(Ctl { channel, address: b.clone(), json, token }),
                Err(e) => last = Some(format!("{b}: {e}")),
            }
        }
        bail!(
            "cannot reach any broker ({})\nhint: pass the brokers' grpc_address with --broker or MOONRAFT_BROKER",
            last.unwrap_or_else(|| "no address given".into())
        )
    }

    fn api(&self) -> BrokerApiClient<InterceptedService<Channel, BearerToken>> {
        BrokerApiClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(usize::MAX)
    }

    fn admin(&self) -> RaftAdminClient<InterceptedService<Channel, BearerToken>> {
        RaftAdminClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    fn done(&self, what: String) {
        if self.json {
            println!("{}", json!({"ok": true}));
        } else {
            println!("{what}");
        }
    }

    async fn metadata(&self) -> Result<(Vec<u8>, Store)> {
        let raw = self.api().get_metadata(request(pb::Empty {}, CALL)).await.map_err(api_failure)?.into_inner().json;
        let store = serde_json::from_slice(&raw).context("the broker sent metadata this ctl cannot read")?;
        Ok((raw, store))
    }

    async fn run(&self, w: &[&str]) -> Result<()> {
        match (w[0], w.get(1).copied()) {
            ("clusters", _) => self.clusters().await,
            ("proxies", _) => self.proxies().await,
            ("cluster", Some(sub)) => self.cluster(sub, &w[2..]).await,
            ("proxy", Some(sub)) => self.proxy(sub, &w[2..]).await,
            ("failures", _) => {
                let r = self.api().get_failures(request(pb::Empty {}, CALL)).await.map_err(api_failure)?;
                self.list("ADDRESS", &r.into_inner().addresses);
                Ok(())
            }
            ("coordinators", _) => {
                let r = self.api().get_coordinators(request(pb::Empty {}, CALL)).await.map_err(api_failure)?;
                let r = r.into_inner();
                if self.json {
                    let list: Vec<Value> = r
                        .coordinators
                        .iter()
                        .map(
                            |c| json!({"reporter_id": c.reporter_id, "last_seen_ms": c.last_seen_ms, "alive": c.alive}),
                        )
                        .collect();
                    println!("{}", json!({"coordinators": list, "failure_quorum": r.failure_quorum}));
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = r
                    .coordinators
                    .iter()
                    .map(|c| {
                        let seen = format!("{:.1} s ago", c.last_seen_ms as f64 / 1000.0);
                        vec![c.reporter_id.clone(), seen, if c.alive { "alive" } else { "silent" }.to_owned()]
                    })
                    .collect();
                print_table(&["REPORTER_ID", "LAST HEARTBEAT", "STATE"], &rows);
                println!("failure quorum: {} report(s)", r.failure_quorum);
                Ok(())
            }
            ("epoch", Some("recover")) => {
                let r = self.api().recover_epoch(request(pb::Empty {}, LONG_CALL)).await.map_err(api_failure)?;
                let failed = r.into_inner().failed_addresses;
                let e = self.api().get_epoch(request(pb::Empty {}, CALL)).await.map_err(api_failure)?;
                println!("epoch {}", e.into_inner().epoch);
                if !failed.is_empty() {
                    eprintln!("could not ask these proxies for their epoch: {}", failed.join(", "));
                }
                Ok(())
            }
            ("epoch", _) => {
                let e = self.api().get_epoch(request(pb::Empty {}, CALL)).await.map_err(api_failure)?;
                println!("{}", e.into_inner().epoch);
                Ok(())
            }
            ("raft", Some(sub)) => self.raft(sub, &w[2..]).await,
            ("metadata", Some("dump")) => {
                let (raw, _) = self.metadata().await?;
                match w.get(2) {
                    Some(file) => {
                        std::fs::write(file, &raw).with_context(|| format!("cannot write {file}"))?;
                        eprintln!("wrote {} bytes to {file}", raw.len());
                    }
                    None => println!("{}", String::from_utf8_lossy(&raw)),
                }
                Ok(())
            }
            ("metadata", Some("restore")) => {
                let file = arg(w, 2, "FILE")?;
                let json = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
                self.api().restore_metadata(request(pb::Metadata { json }, CALL)).await.map_err(api_failure)?;
                self.done(format!("restored the metadata from {file}"));
                Ok(())
            }
            ("watch", _) => self.watch(flag(w, "--count").map(str::parse).transpose()?).await,
            _ => bail!("unknown command {:?}; see `moonraft ctl --help`", w.join(" ")),
        }
    }

    fn list(&self, header: &str, items: &[String]) {
        if self.json {
            println!("{}", json!(items));
        } else {
            let rows: Vec<Vec<String>> = items.iter().map(|i| vec![i.clone()]).collect();
            print_table(&[header], &rows);
        }
    }

    async fn clusters(&self) -> Result<()> {
        let (_, store) = self.metadata().await?;
        let rows: Vec<Value> = store
            .clusters
            .values()
            .map(|c| {
                let masters = c
                    .chunks
                    .iter()
                    .flat_map(|ch| ch.stable_slots.iter())
                    .filter(|s| s.as_ref().is_some_and(|s| !s.range_list.is_empty()))
                    .count();
                json!({
                    "name": c.name,
                    "nodes": c.node_number(),
                    "masters_with_slots": masters,
                    "proxies": c.chunks.len() * 2,
                    "epoch": c.epoch,
                    "migrating": c.is_migrating(),
                })
            })
            .collect();
        if self.json {
            println!("{}", Value::Array(rows));
            return Ok(());
        }
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                ["name", "nodes", "masters_with_slots", "proxies", "epoch", "migrating"]
                    .iter()
                    .map(|k| cell(&r[*k]))
                    .collect()
            })
            .collect();
        print_table(&["NAME", "NODES", "MASTERS", "PROXIES", "EPOCH", "MIGRATING"], &table);
        Ok(())
    }

    async fn proxies(&self) -> Result<()> {
        let (_, store) = self.metadata().await?;
        let rows: Vec<Value> = store
            .all_proxies
            .values()
            .map(|p| {
                let state = if store.failed_proxies.contains(&p.proxy_address) {
                    "failed"
                } else if p.cluster.is_some() {
                    "in use"
                } else if store.failures.contains_key(&p.proxy_address) {
                    "reported"
                } else {
                    "free"
                };
                json!({
                    "address": p.proxy_address,
                    "host": p.host,
                    "nodes": p.node_addresses,
                    "cluster": p.cluster,
                    "state": state,
                })
            })
            .collect();
        if self.json {
            println!("{}", Value::Array(rows));
            return Ok(());
        }
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let nodes =
                    r["nodes"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default();
                vec![cell(&r["address"]), cell(&r["host"]), nodes, cell(&r["cluster"]), cell(&r["state"])]
            })
            .collect();
        print_table(&["ADDRESS", "HOST", "REDIS NODES", "CLUSTER", "STATE"], &table);
        Ok(())
    }

    async fn cluster(&self, sub: &str, w: &[&str]) -> Result<()> {
        let name = arg(w, 0, "NAME")?.to_owned();
        let api = || self.api();
        let nn = |n: u64| pb::NodeNumber { cluster_name: name.clone(), node_number: n };
        let cn = || pb::ClusterName { cluster_name: name.clone() };
        match sub {
            "show" => {
                let reply = api().get_cluster(request(cn(), CALL)).await.map_err(api_failure)?.into_inner();
                let Some(c) = reply.cluster else {
                    return Err(ApiFailure { code: "CLUSTER_NOT_FOUND".into(), detail: None }.into());
                };
                self.show_cluster(&c);
            }
            "create" => {
                let n = number(w, 1, "NODE_NUMBER")?;
                api().create_cluster(request(nn(n), CALL)).await.map_err(api_failure)?;
                self.done(format!("created cluster {name} with {n} nodes"));
            }
            "delete" => {
                api().delete_cluster(request(cn(), CALL)).await.map_err(api_failure)?;
                self.done(format!("deleted cluster {name}"));
            }
            "scale" => {
                let n = number(w, 1, "NODE_NUMBER")?;
                api().auto_scale(request(nn(n), LONG_CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name} is scaling to {n} nodes (migration runs in the background)"));
            }
            "add-nodes" => {
                let n = number(w, 1, "NODE_NUMBER")?;
                let added = api().add_nodes(request(nn(n), CALL)).await.map_err(api_failure)?.into_inner();
                if self.json {
                    println!("{}", json!(added.nodes.iter().map(|n| &n.address).collect::<Vec<_>>()));
                } else {
                    println!(
                        "added {} nodes to {name}; run `moonraft ctl cluster expand {name}` to give them slots",
                        added.nodes.len()
                    );
                }
            }
            "expand" => {
                api().expand_slots(request(cn(), CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name}: slots are migrating to the new nodes"));
            }
            "shrink" => {
                let n = number(w, 1, "NODE_NUMBER")?;
                api().shrink_slots(request(nn(n), CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name}: slots are migrating off the last nodes"));
            }
            "delete-free-nodes" => {
                api().delete_free_nodes(request(cn(), CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name}: nodes without slots removed"));
            }
            "progress" => self.progress(&name, w.contains(&"--watch")).await?,
            "balance" => {
                api().balance_masters(request(cn(), CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name}: masters balanced"));
            }
            "config" => {
                let mut changes = std::collections::HashMap::new();
                for kv in &w[1..] {
                    let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("expected KEY=VALUE, got {kv:?}"))?;
                    changes.insert(k.to_owned(), v.to_owned());
                }
                if changes.is_empty() {
                    bail!("give at least one KEY=VALUE");
                }
                let req = pb::ChangeClusterConfigRequest { cluster_name: name.clone(), changes, expected_epoch: None };
                api().change_cluster_config(request(req, CALL)).await.map_err(api_failure)?;
                self.done(format!("cluster {name}: config changed"));
            }
            other => bail!("unknown command `cluster {other}`; see `moonraft ctl --help`"),
        }
        Ok(())
    }

    async fn progress(&self, name: &str, watch: bool) -> Result<()> {
        let mut drawn = 0usize;
        loop {
            let req = pb::ClusterName { cluster_name: name.to_owned() };
            let info = self.api().get_cluster_info(request(req, CALL)).await.map_err(api_failure)?.into_inner();
            if self.json {
                let list: Vec<Value> = info
                    .migrations
                    .iter()
                    .map(|m| {
                        json!({
                            "src_proxy_address": m.src_proxy_address, "dst_proxy_address": m.dst_proxy_address,
                            "range_list": m.range_list.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
                            "state": m.state, "keys_moved": m.keys_moved, "bytes_moved": m.bytes_moved,
                            "keys_remaining_estimate": m.keys_remaining_estimate, "bytes_per_sec": m.bytes_per_sec,
                            "eta_secs": m.eta_secs, "error": m.error,
                        })
                    })
                    .collect();
                println!("{}", json!({"is_migrating": info.is_migrating, "migrations": list}));
                if !watch || !info.is_migrating {
                    return Ok(());
                }
            } else {
                // Redraw in place: move the cursor up over the previous frame.
                if drawn > 0 {
                    print!("\x1b[{drawn}A\x1b[J");
                }
                let lines = progress_lines(&info);
                for l in &lines {
                    println!("{l}");
                }
                drawn = lines.iter().map(|l| l.lines().count()).sum();
                if !watch || !info.is_migrating {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn show_cluster(&self, c: &pb::Cluster) {
        let nodes: Vec<Value> = c
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "address": n.address,
                    "proxy_address": n.proxy_address,
                    "role": n.repl.as_ref().map(|r| r.role.clone()).unwrap_or_default(),
                    "slots": n.slots.iter().map(slot_text).collect::<Vec<_>>(),
                })
            })
            .collect();
        if self.json {
            println!("{}", json!({"name": c.name, "epoch": c.epoch, "nodes": nodes}));
            return;
        }
        println!("cluster {}  epoch {}  nodes {}", c.name, c.epoch, c.nodes.len());
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let slots =
                    n["slots"].as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(" ")).unwrap_or_default();
                vec![cell(&n["address"]), cell(&n["proxy_address"]), cell(&n["role"]), slots]
            })
            .collect();
        print_table(&["NODE", "PROXY", "ROLE", "SLOTS"], &rows);
    }

    async fn proxy(&self, sub: &str, w: &[&str]) -> Result<()> {
        let address = arg(w, 0, "ADDRESS")?.to_owned();
        let pa = || pb::ProxyAddress { proxy_address: address.clone() };
        match sub {
            "show" => {
                let reply = self.api().get_proxy(request(pa(), CALL)).await.map_err(api_failure)?.into_inner();
                let Some(p) = reply.proxy else {
                    return Err(ApiFailure { code: "PROXY_NOT_FOUND".into(), detail: None }.into());
                };
                let nodes: Vec<Value> = p
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "address": n.address,
                            "role": n.repl.as_ref().map(|r| r.role.clone()).unwrap_or_default(),
                            "slots": n.slots.iter().map(slot_text).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                if self.json {
                    println!(
                        "{}",
                        json!({"address": p.address, "cluster_name": p.cluster_name, "epoch": p.epoch, "nodes": nodes})
                    );
                } else {
                    println!(
                        "proxy {}  cluster {}  epoch {}",
                        p.address,
                        p.cluster_name.as_deref().unwrap_or("-"),
                        p.epoch
                    );
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let slots = n["slots"]
                                .as_array()
                                .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(" "))
                                .unwrap_or_default();
                            vec![cell(&n["address"]), cell(&n["role"]), slots]
                        })
                        .collect();
                    print_table(&["NODE", "ROLE", "SLOTS"], &rows);
                }
            }
            "register" => {
                let nodes = vec![arg(w, 1, "NODE1")?.to_owned(), arg(w, 2, "NODE2")?.to_owned()];
                let index = flag(w, "--index")
                    .map(str::parse::<u64>)
                    .transpose()
                    .map_err(|_| anyhow!("--index must be an integer"))?;
                let req = pb::AddProxyRequest {
                    proxy_address: address.clone(),
                    nodes,
                    host: flag(w, "--host").map(str::to_owned),
                    index,
                };
                self.api().add_proxy(request(req, CALL)).await.map_err(api_failure)?;
                self.done(format!("registered proxy {address}"));
            }
            "remove" => {
                self.api().remove_proxy(request(pa(), CALL)).await.map_err(api_failure)?;
                self.done(format!("removed proxy {address}"));
            }
            "failover" => {
                let r = self.api().failover_proxy(request(pa(), CALL)).await.map_err(api_failure)?.into_inner();
                match r.proxy {
                    Some(p) => self.done(format!("{address} replaced by {}", p.address)),
                    None => self.done(format!("{address} was in no cluster: nothing to replace")),
                }
            }
            "recover" => {
                let r = self.api().recover_proxy(request(pa(), CALL)).await.map_err(api_failure)?.into_inner();
                if r.changed {
                    self.done(format!("{address} left the failed set"));
                } else {
                    self.done(format!("{address} was not failed: nothing to do"));
                }
            }
            other => bail!("unknown command `proxy {other}`; see `moonraft ctl --help`"),
        }
        Ok(())
    }

    async fn raft(&self, sub: &str, w: &[&str]) -> Result<()> {
        match sub {
            "status" => {
                let s = self.admin().status(request(pb::Empty {}, CALL)).await.map_err(api_failure)?.into_inner();
                if self.json {
                    let members: Vec<Value> = s
                        .members
                        .iter()
                        .map(|m| json!({"id": m.id, "raft_address": m.raft_address, "http_address": m.http_address, "voter": m.voter}))
                        .collect();
                    println!(
                        "{}",
                        json!({"node_id": s.node_id, "state": s.state, "current_term": s.current_term, "leader_id": s.leader_id,
                               "last_log_index": s.last_log_index, "last_applied_index": s.last_applied_index, "members": members})
                    );
                    return Ok(());
                }
                println!(
                    "asked {} (node {}: {}, term {}, log {}, applied {})",
                    self.address,
                    s.node_id,
                    s.state,
                    s.current_term,
                    opt(s.last_log_index),
                    opt(s.last_applied_index)
                );
                let rows: Vec<Vec<String>> = s
                    .members
                    .iter()
                    .map(|m| {
                        let role = if Some(m.id) == s.leader_id {
                            "leader"
                        } else if m.voter {
                            "voter"
                        } else {
                            "learner"
                        };
                        vec![m.id.to_string(), role.to_owned(), m.raft_address.clone(), m.http_address.clone()]
                    })
                    .collect();
                print_table(&["ID", "ROLE", "GRPC", "HTTP"], &rows);
            }
            "add-learner" => {
                let id = number(w, 0, "ID")?;
                let m = pb::Member {
                    id,
                    raft_address: arg(w, 1, "RAFT_ADDRESS")?.to_owned(),
                    http_address: arg(w, 2, "HTTP_ADDRESS")?.to_owned(),
                };
                self.admin().add_learner(request(m, LONG_CALL)).await.map_err(api_failure)?;
                self.done(format!("broker {id} added as a learner and caught up"));
            }
            "membership" => {
                let remove = w.contains(&"--remove");
                let voters = w
                    .iter()
                    .filter(|x| **x != "--remove")
                    .map(|x| x.parse::<u64>().map_err(|_| anyhow!("member ids are integers, not {x:?}")))
                    .collect::<Result<Vec<_>>>()?;
                let req = pb::MembershipRequest { voters: voters.clone(), remove };
                self.admin().change_membership(request(req, LONG_CALL)).await.map_err(api_failure)?;
                self.done(format!("voters are now {voters:?}"));
            }
            other => bail!("unknown command `raft {other}`; see `moonraft ctl --help`"),
        }
        Ok(())
    }

    async fn watch(&self, count: Option<u64>) -> Result<()> {
        let mut stream = self.api().watch(pb::WatchRequest {}).await.map_err(api_failure)?.into_inner();
        let mut seen = 0u64;
        while count.is_none_or(|c| seen < c) {
            let Some(c) = stream.message().await.map_err(api_failure)? else { break };
            seen += 1;
            if self.json {
                println!(
                    "{}",
                    json!({"log_index": c.log_index, "global_epoch": c.global_epoch, "clusters": c.clusters, "proxies": c.proxies, "resync": c.resync})
                );
            } else if c.resync {
                println!("index {} epoch {}: (re)synced", c.log_index, c.global_epoch);
            } else {
                println!(
                    "index {} epoch {}: clusters [{}] proxies [{}]",
                    c.log_index,
                    c.global_epoch,
                    c.clusters.join(", "),
                    c.proxies.join(", ")
                );
            }
        }
        Ok(())
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// One line per running migration: `[#####-----]  45%  0-4095 p1→p3  Scanning  1200/2600 keys  3.1 MB  35.2 MB/s  ETA 12s`.
fn progress_lines(info: &pb::ClusterInfo) -> Vec<String> {
    if !info.is_migrating {
        return vec![format!(
            "cluster {}: no migration running ({} nodes, {} with slots)",
            info.name, info.node_number, info.node_number_with_slots
        )];
    }
    let mut lines = vec![format!("cluster {}: migrating", info.name)];
    for m in &info.migrations {
        let total = m.keys_moved + m.keys_remaining_estimate;
        let done = if total == 0 { 0.0 } else { m.keys_moved as f64 / total as f64 };
        let filled = (done * 30.0).round() as usize;
        let ranges: Vec<String> = m.range_list.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
        let mut line = format!(
            "[{}{}] {:>3.0}%  {}  {}→{}  {}  {}/{} keys  {}  {}/s  ETA {}",
            "#".repeat(filled.min(30)),
            "-".repeat(30 - filled.min(30)),
            done * 100.0,
            ranges.join(","),
            m.src_proxy_address,
            m.dst_proxy_address,
            m.state,
            m.keys_moved,
            total,
            human_bytes(m.bytes_moved),
            human_bytes(m.bytes_per_sec),
            m.eta_secs.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into()),
        );
        if let Some(e) = &m.error {
            line.push_str(&format!("\n    paused: {e}"));
        }
        lines.push(line);
    }
    lines
}

fn opt(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `0-4095`, `4096-8191 migrating→p2:6002`, `4096-8191 importing←p1:6001`.
fn slot_text(r: &pb::SlotRange) -> String {
    let ranges: Vec<String> = r
        .range_list
        .iter()
        .map(|x| if x.start == x.end { x.start.to_string() } else { format!("{}-{}", x.start, x.end) })
        .collect();
    let ranges = ranges.join(",");
    match &r.tag {
        Some(pb::slot_range::Tag::Migrating(m)) => format!("{ranges} migrating→{}", m.dst_proxy_address),
        Some(pb::slot_range::Tag::Importing(m)) => format!("{ranges} importing←{}", m.src_proxy_address),
        _ => ranges,
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
