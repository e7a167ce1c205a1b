//! `moonraft demo` end to end: it starts everything on its fixed ports, registers the proxies,
//! writes demo.json, serves a cluster through redis-cli, resumes its state on a second start,
//! and leaves no process behind after SIGTERM. (The only test that owns fixed ports.)

mod common;

use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo owns fixed ports: its tests take turns.
static FIXED_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Started as the README does: from the directory holding the data dir, which is named relative
/// to it (redis-server once could not find its included config file that way).
fn start(dir: &std::path::Path, extra: &[&str]) -> Demo {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { panic!("{} has no parent", dir.display()) };
    let child = Command::new(BIN)
        .current_dir(parent)
        .arg("demo")
        .arg("--data-dir")
        .arg(name)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moonraft demo");
    Demo(child)
}

fn alive(pid: u64) -> bool {
    // A zombie (exited, not reaped by a parent that is gone) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn pids(json: &Value) -> Vec<u64> {
    ["brokers", "coordinators", "proxies", "redis"]
        .iter()
        .flat_map(|k| json[*k].as_array().cloned().unwrap_or_default())
        .map(|e| e["pid"].as_u64().unwrap_or(0))
        .collect()
}

fn wait_ready(dir: &std::path::Path) -> (Value, Duration) {
    let t = Instant::now();
    let file = dir.join("demo.json");
    let ok = eventually(Duration::from_secs(30), || file.exists());
    assert!(ok, "demo.json never appeared");
    let json: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    (json, t.elapsed())
}

/// Stops the demo with `signal` (TERM, or INT as Ctrl-C sends) and checks every pid it listed.
fn stop_with(mut demo: Demo, json: &Value, signal: &str) {
    let _ = Command::new("kill").args([&format!("-{signal}"), &demo.0.id().to_string()]).status();
    let status = demo.0.wait().unwrap();
    assert!(status.success(), "{status}");
    std::mem::forget(demo);
    let left: Vec<u64> = pids(json).into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn stop(demo: Demo, json: &Value) {
    stop_with(demo, json, "TERM")
}

/// The demo's generated credentials, from `demo.json`.
struct Creds {
    token: String,
    password: String,
}

impl Creds {
    fn of(json: &Value) -> Creds {
        let c = &json["credentials"];
        Creds {
            token: c["admin_token"].as_str().expect("admin_token in demo.json").to_owned(),
            password: c["password"].as_str().expect("password in demo.json").to_owned(),
        }
    }

    fn http(&self, addr: &str, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let bearer = format!("Bearer {}", self.token);
        http_with(addr, method, path, body, &[("Authorization", &bearer)]).unwrap()
    }

    /// redis-cli with the proxies' data password (`REDISCLI_AUTH`, as `credentials.env` sets).
    fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(args).env("REDISCLI_AUTH", &self.password).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }
}

#[test]
fn demo_starts_serves_resumes_and_cleans_up() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("demo");
    let data = dir.0.join("data");
    let demo = start(&data, &[]);
    let (json, _) = wait_ready(&data);
    assert_eq!(json["brokers"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["coordinators"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["proxies"].as_array().map(Vec::len), Some(6));
    assert_eq!(json["redis"].as_array().map(Vec::len), Some(12));
    assert_eq!(json["proxies"][4]["address"], "127.0.0.1:6005");
    assert_eq!(json["proxies"][4]["nodes"], serde_json::json!(["127.0.0.1:7009", "127.0.0.1:7010"]));
    assert!(pids(&json).iter().all(|p| *p > 0 && alive(*p)));
    // Secured by default: the generated credentials are in demo.json and credentials.env
    // (owner-only), and nothing answers without them.
    let creds = Creds::of(&json);
    use std::os::unix::fs::PermissionsExt;
    for f in ["demo.json", "credentials.env", "credentials.json"] {
        let mode = std::fs::metadata(data.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    let env = std::fs::read_to_string(data.join("credentials.env")).unwrap();
    assert!(env.contains(&format!("MOONRAFT_TOKEN={}", creds.token)) && env.contains(&creds.password));
    assert_eq!(http("127.0.0.1:7799", "GET", "/api/v3/proxies/addresses", None).unwrap().status, 401);
    assert!(redis_cli(&["-p", "6001", "UMCTL", "GETEPOCH"]).starts_with("NOPERM"));
    assert!(redis_cli(&["-p", "7001", "PING"]).starts_with("NOAUTH"), "redis-servers need their password");
    let addrs = creds.http("127.0.0.1:7799", "GET", "/api/v3/proxies/addresses", None).json();
    assert_eq!(addrs["addresses"].as_array().map(Vec::len), Some(6));
    let r = creds.http("127.0.0.1:7899", "POST", "/api/v3/clusters/meta/mycluster", Some(r#"{"node_number": 4}"#));
    assert_eq!(r.status, 200);
    let cluster = creds.http("127.0.0.1:7999", "GET", "/api/v3/clusters/meta/mycluster", None).json();
    let proxy =
        cluster["cluster"]["nodes"][0]["proxy_address"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(10), || creds.cli(&["-c", "-p", &proxy, "SET", "a", "1"]) == "OK"));
    assert_eq!(creds.cli(&["-c", "-p", "6001", "GET", "a"]), "1");
    // Every proxy serves /metrics on 9100 + its number; one of them answered the SET.
    let sets: f64 = (9101..=9106)
        .map(|port| {
            let r = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", None).expect("proxy /metrics");
            assert_eq!(r.status, 200);
            let text = String::from_utf8_lossy(&r.body).into_owned();
            text.lines()
                .filter(|l| l.starts_with(r#"moonraft_proxy_commands_total{command="set",result="ok"}"#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum();
    assert!(sets >= 1.0, "no proxy counted the SET");
    for port in [9799, 9798] {
        let r = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", None).expect("coordinator /metrics");
        assert!(String::from_utf8_lossy(&r.body).contains("moonraft_coordinator_sync_pushes_total"));
    }
    // The brokers' /metrics takes the read token like any other read.
    assert_eq!(http("127.0.0.1:7799", "GET", "/metrics", None).unwrap().status, 401);
    let broker = creds.http("127.0.0.1:7899", "GET", "/metrics", None);
    assert!(String::from_utf8_lossy(&broker.body).contains("moonraft_broker_raft_leader_id"));
    assert!(redis_cli(&["-c", "-p", "6001", "GET", "a"]).starts_with("NOAUTH"));
    let out = Command::new(BIN).args(["demo", "--data-dir"]).arg(dir.0.join("other")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not free"), "{}", String::from_utf8_lossy(&out.stderr));
    stop(demo, &json);

    // Resumed: same state, same credentials.
    std::fs::remove_file(data.join("demo.json")).unwrap();
    let demo = start(&data, &[]);
    let (json, _) = wait_ready(&data);
    assert_eq!(Creds::of(&json).token, creds.token);
    let names = creds.http("127.0.0.1:7799", "GET", "/api/v3/clusters/names", None).json();
    assert_eq!(names["names"], serde_json::json!(["mycluster"]));
    assert!(eventually(Duration::from_secs(15), || creds.cli(&["-c", "-p", "6001", "GET", "a"]) == "1"));
    stop(demo, &json);

    // --fresh --insecure: empty, and open as undermoon was.
    std::fs::remove_file(data.join("demo.json")).unwrap();
    let demo = start(&data, &["--fresh", "--insecure"]);
    let (json, ready) = wait_ready(&data);
    eprintln!("demo ready after {ready:?} (measured from the test's side)");
    assert!(json["credentials"].is_null());
    let names = http("127.0.0.1:7799", "GET", "/api/v3/clusters/names", None).unwrap().json();
    assert_eq!(names["names"], serde_json::json!([]));
    assert_eq!(redis_cli(&["-p", "6001", "UMCTL", "GETEPOCH"]).parse::<u64>().map(|e| e > 0), Ok(true));
    stop(demo, &json);
}

#[test]
fn demo_refuses_a_foreign_data_dir_and_missing_redis() {
    let dir = TempDir::new("demo-bad");
    std::fs::write(dir.0.join("something"), "not a demo").unwrap();
    let out = Command::new(BIN).args(["demo", "--data-dir"]).arg(&dir.0).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a demo data dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(dir.0.join("d"))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("redis-server was not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN).args(["demo", "--proxies", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxies must be a number from 1 to 9"));
}

/// `examples/walkthrough.sh` (the spec's walkthrough, with assertions at every step) against a
/// fresh demo, killing the broker leader before the scale-out; then Ctrl-C leaves nothing.
#[test]
fn the_walkthrough_passes_against_the_demo_with_a_leader_kill() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("walkthrough");
    let data = dir.0.join("data");
    let demo = start(&data, &[]);
    let (json, _) = wait_ready(&data);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/walkthrough.sh");
    let out =
        Command::new("bash").arg(script).env("DEMO_DIR", &data).env("KILL_BROKER_LEADER", "1").output().expect("bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("killed broker") && text.contains("walkthrough: all steps passed"), "{text}");
    stop_with(demo, &json, "INT");
}
