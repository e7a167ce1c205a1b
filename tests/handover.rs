//! A proxy restarted through its handover socket (`proxy/src/takeover.rs`,
//! `docs/operations.md#rolling-upgrade`): the new process takes the listening sockets and the
//! metadata from the running one, no connection is refused and no request fails; a metadata
//! change waits until the old process has stopped; a successor that cannot serve leaves the old
//! process serving.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Four clients that each open a connection per SET, as fast as they can, until stopped (or
/// 60 s / 25 000 writes each): what they saw.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|t| {
                let (s, a, f) = (stop.clone(), acknowledged.clone(), failures.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut i = 0;
                    while !s.load(Ordering::Relaxed) && Instant::now() < deadline && i < 25_000 {
                        let key = format!("key{t}-{i}");
                        let reply = Conn::try_connect(port).and_then(|mut c| {
                            c.set_timeout(Duration::from_secs(5));
                            c.try_cmd(&["SET", &key, &key])
                        });
                        match reply {
                            Ok(f) if f == simple("OK") => a.lock().unwrap_or_else(|e| e.into_inner()).push(key),
                            other => f.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{key}: {other:?}")),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writer { stop, acknowledged, failures, threads }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn progressed(&self, by: usize) -> bool {
        let from = self.acknowledged();
        eventually(Duration::from_secs(20), || self.acknowledged() >= from + by)
    }

    /// Stops the writer; (acknowledged keys, failures).
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let a = std::mem::take(&mut *self.acknowledged.lock().unwrap_or_else(|e| e.into_inner()));
        let f = std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        (a, f)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `moonraft proxy <args>` that is expected to give up: whether it exited within 20 s (it
/// is killed otherwise) and what it wrote to stderr.
fn run_proxy(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("proxy")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moonraft proxy");
    let exited = eventually(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (exited, stderr)
}

fn socket_in(dir: &TempDir) -> String {
    dir.0.join("proxy.sock").to_string_lossy().into_owned()
}

#[test]
fn a_new_process_takes_over_the_port_and_the_metadata_without_refusing_a_connection() {
    let dir = TempDir::new("handover");
    let socket = socket_in(&dir);
    // Left by a process that is gone: the first proxy starts afresh.
    std::fs::write(&socket, b"stale").expect("write a stale file");
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = ["--handover-socket", socket.as_str(), "--metrics-address", metrics.as_str()];
    let SingleProxy { proxy: mut old, a, b } = SingleProxy::start(&flags);
    assert!(without_colours(&old.log_text()).contains("handed_over=false"), "{}", old.log_text());
    let port = old.port;

    let writer = Writer::start(port);
    assert!(writer.progressed(50), "no writes before the restart");
    let new = Proxy::start_on(port, &flags).expect("the new process takes over");
    assert!(without_colours(&new.log_text()).contains("handed_over=true epoch=1"), "{}", new.log_text());
    assert!(
        eventually(Duration::from_secs(15), || !old.proc.is_running()),
        "the old process did not drain and exit:\n{}",
        old.log_text()
    );
    assert!(old.log_text().contains("drained after handing over"), "{}", old.log_text());
    assert!(writer.progressed(50), "no writes after the restart:\n{}", new.log_text());
    let (acknowledged, failures) = writer.finish();
    assert!(failures.is_empty(), "{} writes failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);

    // The metadata came along: same epoch, same routing, no SETCLUSTER sent to the new one.
    let mut c = new.conn();
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), moonraft_proxy::resp::Frame::Integer(1));
    for key in &acknowledged {
        let node = if moonraft_proxy::slot::key_slot(key.as_bytes()) < 8192 { &a } else { &b };
        assert_eq!(node.conn().cmd(&["GET", key]), bulk(key), "{key} on its node");
    }
    assert_eq!(c.cmd(&["GET", &acknowledged[0]]), bulk(&acknowledged[0]));
    // And so did the /metrics port, now answered by the new process.
    let page = http(&metrics, "GET", "/metrics", None).expect("scrape the new process");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("moonraft_proxy_"), "a proxy's metrics page");
    println!("handover: {} writes acknowledged, none failed", acknowledged.len());
}

#[test]
fn a_metadata_change_waits_until_the_old_process_has_stopped() {
    let dir = TempDir::new("handover");
    let socket = socket_in(&dir);
    let flags = ["--handover-socket", socket.as_str(), "--drain-timeout", "60000"];
    let SingleProxy { proxy: mut old, a, b: _b } = SingleProxy::start(&flags);
    let port = old.port;
    // A transaction in progress: not quiet, so the old process keeps this connection.
    let mut held = old.conn();
    assert_eq!(held.cmd(&["MULTI"]), simple("OK"));
    assert_eq!(held.cmd(&["SET", "{x}held", "1"]), simple("QUEUED"));

    let new = Proxy::start_on(port, &flags).expect("the new process takes over");
    assert!(old.proc.is_running(), "the old process keeps draining its open transaction");
    // A third process must wait: the second one still has a predecessor that drains.
    let addr = new.addr();
    let (exited, said) = run_proxy(&["--address", &addr, "--handover-socket", &socket, "--handover-timeout", "600"]);
    assert!(exited && said.contains("still taking over"), "{said}");
    // New connections reach the new process, which serves the same metadata.
    let mut c = new.conn();
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), moonraft_proxy::resp::Frame::Integer(1));
    // A change: the old process is told to stop, and exits, before it is applied.
    let all = a.addr();
    let r = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "2", "NOFLAG", "test", &all, "1", "0-16383"]);
    assert_eq!(r, simple("OK"));
    assert!(
        eventually(Duration::from_secs(5), || !old.proc.is_running()),
        "the old process still runs after the change was applied:\n{}",
        old.log_text()
    );
    assert!(held.try_cmd(&["EXEC"]).is_err(), "the held connection was closed by the stop");
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), moonraft_proxy::resp::Frame::Integer(2));
    assert_eq!(c.cmd(&["SET", "k", "v"]), simple("OK"));
    assert_eq!(a.conn().cmd(&["GET", "k"]), bulk("v"), "routed by the new metadata");
}

#[test]
fn a_successor_that_cannot_serve_leaves_the_old_process_serving() {
    let dir = TempDir::new("handover");
    let socket = socket_in(&dir);
    let env = SingleProxy::start(&["--handover-socket", &socket]);
    // Another address than the running proxy's: it takes the sockets, refuses them and exits.
    let other = format!("127.0.0.1:{}", free_port());
    let (exited, stderr) = run_proxy(&["--address", &other, "--handover-socket", &socket]);
    assert!(exited, "the mismatched successor did not exit: {stderr}");
    assert!(stderr.contains("not on this one's address"), "{stderr}");
    // The old process serves again: new connections, same metadata, and it can hand over later.
    let mut c = Conn::connect(env.proxy.port);
    assert_eq!(c.cmd(&["SET", "a", "1"]), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), moonraft_proxy::resp::Frame::Integer(1));
    assert!(env.proxy.log_text().contains("no handover"), "{}", env.proxy.log_text());
    // It takes metadata changes again (a handover closes them while it takes its snapshot).
    let all = env.a.addr();
    let r = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "2", "NOFLAG", "test", &all, "1", "0-16383"]);
    assert_eq!(r, simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), moonraft_proxy::resp::Frame::Integer(2));
}

#[test]
fn a_connection_used_now_and_then_is_closed_between_its_commands() {
    let dir = TempDir::new("handover");
    let socket = socket_in(&dir);
    // A drain timeout far beyond the test: the old process must find this connection quiet.
    let flags = ["--handover-socket", socket.as_str(), "--drain-timeout", "60000"];
    let SingleProxy { proxy: mut old, a: _a, b: _b } = SingleProxy::start(&flags);
    let port = old.port;
    // Like a coordinator's probe connection: a command every 150 ms on one connection.
    let stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(Mutex::new(0u32));
    let pinger = {
        let (stop, pings) = (stop.clone(), pings.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = Conn::try_connect(port) else { return };
            c.set_timeout(Duration::from_secs(5));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.try_cmd(&["PING"]) {
                    Ok(f) if f == simple("PONG") => *pings.lock().unwrap_or_else(|e| e.into_inner()) += 1,
                    // Closed between two commands: a client reconnects (here: stops).
                    _ => return,
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    assert!(eventually(Duration::from_secs(5), || *pings.lock().unwrap_or_else(|e| e.into_inner()) >= 2));
    let _new = Proxy::start_on(port, &flags).expect("the new process takes over");
    let exited = eventually(Duration::from_secs(5), || !old.proc.is_running());
    stop.store(true, Ordering::Relaxed);
    let _ = pinger.join();
    assert!(exited, "the old process kept a connection that was quiet between commands:\n{}", old.log_text());
}
