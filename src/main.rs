//! `moonraft`: one binary, one subcommand per role.

mod auth;
mod broker;
mod broker_addr;
mod coordinator;
mod ctl;
mod demo;
mod metrics_http;
mod settings;
mod tls;

use anyhow::{Context, Result};
use moonraft_proxy::config::PROXY_KEYS;
use moonraft_proxy::ProxyConfig;

const USAGE: &str = "moonraft — self-managed Redis clustering

USAGE:
    moonraft proxy [CONFIG.toml] [--<key> <value>]...   run a server proxy (Redis Cluster protocol)
    moonraft broker [CONFIG.toml] [--<key> <value>]...  run a member of the Raft broker group (/api/v3)
    moonraft coordinator [CONFIG.toml] [--<key> <value>]...  keep proxies in sync, detect failures, fail over
    moonraft demo [--data-dir DIR] [--fresh]            the whole system on this machine (`moonraft demo --help`)
    moonraft ctl [--broker ADDR] [--json] <COMMAND>     administer the broker group (`moonraft ctl --help`)
    moonraft --version

Every configuration key can be set in the TOML file, as MOONRAFT_<KEY> in the environment or
as --<key-with-dashes> on the command line (flag > environment > file > default).
Run `moonraft proxy --help` for the proxy's keys.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("moonraft: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("proxy") => proxy(&args[1..]),
        Some("broker") => broker(&args[1..]),
        Some("coordinator") => coordinator(&args[1..]),
        Some("demo") => demo::main(&args[1..]),
        Some("ctl") => {
            if let Err(f) = ctl::main(&args[1..]) {
                eprintln!("{}", f.message);
                std::process::exit(f.code);
            }
            Ok(())
        }
        Some("--version") | Some("-V") | Some("version") => {
            println!("moonraft {}", env!("MOONRAFT_BUILD_VERSION"));
            Ok(())
        }
        Some("-h") | Some("--help") | Some("help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown subcommand {other:?}\n\n{USAGE}"),
    }
}

/// Sets up logging, then logs the warnings found while reading the configuration.
fn init_logging(filter: &str, format: &str, warnings: &[String]) {
    let filter = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty()).unwrap_or_else(|| filter.to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        // One object per line: time, level, target, the message and every span and event field.
        builder.json().with_current_span(true).with_span_list(true).try_init()
    } else {
        builder.try_init()
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
}

fn proxy(args: &[String]) -> Result<()> {
    let cli = settings::parse_cli(args, PROXY_KEYS)?;
    if cli.help {
        println!("moonraft proxy [CONFIG.toml] [--<key> <value>]...\n\nKeys (README, section `moonraft proxy`):");
        let defaults = ProxyConfig::default();
        for key in PROXY_KEYS {
            println!("    --{:<30} MOONRAFT_{}", key.replace('_', "-"), key.to_ascii_uppercase());
        }
        println!("\nDefault listen address: {}", defaults.address);
        return Ok(());
    }
    let mut config = ProxyConfig::default();
    let warnings = settings::apply(&cli, PROXY_KEYS, |k, v| config.set(k, v))?;
    config.validate().map_err(anyhow::Error::msg)?;
    init_logging(&config.log, &config.log_format, &warnings);
    if config.admin_password.is_none() {
        tracing::warn!("no admin_password: anyone who reaches {} can change its routing with UMCTL and read keys with UMREAD (set admin_password to close it)", config.address);
    }
    // One worker: a current-thread runtime avoids work-stealing and cross-thread wake-ups,
    // which is what decides throughput when the proxy shares few cores with Redis.
    let runtime = if config.thread_number == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.thread_number)
            .thread_name("proxy-worker")
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    moonraft_proxy::set_build_version(env!("MOONRAFT_BUILD_VERSION"));
    runtime.block_on(async move {
        let address = config.address.clone();
        // The proxy binds its /metrics port itself: a restart through the handover socket takes
        // it over from the running process like the client port.
        let started = move |state: &std::sync::Arc<moonraft_proxy::state::ProxyState>, metrics: Option<tokio::net::TcpListener>| {
            if let Some(listener) = metrics {
                let registry = moonraft_proxy::exposition::registry(state);
                metrics_http::spawn(listener, std::sync::Arc::new(move || moonraft_proxy::metrics::render(&registry)));
            }
        };
        tokio::select! {
            r = moonraft_proxy::server::run_with(config, started) => r.with_context(|| format!("proxy on {address} failed")),
            _ = shutdown_signal() => Ok(()),
        }
    })
}

fn broker(args: &[String]) -> Result<()> {
    use broker::config::{BrokerConfig, BROKER_KEYS, IGNORED_KEYS};
    let keys: Vec<&str> = BROKER_KEYS.iter().chain(IGNORED_KEYS).copied().collect();
    let cli = settings::parse_cli(args, &keys)?;
    if cli.help {
        println!("moonraft broker [CONFIG.toml] [--<key> <value>]...\n\nKeys (README, section `moonraft broker`):");
        for key in BROKER_KEYS {
            println!("    --{:<30} MOONRAFT_{}", key.replace('_', "-"), key.to_ascii_uppercase());
        }
        return Ok(());
    }
    let mut config = BrokerConfig::default();
    let mut ignored = Vec::new();
    let mut warnings = settings::apply(&cli, &keys, |k, v| {
        if IGNORED_KEYS.contains(&k) {
            ignored.push(format!("config key {k} does not apply to the Raft broker and is ignored"));
            return Ok(());
        }
        config.set(k, v)
    })?;
    warnings.extend(ignored);
    init_logging(&config.log, &config.log_format, &warnings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("broker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        tokio::select! {
            r = broker::run(config) => r,
            _ = shutdown_signal() => Ok(()),
        }
    })
}

fn coordinator(args: &[String]) -> Result<()> {
    use coordinator::config::{CoordinatorConfig, COORDINATOR_KEYS};
    let cli = settings::parse_cli(args, COORDINATOR_KEYS)?;
    if cli.help {
        println!("moonraft coordinator [CONFIG.toml] [--<key> <value>]...\n\nKeys (broker_address lists the brokers' gRPC addresses, default port 7800, or their HTTP /api/v3 addresses, default port 7799, from which the gRPC ones are learnt):");
        for key in COORDINATOR_KEYS {
            println!("    --{:<30} MOONRAFT_{}", key.replace('_', "-"), key.to_ascii_uppercase());
        }
        return Ok(());
    }
    let mut config = CoordinatorConfig::default();
    let warnings = settings::apply(&cli, COORDINATOR_KEYS, |k, v| config.set(k, v))?;
    init_logging(&config.log, &config.log_format, &warnings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.thread_number)
        .thread_name("coordinator")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        tokio::select! {
            r = coordinator::run(config) => r,
            _ = shutdown_signal() => Ok(()),
        }
    })
}

/// Waits for SIGTERM or Ctrl-C (every long-running subcommand, and the demo).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
