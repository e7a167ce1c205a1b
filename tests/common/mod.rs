//! Helpers for end-to-end tests: real redis-server and moonraft processes on free loopback
//! ports, temp dirs, and a small blocking RESP client. Every process is killed on drop, so a
//! failing test leaves nothing behind.
#![allow(dead_code)]

use bytes::BytesMut;
use moonraft_proxy::resp::{Frame, Request};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_moonraft");

/// The binary brokers, proxies and coordinators are started from: `BIN`, unless a test set
/// another (`tests/upgrade.rs` starts a cluster on an older build).
static PROGRAM: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub fn set_program(path: &str) {
    *PROGRAM.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_owned());
}

pub fn program() -> String {
    PROGRAM.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| BIN.to_owned())
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "moonraft-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Option<Child>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly.
        if self.child.is_some() {
            self.signal("CONT");
        }
        self.kill();
    }
}

fn wait_ping(port: u16, proc: &mut Proc) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !proc.is_running() {
            return false;
        }
        if let Ok(mut c) = Conn::try_connect(port) {
            match c.try_cmd(&["PING"]) {
                Ok(Frame::Simple(s)) if s == "PONG" => return true,
                // A Redis with requirepass answers, just not to strangers.
                Ok(Frame::Error(e)) if e.starts_with("NOAUTH") => return true,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub struct Redis {
    pub port: u16,
    pub proc: Proc,
    pub dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Redis {
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("redis");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(extra)
                .arg("--dir")
                .arg(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (run scripts/setup.sh)");
            let mut proc = Proc { child: Some(child) };
            if wait_ping(port, &mut proc) {
                return Redis { port, proc, dir };
            }
        }
        panic!("could not start redis-server");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(self.port)
    }
}

pub struct Proxy {
    pub port: u16,
    pub proc: Proc,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Proxy {
    /// Starts a proxy on `port` (e.g. one registered with the brokers before it runs); `None`
    /// if it does not answer. `{port}` in `extra` stands for the port (a per-proxy path).
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Proxy> {
        let dir = TempDir::new("proxy");
        let log = dir.0.join("proxy.log");
        let child = Command::new(program())
            .arg("proxy")
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(extra.iter().map(|a| a.replace("{port}", &port.to_string())))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn moonraft proxy");
        let mut proc = Proc { child: Some(child) };
        // A proxy that serves TLS is asked through redis-cli --tls.
        let ca = extra.iter().position(|a| *a == "--tls-ca").and_then(|i| extra.get(i + 1));
        let up = match ca {
            Some(ca) => eventually(Duration::from_secs(10), || {
                proc.is_running() && redis_cli(&["--tls", "--cacert", ca, "-p", &port.to_string(), "PING"]) == "PONG"
            }),
            None => wait_ping(port, &mut proc),
        };
        // Something else on the port (another test's process that took it between
        // free_port() and this bind) also answers PING: only our own proxy's log says it bound.
        let ours = up
            && eventually(Duration::from_secs(5), || {
                proc.is_running() && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("proxy listening"))
            });
        ours.then_some(Proxy { port, proc, log, _dir: dir })
    }

    pub fn start(extra: &[&str]) -> Proxy {
        for _ in 0..5 {
            if let Some(p) = Proxy::start_on(free_port(), extra) {
                return p;
            }
        }
        panic!("could not start the proxy");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A blocking RESP client for tests.
pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn try_connect(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: BytesMut::new() })
    }

    pub fn connect(port: u16) -> Conn {
        Conn::try_connect(port).expect("connect")
    }

    pub fn set_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set timeout");
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write");
    }

    pub fn send(&mut self, args: &[&str]) {
        let req = Request::from_strs(args);
        self.send_raw(&req.raw);
    }

    /// Reads one reply; `Err` on EOF, timeout or a malformed reply.
    pub fn try_read(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some((frame, n)) = Frame::parse(&self.buf).map_err(std::io::Error::other)? {
                let _ = self.buf.split_to(n);
                return Ok(frame);
            }
            let mut chunk = [0u8; 65536];
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn read(&mut self) -> Frame {
        self.try_read().expect("read reply")
    }

    pub fn try_cmd(&mut self, args: &[&str]) -> std::io::Result<Frame> {
        let req = Request::from_strs(args);
        self.stream.write_all(&req.raw)?;
        self.try_read()
    }

    pub fn cmd(&mut self, args: &[&str]) -> Frame {
        self.send(args);
        self.read()
    }

    /// True when the peer has closed the connection (EOF) within `wait`.
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut b = [0u8; 1024];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

pub fn bulk(s: &str) -> Frame {
    Frame::bulk_str(s)
}

pub fn simple(s: &str) -> Frame {
    Frame::Simple(s.to_owned())
}

pub fn error_text(f: &Frame) -> String {
    match f {
        Frame::Error(e) => e.clone(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Runs redis-cli and returns stdout (trimmed).
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(args).output().expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// Waits until `f` returns true, up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A proxy in front of two fresh redis-servers owning all slots (node A 0-8191, B 8192-16383).
pub struct SingleProxy {
    pub proxy: Proxy,
    pub a: Redis,
    pub b: Redis,
}

impl SingleProxy {
    pub fn start(extra: &[&str]) -> SingleProxy {
        let a = Redis::start();
        let b = Redis::start();
        let proxy = Proxy::start(extra);
        let mut c = proxy.conn();
        if let Some(i) = extra.iter().position(|a| *a == "--admin-password") {
            assert_eq!(c.cmd(&["AUTH", "admin", extra[i + 1]]), simple("OK"));
        }
        let r = c.cmd(&[
            "UMCTL",
            "SETCLUSTER",
            "v2",
            "1",
            "NOFLAG",
            "test",
            &a.addr(),
            "1",
            "0-8191",
            &b.addr(),
            "1",
            "8192-16383",
        ]);
        assert_eq!(r, simple("OK"));
        SingleProxy { proxy, a, b }
    }
}

/// Two proxies, each with two redis-servers, splitting the slots: proxy 1 owns 0-8191, proxy 2
/// owns 8192-16383 (each of its nodes half of that).
pub struct TwoProxies {
    pub p1: Proxy,
    pub p2: Proxy,
    pub redis: Vec<Redis>,
}

impl TwoProxies {
    pub fn start() -> TwoProxies {
        let redis: Vec<Redis> = (0..4).map(|_| Redis::start()).collect();
        let p1 = Proxy::start(&[]);
        let p2 = Proxy::start(&[]);
        let (a1, a2, b1, b2) = (redis[0].addr(), redis[1].addr(), redis[2].addr(), redis[3].addr());
        let r = p1.conn().cmd(&[
            "UMCTL",
            "SETCLUSTER",
            "v2",
            "2",
            "NOFLAG",
            "mycluster",
            &a1,
            "1",
            "0-4095",
            &a2,
            "1",
            "4096-8191",
            "PEER",
            &p2.addr(),
            "1",
            "8192-16383",
        ]);
        assert_eq!(r, simple("OK"));
        let r = p2.conn().cmd(&[
            "UMCTL",
            "SETCLUSTER",
            "v2",
            "2",
            "NOFLAG",
            "mycluster",
            &b1,
            "1",
            "8192-12287",
            &b2,
            "1",
            "12288-16383",
            "PEER",
            &p1.addr(),
            "2",
            "0-4095",
            "4096-8191",
        ]);
        assert_eq!(r, simple("OK"));
        TwoProxies { p1, p2, redis }
    }
}

/// A minimal blocking HTTP/1.1 client for the broker tests (one request per connection).
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<HttpResponse> {
    http_with(addr, method, path, body, &[])
}

pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let body = body.unwrap_or("");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            let Some(chunk) = rest.get(nl + 2..nl + 2 + size).filter(|_| size > 0) else { break };
            out.extend_from_slice(chunk);
            rest = rest.get(nl + 2 + size + 2..).unwrap_or_default();
        }
        body = out;
    }
    Ok(HttpResponse { status, headers, body })
}

/// An HTTPS call with curl, verifying the server against the CA in `ca` (a PEM file). Only the
/// status and the body are returned.
pub fn https_with(
    addr: &str,
    ca: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "15", "--cacert", ca, "-X", method, "-w", "\n%{http_code}"]);
    for (n, v) in headers {
        cmd.arg("-H").arg(format!("{n}: {v}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("https://{addr}{path}")).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("curl exit {:?}", out.status.code())));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or_else(|| std::io::Error::other("no status"))?;
    let status = code.trim().parse().map_err(|_| std::io::Error::other("bad status"))?;
    Ok(HttpResponse { status, headers: Vec::new(), body: body.as_bytes().to_vec() })
}

/// One member of a broker group started as a real process.
pub struct BrokerProc {
    /// The `--admin-token` it was given, sent by the helpers that call it.
    pub token: Option<String>,
    /// The `--tls-ca` it was given: the helpers then call it over HTTPS (with curl).
    pub tls_ca: Option<String>,
    pub id: u64,
    pub http: String,
    pub grpc: String,
    pub proc: Proc,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl BrokerProc {
    /// A member with id `id` on the given (http, grpc) ports, its data dir and log under
    /// `dir`, fast Raft timing, plus `extra` flags. Not started yet.
    pub fn new(id: u64, (h, g): (u16, u16), dir: &std::path::Path, extra: &[&str]) -> BrokerProc {
        let data = dir.join(format!("b{id}"));
        let args: Vec<String> = [
            "--node-id",
            &id.to_string(),
            "--address",
            &format!("127.0.0.1:{h}"),
            "--grpc-address",
            &format!("127.0.0.1:{g}"),
            "--data-dir",
            data.to_str().expect("utf8 path"),
            "--heartbeat-interval-ms",
            "100",
            "--election-timeout-min-ms",
            "400",
            "--election-timeout-max-ms",
            "800",
            "--failure-purge-interval",
            "1",
        ]
        .iter()
        .chain(extra.iter())
        .map(|s| s.to_string())
        .collect();
        let flag =
            |name: &str| extra.iter().position(|a| *a == name).and_then(|i| extra.get(i + 1)).map(|t| t.to_string());
        BrokerProc {
            token: flag("--admin-token"),
            tls_ca: flag("--tls-ca"),
            id,
            http: format!("127.0.0.1:{h}"),
            grpc: format!("127.0.0.1:{g}"),
            proc: Proc { child: None },
            log: dir.join(format!("b{id}.log")),
            dir: data,
            args,
        }
    }

    pub fn spawn(&mut self) {
        let child = Command::new(program())
            .arg("broker")
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log"))
            .spawn()
            .expect("spawn moonraft broker");
        self.proc = Proc { child: Some(child) };
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        self.http("GET", "/api/v3/raft/status", None).ok().filter(|r| r.status == 200).map(|r| r.json())
    }

    /// An HTTP call to this member, with its admin token if it has one (over HTTPS if it
    /// serves TLS).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<HttpResponse> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        match &self.tls_ca {
            Some(ca) => https_with(&self.http, ca, method, path, body, &headers),
            None => http_with(&self.http, method, path, body, &headers),
        }
    }
}

/// A broker group of `n` members on free ports with fast elections, bootstrapped from config.
pub struct BrokerGroup {
    pub members: Vec<BrokerProc>,
    _dir: TempDir,
}

impl BrokerGroup {
    pub fn start(n: usize) -> BrokerGroup {
        BrokerGroup::start_with(n, &[])
    }

    /// Starts `n` members with `extra` flags added to each. A member that cannot bind its
    /// port (another test took it between `free_port` and the bind) makes the whole group
    /// start again on fresh ports.
    pub fn start_with(n: usize, extra: &[&str]) -> BrokerGroup {
        for _ in 0..5 {
            let dir = TempDir::new("brokers");
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial = ports
                .iter()
                .enumerate()
                .map(|(i, (h, g))| format!("{}=127.0.0.1:{g}/127.0.0.1:{h}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::new();
            for (i, (h, g)) in ports.iter().enumerate() {
                let mut flags: Vec<&str> = vec!["--bootstrap", "true", "--initial-members", &initial];
                flags.extend_from_slice(extra);
                let mut m = BrokerProc::new(i as u64 + 1, (*h, *g), &dir.0, &flags);
                m.spawn();
                members.push(m);
            }
            let mut group = BrokerGroup { members, _dir: dir };
            let settled = eventually(Duration::from_secs(10), || {
                group.members.iter_mut().all(|m| !m.proc.is_running() || m.status().is_some())
            });
            if !settled || group.members.iter_mut().any(|m| !m.proc.is_running()) {
                continue; // dropped: every member killed, ports released
            }
            assert!(group.wait_leader(Duration::from_secs(20)).is_some(), "no leader elected:\n{}", group.logs());
            return group;
        }
        panic!("could not start a broker group (ports kept being taken)");
    }

    /// Id of the leader every running member agrees on.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let mut leader = None;
        eventually(timeout, || {
            let ids: Vec<Option<u64>> = self
                .members
                .iter()
                .filter(|m| m.proc.child.is_some())
                .map(|m| m.status().and_then(|s| s["leader_id"].as_u64()))
                .collect();
            leader = ids.first().copied().flatten();
            leader.is_some() && ids.iter().all(|i| *i == leader)
        });
        leader
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- broker {} ---\n{}", m.id, std::fs::read_to_string(&m.log).unwrap_or_default()))
            .collect()
    }
}

impl BrokerGroup {
    /// An `/api/v3` call to any running member, retrying `RETRY`, `503` and connection errors
    /// for up to 10 s.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let live: Vec<&BrokerProc> = self.members.iter().filter(|m| m.proc.child.is_some()).collect();
        for attempt in 0..100 {
            let m = live[attempt % live.len()];
            match m.http(method, &format!("/api/v3{path}"), body) {
                Ok(r) if r.status == 409 && r.body.starts_with(b"{\"error\":\"RETRY\"") => {}
                Ok(r) if r.status == 503 => {}
                Ok(r) => return r,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{method} {path}: no answer from the broker group");
    }

    pub fn grpc_addresses(&self) -> String {
        self.members.iter().map(|m| m.grpc.clone()).collect::<Vec<_>>().join(",")
    }
}

/// One "host": a proxy in front of two redis-servers.
pub struct Host {
    pub proxy: Proxy,
    pub redis: [Redis; 2],
}

/// A `moonraft coordinator` process with its admin port.
pub struct Coordinator {
    pub proc: Proc,
    pub admin: u16,
    pub log: PathBuf,
    /// Its `--metrics-address`, as started (`{free_port}` resolved).
    pub metrics: Option<String>,
}

impl Coordinator {
    /// Starts a coordinator; retried on fresh ports if its admin port was taken meanwhile.
    /// `{free_port}` in `extra` stands for a port picked afresh on each try (a port chosen once
    /// may be taken by another test before the coordinator binds it).
    pub fn start(brokers: &str, dir: &std::path::Path, id: &str, extra: &[&str]) -> Coordinator {
        Coordinator::start_wrapped(&[], brokers, dir, id, extra)
    }

    /// Like `start`, run through `wrapper` (a command that ends by exec-ing its arguments,
    /// e.g. `setpriv …` or `unshare …`, so the process is still the coordinator).
    pub fn start_wrapped(
        wrapper: &[&str],
        brokers: &str,
        dir: &std::path::Path,
        id: &str,
        extra: &[&str],
    ) -> Coordinator {
        let log = dir.join(format!("coordinator-{id}.log"));
        for _ in 0..5 {
            let admin = free_port();
            let extra: Vec<String> = extra.iter().map(|a| a.replace("{free_port}", &free_port().to_string())).collect();
            let metrics = extra.iter().position(|a| a == "--metrics-address").and_then(|i| extra.get(i + 1)).cloned();
            let mut cmd = match wrapper.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(program());
                    c
                }
                None => Command::new(program()),
            };
            let child = cmd
                .arg("coordinator")
                .args(["--address", &format!("127.0.0.1:{admin}"), "--broker-address", brokers, "--reporter-id", id])
                .args(extra)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file"))
                .spawn()
                .expect("spawn moonraft coordinator");
            let mut proc = Proc { child: Some(child) };
            if wait_ping(admin, &mut proc) {
                return Coordinator { proc, admin, log, metrics };
            }
        }
        panic!("coordinator did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A counter of its `INFO` (e.g. `failure_reports`, `recoveries`); 0 if it cannot be read.
    pub fn info_counter(&self, field: &str) -> u64 {
        let Ok(mut c) = Conn::try_connect(self.admin) else { return 0 };
        c.set_timeout(Duration::from_secs(2));
        let Ok(Frame::Bulk(text)) = c.try_cmd(&["INFO"]) else { return 0 };
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.trim().strip_prefix(field).and_then(|r| r.strip_prefix(':')).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }
}

/// Registers a proxy with the brokers (it need not be running).
pub fn register_proxy(brokers: &BrokerGroup, address: &str, nodes: [&str; 2], host: &str) {
    let body = serde_json::json!({"proxy_address": address, "nodes": nodes, "host": host}).to_string();
    let r = brokers.call("POST", "/proxies/meta", Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `UMCTL GETEPOCH` of the proxy on `port`, if it answers.
pub fn proxy_epoch(port: u16) -> Option<u64> {
    let mut c = Conn::try_connect(port).ok()?;
    c.set_timeout(Duration::from_secs(2));
    match c.try_cmd(&["UMCTL", "GETEPOCH"]).ok()? {
        Frame::Integer(e) if e >= 0 => Some(e as u64),
        _ => None,
    }
}

/// The port of a `host:port` address.
pub fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("host:port")
}

/// The brokers' failed set.
pub fn failed_set(b: &BrokerGroup) -> Vec<String> {
    let v = b.call("GET", "/proxies/failed/addresses", None).json();
    v["addresses"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

/// Proxies with a failure record of any coordinator (quorum or not).
pub fn reported(b: &BrokerGroup) -> Vec<String> {
    let m = b.call("GET", "/metadata", None).json();
    m["failures"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// The proxies holding masters with slots in a cluster's JSON, in node order.
pub fn master_proxies(c: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["repl"]["role"] == "master" && n["slots"].as_array().is_some_and(|s| !s.is_empty()))
        .map(|n| n["proxy_address"].as_str().unwrap().to_owned())
        .collect();
    v.dedup();
    v
}

/// True if `f` holds at every check for the whole of `period` (checked every 50 ms).
pub fn always(period: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if !f() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The whole system on loopback: a 3-member broker group, `hosts` proxies (each registered as
/// its own host, with two redis-servers) and coordinators.
pub struct Stack {
    pub brokers: BrokerGroup,
    pub hosts: Vec<Host>,
    pub coordinators: Vec<Coordinator>,
    pub dir: TempDir,
}

/// Extra flags for every process of a `Stack` of each kind.
#[derive(Default)]
pub struct StackFlags<'a> {
    pub broker: &'a [&'a str],
    pub redis: &'a [&'a str],
    pub proxy: &'a [&'a str],
    pub coordinator: &'a [&'a str],
}

impl Stack {
    pub fn start(hosts: usize, coordinators: usize, coordinator_flags: &[&str]) -> Stack {
        Stack::start_with(hosts, coordinators, &StackFlags { coordinator: coordinator_flags, ..StackFlags::default() })
    }

    pub fn start_with(hosts: usize, coordinators: usize, flags: &StackFlags) -> Stack {
        let brokers = BrokerGroup::start_with(3, flags.broker);
        let dir = TempDir::new("stack");
        let mut list = Vec::new();
        for i in 0..hosts {
            let redis = [Redis::start_with(flags.redis), Redis::start_with(flags.redis)];
            let proxy = Proxy::start(flags.proxy);
            let body = serde_json::json!({
                "proxy_address": proxy.addr(),
                "nodes": [redis[0].addr(), redis[1].addr()],
                "host": format!("host{i}"),
            })
            .to_string();
            let r = brokers.call("POST", "/proxies/meta", Some(&body));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            list.push(Host { proxy, redis });
        }
        let grpc = brokers.grpc_addresses();
        let coordinators = (0..coordinators)
            .map(|i| Coordinator::start(&grpc, &dir.0, &format!("co{i}"), flags.coordinator))
            .collect();
        Stack { brokers, hosts: list, coordinators, dir }
    }

    pub fn host(&mut self, proxy_address: &str) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.proxy.addr() == proxy_address).expect("a host of this stack")
    }

    /// The cluster's JSON (`GET /clusters/meta/{name}`).
    pub fn cluster(&self, name: &str) -> serde_json::Value {
        self.brokers.call("GET", &format!("/clusters/meta/{name}"), None).json()["cluster"].clone()
    }

    pub fn logs(&self) -> String {
        let mut s = self.brokers.logs();
        for (i, c) in self.coordinators.iter().enumerate() {
            s.push_str(&format!("--- coordinator {i} ---\n{}", c.log_text()));
        }
        for h in &self.hosts {
            s.push_str(&format!("--- proxy {} ---\n{}", h.proxy.addr(), h.proxy.log_text()));
        }
        s
    }
}

/// A minimal Redis Cluster client: follows MOVED/ASK, retries TRYAGAIN/CLUSTERDOWN and
/// connection errors on another entry point until `deadline`.
pub struct ClusterClient {
    pub entry: Vec<u16>,
    /// `AUTH` sent on each connection first.
    pub password: Option<String>,
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

impl ClusterClient {
    pub fn cmd(&self, args: &[&str], timeout: Duration) -> Result<Frame, String> {
        let deadline = Instant::now() + timeout;
        let mut next = 0usize;
        let mut target: Option<u16> = None;
        let mut asking = false;
        let mut last = String::new();
        while Instant::now() < deadline {
            let port = target.unwrap_or(self.entry[next % self.entry.len()]);
            let reply = Conn::try_connect(port).and_then(|mut c| {
                c.set_timeout(Duration::from_secs(2));
                if let Some(p) = &self.password {
                    c.try_cmd(&["AUTH", p])?;
                }
                if asking {
                    c.try_cmd(&["ASKING"])?;
                }
                c.try_cmd(args)
            });
            asking = false;
            match reply {
                Ok(Frame::Error(e)) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                    asking = e.starts_with("ASK");
                    target = e.split(' ').nth(2).and_then(port_of);
                    last = e;
                    continue;
                }
                Ok(Frame::Error(e))
                    if e.starts_with("TRYAGAIN")
                        || e.starts_with("CLUSTERDOWN")
                        || e.starts_with("ERR_BACKEND")
                        || e.starts_with("ERR_CLUSTER_NOT_FOUND")
                        || e.starts_with("LOADING")
                        || e.starts_with("MASTERDOWN")
                        || e.starts_with("READONLY") =>
                {
                    last = e;
                }
                Ok(f) => return Ok(f),
                Err(e) => last = e.to_string(),
            }
            target = None;
            next += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{args:?}: no answer before the deadline (last: {last})"))
    }
}

/// Loads `key{i}` = `value{i}` for `i` in `range` straight into the masters (redis-cli --pipe),
/// routed by slot.
pub fn pipe_load(s: &Stack, range: std::ops::Range<usize>) {
    use moonraft_proxy::slot::key_slot;
    use std::io::Write;
    let cluster = s.cluster("c");
    let mut owner = vec![String::new(); 16384];
    for n in cluster["nodes"].as_array().unwrap().iter().filter(|n| n["repl"]["role"] == "master") {
        for r in n["slots"].as_array().unwrap() {
            for pair in r["range_list"].as_array().unwrap() {
                for slot in pair[0].as_u64().unwrap()..=pair[1].as_u64().unwrap() {
                    owner[slot as usize] = n["address"].as_str().unwrap().to_owned();
                }
            }
        }
    }
    let mut per_node: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    for i in range {
        let (k, v) = (format!("key{i}"), format!("value{i}"));
        let buf = per_node.entry(owner[key_slot(k.as_bytes()) as usize].clone()).or_default();
        buf.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).as_bytes());
    }
    for (node, data) in per_node {
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &port_of_addr(&node).to_string(), "--pipe"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().unwrap().write_all(&data).unwrap();
        assert!(child.wait().unwrap().success());
    }
}

/// A log without its colour codes.
pub fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The sum of `pulled=N` over a proxy log's "migration finished" lines (colour codes removed).
pub fn pulled_in_log(log: &str) -> u64 {
    without_colours(log)
        .lines()
        .filter(|l| l.contains("migration finished"))
        .filter_map(|l| l.split("pulled=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `moonraft ctl --broker <brokers> …`, retrying a `RETRY` answer (an election) briefly.
pub struct Ctl {
    pub brokers: String,
}

impl Ctl {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        // A run may meet an election right after start-up: retry RETRY answers briefly.
        for _ in 0..50 {
            let out = Command::new(BIN)
                .arg("ctl")
                .arg("--broker")
                .arg(&self.brokers)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run moonraft ctl");
            if !String::from_utf8_lossy(&out.stderr).contains("error: RETRY") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ctl {args:?}: still RETRY");
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("ctl --json prints JSON")
    }

    /// Exit code and stderr of a failing run.
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "ctl {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits (at most 10 s) until the proxy on `port` lists a client blocked in `command`
/// (`CLIENT LIST`: `flags` with `b`, `cmd=<command>`).
pub fn wait_blocked(port: u16, command: &str) -> bool {
    let wanted = format!("cmd={command}");
    eventually(Duration::from_secs(10), || {
        let mut c = match Conn::try_connect(port) {
            Ok(c) => c,
            Err(_) => return false,
        };
        let Ok(Frame::Bulk(list)) = c.try_cmd(&["CLIENT", "LIST"]) else { return false };
        String::from_utf8_lossy(&list).lines().any(|l| {
            l.split(' ').any(|f| f == wanted)
                && l.split(' ').any(|f| f.strip_prefix("flags=").is_some_and(|flags| flags.contains('b')))
        })
    })
}
