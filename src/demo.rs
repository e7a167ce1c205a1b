//! `moonraft demo`: the whole system on this machine, as separate processes of this binary
//! plus `redis-server` children, on fixed loopback ports: brokers (HTTP 7799/7899/7999, gRPC
//! 7800/7900/8000), coordinators (admin 6699, 6698, …), proxies 6001… each fronting two
//! redis-servers 7001…, every proxy registered as its own host. Stays in the foreground and
//! stops every child on Ctrl-C or SIGTERM. The data dir keeps the brokers' RocksDB and the
//! redis-servers' AOF, so a second start resumes the same state (`--fresh` wipes it).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VERSION_MARK: &str = "moonraft-demo-2";

pub const USAGE: &str =
    "moonraft demo [--data-dir DIR] [--proxies 6] [--brokers 3] [--coordinators 2] [--fresh] [--insecure]

Starts brokers, coordinators, proxies and their redis-servers on 127.0.0.1 and stays in the
foreground; Ctrl-C stops everything. DIR (default ./moonraft-demo) keeps the state between
runs and holds demo.json (what runs, with pids), logs/ and the credentials generated on the
first start (credentials.env: `source` it for curl, redis-cli and moonraft ctl).
--insecure (first start only) runs everything without credentials, as undermoon did.";

struct Options {
    data_dir: PathBuf,
    proxies: usize,
    brokers: usize,
    coordinators: usize,
    fresh: bool,
    insecure: bool,
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        data_dir: PathBuf::from("moonraft-demo"),
        proxies: 6,
        brokers: 3,
        coordinators: 2,
        fresh: false,
        insecure: false,
    };
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| args.get(i + 1).cloned().with_context(|| format!("{} needs a value", args[i]));
        let count = |i: usize, max: usize| -> Result<usize> {
            let v = value(i)?;
            match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => bail!("{} must be a number from 1 to {max}, not {v:?}", args[i]),
            }
        };
        match args[i].as_str() {
            "-h" | "--help" => return Ok(None),
            "--data-dir" => o.data_dir = PathBuf::from(value(i)?),
            "--proxies" => o.proxies = count(i, 9)?,
            "--brokers" => o.brokers = count(i, 3)?,
            "--coordinators" => o.coordinators = count(i, 9)?,
            "--fresh" => {
                o.fresh = true;
                i += 1;
                continue;
            }
            "--insecure" => {
                o.insecure = true;
                i += 1;
                continue;
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
        i += 2;
    }
    Ok(Some(o))
}

/// A child process; killed (TERM, then KILL) when dropped.
struct Running {
    role: String,
    address: String,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        // Quietly: a child that already exited makes `kill` complain on our terminal.
        let _ = Command::new("kill").args(["-TERM", &pid]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Layout {
    /// (id, http, grpc)
    brokers: Vec<(usize, String, String)>,
    coordinators: Vec<String>,
    /// (proxy, [node, node])
    proxies: Vec<(String, [String; 2])>,
}

/// Where the process listening on `address` serves `/metrics`: 3100 ports up (proxies
/// 6001… → 9101…, coordinators 6699/6698 → 9799/9798).
fn metrics_address(address: &str) -> String {
    let port: u16 = address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(6000);
    format!("127.0.0.1:{}", port + 3100)
}

fn layout(o: &Options) -> Layout {
    Layout {
        brokers: (1..=o.brokers)
            .map(|i| (i, format!("127.0.0.1:{}", 7699 + 100 * i), format!("127.0.0.1:{}", 7700 + 100 * i)))
            .collect(),
        coordinators: (0..o.coordinators).map(|i| format!("127.0.0.1:{}", 6699 - i)).collect(),
        proxies: (1..=o.proxies)
            .map(|i| {
                (
                    format!("127.0.0.1:{}", 6000 + i),
                    [format!("127.0.0.1:{}", 7000 + 2 * i - 1), format!("127.0.0.1:{}", 7000 + 2 * i)],
                )
            })
            .collect(),
    }
}

/// The demo's credentials, generated on its first start and kept in the data dir.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Credentials {
    /// Brokers: everything (coordinators, `moonraft ctl`, curl).
    admin_token: String,
    /// Brokers: reads only.
    read_token: String,
    /// Brokers among themselves (Raft, forwarding).
    cluster_secret: String,
    /// Proxies: `AUTH admin …` (coordinators, brokers, proxies among themselves); also the
    /// coordinators' admin ports.
    proxy_admin_password: String,
    /// Proxies: data commands (`AUTH <password>`, `REDISCLI_AUTH`).
    password: String,
    /// redis-servers: `requirepass` (and `masterauth`).
    redis_password: String,
}

/// Picks one credential (for the environment variable of a child).
type SecretOf = fn(&Credentials) -> &str;

/// 128 random bits, hex.
fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom to generate the demo's credentials")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads the demo's credentials, or generates them on a first start; `None` for an insecure
/// demo.
fn credentials(dir: &Path, insecure: bool, first_start: bool) -> Result<Option<Credentials>> {
    let path = dir.join("credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if insecure {
            bail!("{} was started with credentials: --insecure needs --fresh", dir.display());
        }
        return Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?));
    }
    if insecure || (!first_start && dir.join("insecure").exists()) {
        std::fs::write(dir.join("insecure"), "this demo runs without credentials\n")?;
        return Ok(None);
    }
    let c = Credentials {
        admin_token: random_secret()?,
        read_token: random_secret()?,
        cluster_secret: random_secret()?,
        proxy_admin_password: random_secret()?,
        password: random_secret()?,
        redis_password: random_secret()?,
    };
    write_private(&path, &serde_json::to_vec_pretty(&c)?)?;
    let env = format!(
        "# moonraft demo credentials: `source` this file.\n\
         export MOONRAFT_TOKEN={}      # brokers (curl -H \"Authorization: Bearer $MOONRAFT_TOKEN\", moonraft ctl)\n\
         export MOONRAFT_READ_TOKEN={}\n\
         export REDISCLI_AUTH={}       # proxies' data password (redis-cli uses it)\n\
         export MOONRAFT_PROXY_ADMIN_PASSWORD={}   # redis-cli --user admin --pass …\n\
         export MOONRAFT_REDIS_PASSWORD={}         # the redis-servers' requirepass\n",
        c.admin_token, c.read_token, c.password, c.proxy_admin_password, c.redis_password
    );
    write_private(&dir.join("credentials.env"), env.as_bytes())?;
    Ok(Some(c))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content)?;
    Ok(())
}

fn check_free(address: &str) -> Result<()> {
    match TcpListener::bind(address) {
        Ok(_) => Ok(()),
        Err(e) => bail!("port {address} is not free ({e}): is another demo running? Stop it (Ctrl-C) or free the port"),
    }
}

fn wait_port(address: &str, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} on {address} exited ({status}); see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{what} on {address} did not start in 15 s; see {}", log.display())
}

/// A small blocking HTTP request to a broker (the demo needs a handful, no client crate).
fn http(address: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(address)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn spawn(role: &str, address: &str, cmd: &mut Command, log: &Path) -> Result<Running> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    // redis-server writes its log, and the reason it refuses to start, to stdout.
    let stdout = file.try_clone().with_context(|| format!("cannot open {}", log.display()))?;
    let child = cmd
        .stdout(stdout)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the {role} on {address}"))?;
    Ok(Running { role: role.to_owned(), address: address.to_owned(), child })
}

pub fn main(args: &[String]) -> Result<()> {
    let Some(o) = parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let started = Instant::now();
    if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
        bail!(
            "redis-server was not found: install it (Debian: apt-get install redis-server) or run ./scripts/setup.sh"
        );
    }
    // Absolute: redis-server changes into its `--dir` before it reads the `--include`d file,
    // so a relative path (the default `moonraft-demo`) would name a file that is not there.
    let dir = &std::path::absolute(&o.data_dir)
        .with_context(|| format!("cannot resolve the data dir {}", o.data_dir.display()))?;
    let mark = dir.join("demo-version");
    // --fresh only ever wipes a demo data dir.
    if o.fresh && mark.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    match std::fs::read_to_string(&mark) {
        Ok(v) if v.trim() != VERSION_MARK => {
            bail!(
                "{} holds a demo of another version ({}): start with --fresh to wipe it, or pick another --data-dir",
                dir.display(),
                v.trim()
            )
        }
        Ok(_) => {}
        Err(_) if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false) => {
            bail!("{} is not empty and is not a demo data dir: pick another --data-dir", dir.display())
        }
        Err(_) => {}
    }
    let l = layout(&o);
    for (_, h, g) in &l.brokers {
        check_free(h)?;
        check_free(g)?;
    }
    for c in &l.coordinators {
        check_free(c)?;
        check_free(&metrics_address(c))?;
    }
    for (p, nodes) in &l.proxies {
        check_free(p)?;
        check_free(&metrics_address(p))?;
        for n in nodes {
            check_free(n)?;
        }
    }
    let first_start = !mark.exists();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    std::fs::write(&mark, VERSION_MARK)?;
    let creds = credentials(dir, o.insecure, first_start)?;
    // Secrets go to the children in their environment, not on command lines `ps` shows.
    let secret_env = |cmd: &mut Command, vars: &[(&str, SecretOf)]| {
        if let Some(c) = &creds {
            for (name, get) in vars {
                cmd.env(name, get(c));
            }
        }
    };
    let exe = std::env::current_exe().context("cannot find the moonraft binary")?;
    let mut children: Vec<Running> = Vec::new();

    // Redis first, then proxies, brokers and coordinators.
    for (_, nodes) in &l.proxies {
        for n in nodes {
            let port = n.rsplit(':').next().unwrap_or_default().to_owned();
            let rdir = dir.join(format!("redis{port}"));
            std::fs::create_dir_all(&rdir)?;
            let log = logs.join(format!("redis{port}.log"));
            let mut cmd = Command::new("redis-server");
            // A replica syncs at once, not after Redis 7's 5 s diskless-sync delay.
            cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&rdir);
            if let Some(c) = &creds {
                // In an included file (mode 0600) rather than on the command line `ps` shows.
                let conf = rdir.join("auth.conf");
                write_private(&conf, format!("requirepass {0}\nmasterauth {0}\n", c.redis_password).as_bytes())?;
                cmd.arg("--include").arg(&conf);
            }
            let mut r = spawn("redis", n, &mut cmd, &log)?;
            wait_port(n, &mut r.child, "redis-server", &log)?;
            children.push(r);
        }
    }
    for (p, _) in &l.proxies {
        let log = logs.join(format!("proxy{}.log", p.rsplit(':').next().unwrap_or_default()));
        let mut cmd = Command::new(&exe);
        cmd.args(["proxy", "--address", p, "--metrics-address", &metrics_address(p)]).env_remove("RUST_LOG");
        secret_env(
            &mut cmd,
            &[
                ("MOONRAFT_PASSWORD", |c| &c.password),
                ("MOONRAFT_ADMIN_PASSWORD", |c| &c.proxy_admin_password),
                ("MOONRAFT_BACKEND_PASSWORD", |c| &c.redis_password),
            ],
        );
        let mut r = spawn("proxy", p, &mut cmd, &log)?;
        wait_port(p, &mut r.child, "proxy", &log)?;
        children.push(r);
    }
    let members = l.brokers.iter().map(|(i, h, g)| format!("{i}={g}/{h}")).collect::<Vec<_>>().join(",");
    for (i, h, g) in &l.brokers {
        let log = logs.join(format!("broker{i}.log"));
        let mut cmd = Command::new(&exe);
        cmd.args(["broker", "--node-id", &i.to_string(), "--address", h, "--grpc-address", g, "--bootstrap", "true"])
            .args(["--initial-members", &members])
            .arg("--data-dir")
            .arg(dir.join(format!("broker{i}")))
            .env_remove("RUST_LOG");
        secret_env(
            &mut cmd,
            &[
                ("MOONRAFT_ADMIN_TOKEN", |c| &c.admin_token),
                ("MOONRAFT_READ_TOKEN", |c| &c.read_token),
                ("MOONRAFT_CLUSTER_SECRET", |c| &c.cluster_secret),
                ("MOONRAFT_PROXY_ADMIN_PASSWORD", |c| &c.proxy_admin_password),
            ],
        );
        let mut r = spawn("broker", h, &mut cmd, &log)?;
        wait_port(h, &mut r.child, "broker", &log)?;
        children.push(r);
    }
    let grpc = l.brokers.iter().map(|(_, _, g)| g.clone()).collect::<Vec<_>>().join(",");
    for (i, c) in l.coordinators.iter().enumerate() {
        let log = logs.join(format!("coordinator{}.log", i + 1));
        let mut cmd = Command::new(&exe);
        cmd.args([
            "coordinator",
            "--address",
            c,
            "--broker-address",
            &grpc,
            "--reporter-id",
            &format!("coordinator{}", i + 1),
            "--metrics-address",
            &metrics_address(c),
        ])
        .env_remove("RUST_LOG");
        secret_env(
            &mut cmd,
            &[
                ("MOONRAFT_TOKEN", |c| &c.admin_token),
                ("MOONRAFT_PROXY_ADMIN_PASSWORD", |c| &c.proxy_admin_password),
                // The coordinators' admin ports take the same admin password.
                ("MOONRAFT_ADMIN_PASSWORD", |c| &c.proxy_admin_password),
            ],
        );
        let mut r = spawn("coordinator", c, &mut cmd, &log)?;
        wait_port(c, &mut r.child, "coordinator", &log)?;
        children.push(r);
    }
    // Register every proxy as its own host (409 ALREADY_EXISTED on a resumed demo is fine).
    let api = &l.brokers[0].1;
    for (n, (p, nodes)) in l.proxies.iter().enumerate() {
        let body =
            format!(r#"{{"proxy_address":"{p}","nodes":["{}","{}"],"host":"host{}"}}"#, nodes[0], nodes[1], n + 1);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match http(api, "POST", "/api/v3/proxies/meta", &body, creds.as_ref().map(|c| c.admin_token.as_str())) {
                Ok((200, _)) => break,
                Ok((409, b)) if b.contains("ALREADY_EXISTED") => break,
                Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok((s, b)) => bail!("registering {p} failed: {s} {b}"),
                Err(e) => bail!("registering {p} failed: {e}"),
            }
        }
    }
    let ready = started.elapsed();
    write_demo_json(dir, &l, &children, creds.as_ref())?;
    print_summary(&o, &l, &children, ready, creds.as_ref());
    wait_for_signal();
    println!("\nstopping {} processes…", children.len());
    // Stop coordinators first (no failovers while the rest goes down), then the others.
    children.reverse();
    drop(children);
    println!("stopped.");
    Ok(())
}

fn pid_of(children: &[Running], role: &str, address: &str) -> u32 {
    children.iter().find(|c| c.role == role && c.address == address).map(|c| c.child.id()).unwrap_or(0)
}

fn write_demo_json(dir: &Path, l: &Layout, children: &[Running], creds: Option<&Credentials>) -> Result<()> {
    let json = serde_json::json!({
        "credentials": creds,
        "brokers": l.brokers.iter().map(|(i, h, g)| serde_json::json!({"id": i, "http": h, "grpc": g, "pid": pid_of(children, "broker", h)})).collect::<Vec<_>>(),
        "coordinators": l.coordinators.iter().map(|c| serde_json::json!({"address": c, "pid": pid_of(children, "coordinator", c)})).collect::<Vec<_>>(),
        "proxies": l.proxies.iter().enumerate().map(|(n, (p, nodes))| serde_json::json!({"address": p, "nodes": nodes, "host": format!("host{}", n + 1), "pid": pid_of(children, "proxy", p)})).collect::<Vec<_>>(),
        "redis": l.proxies.iter().flat_map(|(_, nodes)| nodes.iter()).map(|n| serde_json::json!({"address": n, "pid": pid_of(children, "redis", n)})).collect::<Vec<_>>(),
    });
    let path = dir.join("demo.json");
    let tmp = dir.join("demo.json.tmp");
    write_private(&tmp, &serde_json::to_vec_pretty(&json)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn print_summary(o: &Options, l: &Layout, children: &[Running], ready: Duration, creds: Option<&Credentials>) {
    println!(
        "moonraft demo: {} processes ready in {:.1} s (data in {})\n",
        children.len(),
        ready.as_secs_f64(),
        o.data_dir.display()
    );
    println!("{:<12} {:<18} {:<8} LOG", "ROLE", "ADDRESS", "PID");
    for c in children {
        let port = c.address.rsplit(':').next().unwrap_or_default();
        let log = match c.role.as_str() {
            "broker" => format!("broker{}.log", l.brokers.iter().find(|b| b.1 == c.address).map(|b| b.0).unwrap_or(0)),
            "coordinator" => {
                format!("coordinator{}.log", l.coordinators.iter().position(|x| *x == c.address).unwrap_or(0) + 1)
            }
            other => format!("{other}{port}.log"),
        };
        println!(
            "{:<12} {:<18} {:<8} {}",
            c.role,
            c.address,
            c.child.id(),
            o.data_dir.join("logs").join(log).display()
        );
    }
    let demo_json = o.data_dir.join("demo.json");
    match creds {
        Some(c) => {
            println!("\nCredentials (also in {} and {}):", demo_json.display(), o.data_dir.join("credentials.env").display());
            println!("  brokers  admin token     {}", c.admin_token);
            println!("  brokers  read token      {}", c.read_token);
            println!("  proxies  password        {}", c.password);
            println!("  proxies  admin password  {}", c.proxy_admin_password);
            println!("  redis    requirepass     {}", c.redis_password);
            println!(
                "\nTry:\n  source {}\n  curl -H \"Authorization: Bearer $MOONRAFT_TOKEN\" http://127.0.0.1:7799/api/v3/proxies/addresses\n  curl -H \"Authorization: Bearer $MOONRAFT_TOKEN\" -XPOST -H 'Content-Type: application/json' http://127.0.0.1:7799/api/v3/clusters/meta/mycluster -d '{{\"node_number\": 4}}'\n  redis-cli -c -p 6001 set a 1\n  moonraft ctl --broker 127.0.0.1:7800 clusters",
                o.data_dir.join("credentials.env").display()
            );
        }
        None => println!(
            "\nNo credentials (--insecure): anyone who reaches these ports controls them.\n\nTry:\n  curl http://127.0.0.1:7799/api/v3/proxies/addresses\n  curl -XPOST -H 'Content-Type: application/json' http://127.0.0.1:7799/api/v3/clusters/meta/mycluster -d '{{\"node_number\": 4}}'\n  redis-cli -c -p 6001 set a 1\n  moonraft ctl --broker 127.0.0.1:7800 clusters"
        ),
    }
    let token = if creds.is_some() { "-H \"Authorization: Bearer $MOONRAFT_READ_TOKEN\" " } else { "" };
    println!("\nMetrics (Prometheus):");
    for (_, h, _) in &l.brokers {
        println!("  broker       curl {token}http://{h}/metrics");
    }
    for c in &l.coordinators {
        println!("  coordinator  curl http://{}/metrics", metrics_address(c));
    }
    for (p, _) in &l.proxies {
        println!("  proxy        curl http://{}/metrics", metrics_address(p));
    }
    println!("\nPids are in {}. Ctrl-C stops everything.", demo_json.display());
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(crate::shutdown_signal());
}
