//! Credentials on every surface, with real processes: the brokers' `/api/v3` and gRPC
//! services (admin token, read token, none, wrong), Raft traffic between members (the group
//! secret), `moonraft ctl`, the proxy's admin commands (`UMCTL`, `UMSYNC`, `UMREAD`,
//! `CONFIG SET`) and data commands, and a whole secured system (password-protected Redis
//! behind the proxies) that still migrates slots and fails over.

mod common;

use common::*;
use moonraft_proto::broker as pb;
use moonraft_proto::broker::broker_api_client::BrokerApiClient;
use moonraft_proto::raft::raft_internal_client::RaftInternalClient;
use moonraft_proxy::resp::Frame;
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::Code;

const ADMIN: &str = "adm-7f3e9a";
const READ: &str = "rd-51c2d8";
const GROUP: &str = "grp-90ab44";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// One HTTP call with an optional `Authorization` value; retries `RETRY` during elections.
fn call(addr: &str, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
    for _ in 0..100 {
        match http_with(addr, method, path, body, &headers) {
            Ok(r) if r.status == 409 && r.body.starts_with(b"{\"error\":\"RETRY\"") => {}
            Ok(r) => return r,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{method} {path}: no answer");
}

/// A gRPC request carrying `token` as a bearer token, if any.
fn with<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", bearer(t).parse().unwrap());
    }
    r
}

fn secured_group() -> BrokerGroup {
    BrokerGroup::start_with(3, &["--admin-token", ADMIN, "--read-token", READ, "--cluster-secret", GROUP])
}

#[test]
fn http_api_needs_the_right_token_on_every_member() {
    let group = secured_group();
    let wrong = bearer("nope");
    let (read, admin) = (bearer(READ), bearer(ADMIN));
    for (i, m) in group.members.iter().enumerate() {
        // A read: none and wrong → 401, read and admin → 200.
        for auth in [None, Some(wrong.as_str())] {
            let r = call(&m.http, "GET", "/api/v3/clusters/names", None, auth);
            assert_eq!((r.status, r.error_code()), (401, "UNAUTHORIZED".to_owned()), "member {i} {auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        for auth in [&read, &admin] {
            let r = call(&m.http, "GET", "/api/v3/clusters/names", None, Some(auth));
            assert_eq!(r.status, 200, "member {i}");
        }
        // A write, through every member (followers forward it with the group secret): none and
        // wrong → 401, read → 403, admin → 200.
        let body = format!(r#"{{"proxy_address":"10.9.9.{i}:6000","nodes":["10.9.9.{i}:7000","10.9.9.{i}:7001"]}}"#);
        for auth in [None, Some(wrong.as_str())] {
            let r = call(&m.http, "POST", "/api/v3/proxies/meta", Some(&body), auth);
            assert_eq!((r.status, r.error_code()), (401, "UNAUTHORIZED".to_owned()), "member {i}");
        }
        let r = call(&m.http, "POST", "/api/v3/proxies/meta", Some(&body), Some(&read));
        assert_eq!((r.status, r.error_code()), (403, "FORBIDDEN".to_owned()), "member {i}");
        let r = call(&m.http, "POST", "/api/v3/proxies/meta", Some(&body), Some(&admin));
        assert_eq!(r.status, 200, "member {i}: {}", String::from_utf8_lossy(&r.body));
    }
    // The OpenAPI document is public (tools fetch it before they have a token); it says how to
    // authenticate.
    let r = call(&group.members[1].http, "GET", "/api/v3/openapi.json", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // Nothing refused got in; every admitted write did.
    let r = call(&group.members[0].http, "GET", "/api/v3/proxies/addresses", None, Some(&read));
    assert_eq!(r.json()["addresses"].as_array().map(Vec::len), Some(3));
    // The tokens are nowhere in the logs.
    let logs = group.logs();
    for secret in [ADMIN, READ, GROUP] {
        assert!(!logs.contains(secret), "a credential was logged");
    }
}

#[test]
fn grpc_services_and_raft_traffic_need_their_credentials() {
    let group = secured_group();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for m in &group.members {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap().connect_lazy();
            let mut api = BrokerApiClient::new(channel.clone());
            // Reads.
            for token in [None, Some("nope")] {
                let s = api.get_cluster_names(with(token, pb::Page::default())).await.unwrap_err();
                assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
            }
            for token in [READ, ADMIN] {
                let mut answered = false;
                for _ in 0..50 {
                    match api.get_cluster_names(with(Some(token), pb::Page::default())).await {
                        Ok(_) => {
                            answered = true;
                            break;
                        }
                        Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(s) => panic!("{s:?}"),
                    }
                }
                assert!(answered);
            }
            // Writes: the read token is not enough.
            let s = api.force_epoch(with(None, pb::Epoch { epoch: 1 })).await.unwrap_err();
            assert_eq!(s.code(), Code::Unauthenticated);
            let s = api.force_epoch(with(Some(READ), pb::Epoch { epoch: 1 })).await.unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied);
            // Raft traffic: only the group secret (not even the admin token) gets past the door;
            // then the garbage payload is refused as such.
            let mut raft = RaftInternalClient::new(channel.clone());
            for token in [None, Some(ADMIN), Some(READ)] {
                let s = raft.vote(with(token, moonraft_proto::raft::RaftMessage { payload: b"{}".to_vec() })).await;
                assert_eq!(s.unwrap_err().code(), Code::Unauthenticated, "{token:?}");
            }
            let s = raft.vote(with(Some(GROUP), moonraft_proto::raft::RaftMessage { payload: b"{}".to_vec() })).await;
            assert_eq!(s.unwrap_err().code(), Code::InvalidArgument);
        }
    });
    // The group itself works: members elected a leader and replicate (they send the secret).
    assert!(group.wait_leader(Duration::from_secs(10)).is_some());
}

#[test]
fn ctl_takes_a_token() {
    let group = secured_group();
    let ctl = |env_token: Option<&str>, args: &[&str]| {
        for _ in 0..50 {
            let mut cmd = Command::new(BIN);
            cmd.arg("ctl").arg("--broker").arg(group.grpc_addresses()).args(args).stdin(Stdio::null());
            cmd.env_remove("MOONRAFT_TOKEN");
            if let Some(t) = env_token {
                cmd.env("MOONRAFT_TOKEN", t);
            }
            let out = cmd.output().expect("run moonraft ctl");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if !stderr.contains("error: RETRY") {
                return (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ctl {args:?}: still RETRY");
    };
    let (code, _, err) = ctl(None, &["epoch"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("UNAUTHORIZED") && err.contains("--token"), "{err}");
    let (code, out, err) = ctl(None, &["--token", READ, "epoch"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty());
    let (code, _, err) =
        ctl(None, &["--token", READ, "proxy", "register", "10.1.1.1:6000", "10.1.1.1:7000", "10.1.1.1:7001"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("FORBIDDEN"), "{err}");
    let (code, _, err) = ctl(Some(ADMIN), &["proxy", "register", "10.1.1.1:6000", "10.1.1.1:7000", "10.1.1.1:7001"]);
    assert_eq!(code, Some(0), "{err}");
    let dir = TempDir::new("ctl-token");
    let file = dir.0.join("token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let (code, out, err) = ctl(None, &["--token-file", file.to_str().unwrap(), "--json", "proxies"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("10.1.1.1:6000"), "{out}");
}

#[test]
fn a_broker_refuses_a_read_token_without_an_admin_token() {
    let dir = TempDir::new("broker-tokens");
    let out = Command::new(BIN)
        .args(["broker", "--node-id", "1", "--data-dir"])
        .arg(dir.0.join("d"))
        .args(["--read-token", READ, "--address", "127.0.0.1:0", "--grpc-address", "127.0.0.1:0"])
        .output()
        .expect("run moonraft broker");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read_token needs admin_token"), "{err}");
    assert!(!err.contains(READ), "the token is not echoed: {err}");
}

fn err_of(f: Frame) -> String {
    match f {
        Frame::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn proxy_admin_commands_need_the_admin_password() {
    let p = SingleProxy::start(&["--admin-password", "padm", "--password", "pdata"]);
    let mut c = p.proxy.conn();
    // No credential: admin commands → NOPERM, data commands → NOAUTH.
    for cmd in [
        &["UMCTL", "GETEPOCH"][..],
        &["UMCTL", "SETCLUSTER", "v2", "99", "FORCE", "evil", "1.2.3.4:1", "1", "0-16383"],
        &["UMSYNC", "x"],
        &["UMREAD", "a", "b"],
        &["UMFORWARD", "0", "GET", "k"],
        &["CONFIG", "SET", "slowlog_sample_rate", "1"],
    ] {
        assert!(err_of(c.cmd(cmd)).starts_with("NOPERM"), "{cmd:?}");
    }
    assert!(err_of(c.cmd(&["GET", "k"])).starts_with("NOAUTH"));
    // Wrong credentials: one message whatever was wrong.
    let wrong = "WRONGPASS invalid username-password pair or user is disabled.";
    for cmd in [
        &["AUTH", "nope"][..],
        &["AUTH", "default", "nope"],
        &["AUTH", "admin", "nope"],
        &["AUTH", "admin", "pdata"],
        &["AUTH", "root", "padm"],
    ] {
        assert_eq!(err_of(c.cmd(cmd)), wrong, "{cmd:?}");
    }
    // The data password opens data commands, not admin ones.
    assert_eq!(c.cmd(&["AUTH", "pdata"]), simple("OK"));
    assert_eq!(c.cmd(&["SET", "k", "v"]), simple("OK"));
    assert!(err_of(c.cmd(&["UMCTL", "GETEPOCH"])).starts_with("NOPERM"));
    assert!(err_of(c.cmd(&["UMFORWARD", "0", "GET", "k"])).starts_with("NOPERM"));
    // The admin password opens everything.
    assert_eq!(c.cmd(&["AUTH", "admin", "padm"]), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1));
    assert!(!err_of(c.cmd(&["UMSYNC", "x"])).starts_with("NOPERM"));
    let mut admin_only = p.proxy.conn();
    assert_eq!(admin_only.cmd(&["AUTH", "admin", "padm"]), simple("OK"));
    assert_eq!(admin_only.cmd(&["GET", "k"]), bulk("v"));
    let mut hello = p.proxy.conn();
    assert!(matches!(hello.cmd(&["HELLO", "3", "AUTH", "admin", "padm"]), Frame::Map(_)));
    assert_eq!(hello.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1));
    // Nothing refused changed the routing.
    assert_eq!(admin_only.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1));
}

#[test]
fn without_an_admin_password_inter_proxy_reads_still_obey_the_data_password() {
    let p = SingleProxy::start(&["--password", "pdata"]);
    let mut c = p.proxy.conn();
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1), "UMCTL open without admin_password");
    assert!(err_of(c.cmd(&["UMREAD", "a", "b"])).starts_with("NOAUTH"));
    assert!(err_of(c.cmd(&["UMSYNC", "x"])).starts_with("NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "default", "pdata"]), simple("OK"));
    assert!(!err_of(c.cmd(&["UMSYNC", "x"])).starts_with("NOAUTH"));
}

#[test]
fn a_push_meant_for_another_proxy_is_refused() {
    let p = SingleProxy::start(&[]);
    let mut c = p.proxy.conn();
    let r = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "5", "TARGET=10.0.0.1:6000", "evil", "1.2.3.4:1", "1", "0-16383"]);
    assert_eq!(err_of(r), "ERR_NOT_MY_META");
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1), "the routing did not change");
    let own = format!("TARGET={}", p.proxy.addr());
    let r = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "5", &own, "test", &p.a.addr(), "1", "0-16383"]);
    assert_eq!(r, simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(5));
}

/// Everything secured at once: brokers with tokens and a group secret, proxies with data and
/// admin passwords in front of Redis with `requirepass`, coordinators with the token and the
/// proxies' admin password. The cluster is created, written, scaled out (proxies copy keys
/// from each other and from password-protected Redis) and fails over (replicas sync from
/// password-protected masters), and no write is lost.
#[test]
fn a_secured_system_migrates_and_fails_over() {
    let broker =
        ["--admin-token", ADMIN, "--read-token", READ, "--cluster-secret", GROUP, "--proxy-admin-password", "padm"];
    let proxy = ["--admin-password", "padm", "--password", "pdata", "--backend-password", "rpass"];
    let coordinator = ["--token", ADMIN, "--proxy-admin-password", "padm"];
    let mut s = Stack::start_with(
        4,
        2,
        &StackFlags { broker: &broker, redis: &["--requirepass", "rpass"], proxy: &proxy, coordinator: &coordinator },
    );
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number":4}"#)).status, 200);
    let entry: Vec<u16> = s.hosts.iter().map(|h| h.proxy.port).collect();
    let client = ClusterClient { entry, password: Some("pdata".into()) };
    for i in 0..200 {
        let k = format!("key{i}");
        assert_eq!(client.cmd(&["SET", &k, &i.to_string()], Duration::from_secs(20)), Ok(simple("OK")), "{}", s.logs());
    }
    // Scale out: slots move between proxies.
    assert_eq!(s.brokers.call("POST", "/clusters/migrations/auto/c/8", None).status, 200, "{}", s.logs());
    let migrated = eventually(Duration::from_secs(60), || {
        let c = s.cluster("c");
        c["nodes"].as_array().is_some_and(|n| n.len() == 8)
            && c["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().all(|n| n["slots"].as_array().is_some_and(|sl| sl.iter().all(|x| x["tag"] == "None")))
            })
    });
    assert!(migrated, "migration did not finish:\n{}", s.logs());
    for i in 0..200 {
        let k = format!("key{i}");
        assert_eq!(client.cmd(&["GET", &k], Duration::from_secs(20)), Ok(bulk(&i.to_string())), "{k}");
    }
    // Replicas sync from password-protected masters (the proxies set masterauth): wait until
    // every replica holds what its master holds, so that the failover below loses nothing.
    let dbsize = |addr: &str| -> Option<i64> {
        let mut c = Conn::try_connect(port_of_addr(addr)).ok()?;
        c.set_timeout(Duration::from_secs(2));
        c.try_cmd(&["AUTH", "rpass"]).ok()?;
        match c.try_cmd(&["DBSIZE"]).ok()? {
            Frame::Integer(n) => Some(n),
            _ => None,
        }
    };
    let in_sync = eventually(Duration::from_secs(30), || {
        let c = s.cluster("c");
        c["nodes"].as_array().is_some_and(|nodes| {
            nodes.iter().filter(|n| n["repl"]["role"] == "replica").all(|n| {
                let replica = n["address"].as_str().unwrap_or_default();
                let master = n["repl"]["peers"][0]["node_address"].as_str().unwrap_or_default();
                let (r, m) = (dbsize(replica), dbsize(master));
                r.is_some() && r == m
            })
        })
    });
    assert!(in_sync, "replicas did not sync from password-protected masters:\n{}", s.logs());
    // Fail over: kill a proxy that holds masters; its replicas take over and the keys are
    // still there.
    let victim = master_proxies(&s.cluster("c"))[0].clone();
    s.host(&victim).proxy.proc.kill();
    let failed_over = eventually(Duration::from_secs(30), || !master_proxies(&s.cluster("c")).contains(&victim));
    assert!(failed_over, "no failover:\n{}", s.logs());
    let alive: Vec<u16> = s.hosts.iter().filter(|h| h.proxy.addr() != victim).map(|h| h.proxy.port).collect();
    let client = ClusterClient { entry: alive, password: Some("pdata".into()) };
    for i in 0..200 {
        let k = format!("key{i}");
        assert_eq!(client.cmd(&["GET", &k], Duration::from_secs(30)), Ok(bulk(&i.to_string())), "{k}");
    }
    let logs = s.logs();
    for secret in [ADMIN, READ, GROUP, "padm", "pdata", "rpass"] {
        assert!(!logs.contains(secret), "a credential was logged");
    }
}

#[test]
fn the_coordinator_admin_port_needs_its_password() {
    let group = BrokerGroup::start(1);
    let dir = TempDir::new("co-admin");
    let co = Coordinator::start(&group.grpc_addresses(), &dir.0, "co", &["--admin-password", "cpw"]);
    let mut c = Conn::connect(co.admin);
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
    for cmd in [&["CONFIG", "GET", "brokers"][..], &["CONFIG", "SET", "brokers", "evil:1"], &["INFO"]] {
        assert!(err_of(c.cmd(cmd)).starts_with("NOAUTH"), "{cmd:?}");
    }
    assert!(err_of(c.cmd(&["AUTH", "nope"])).starts_with("WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "cpw"]), simple("OK"));
    assert_eq!(c.cmd(&["CONFIG", "GET", "brokers"]), bulk(&group.grpc_addresses()), "nothing refused changed it");
}

/// A process without credentials says once that it is open, and warnings about the config
/// file (read before logging is set up) reach the log.
#[test]
fn open_roles_and_unknown_keys_are_reported_at_start() {
    let dir = TempDir::new("warn");
    let file = dir.0.join("proxy.toml");
    std::fs::write(&file, "slowlog_len = 10\nno_such_key = 1\n").unwrap();
    let proxy = Proxy::start(&[file.to_str().unwrap()]);
    let ready = eventually(Duration::from_secs(5), || {
        let log = proxy.log_text();
        log.contains("ignoring unknown key \"no_such_key\"") && log.contains("no admin_password")
    });
    assert!(ready, "{}", proxy.log_text());
    assert_eq!(proxy.log_text().matches("no admin_password").count(), 1);
    // The warning is written before the proxy listens, so once it answers PING it is there.
    let secured = Proxy::start(&["--admin-password", "x"]);
    assert!(!secured.log_text().contains("no admin_password"), "{}", secured.log_text());
}

/// A CA and a server certificate for 127.0.0.1, made with the `openssl` command.
struct Certs {
    _dir: TempDir,
    ca: String,
    cert: String,
    key: String,
}

fn certs() -> Certs {
    let dir = TempDir::new("certs");
    let path = |f: &str| dir.0.join(f).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key, cert, key, csr, ext) =
        (path("ca.pem"), path("ca.key"), path("server.pem"), path("server.key"), path("server.csr"), path("ext"));
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", "/CN=moonraft test CA"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    Certs { _dir: dir, ca, cert, key }
}

/// The same answers over TLS: HTTPS and gRPC-over-TLS on every member, Raft between members
/// over TLS, `moonraft ctl --tls-ca`, a coordinator that syncs a proxy through TLS brokers;
/// plain TCP and unverified clients get nowhere.
#[test]
fn brokers_serve_tls_with_the_same_credentials() {
    let c = certs();
    let tls = ["--tls-cert", c.cert.as_str(), "--tls-key", c.key.as_str(), "--tls-ca", c.ca.as_str()];
    let flags: Vec<&str> = [&["--admin-token", ADMIN, "--read-token", READ][..], &tls].concat();
    // Started means: every member answered /raft/status over HTTPS and they elected a leader
    // over TLS Raft RPCs.
    let group = BrokerGroup::start_with(3, &flags);
    let (read, admin) = (bearer(READ), bearer(ADMIN));
    for (i, m) in group.members.iter().enumerate() {
        let get = |auth: Option<&str>| {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            https_with(&m.http, &c.ca, "GET", "/api/v3/clusters/names", None, &headers).unwrap().status
        };
        assert_eq!(get(None), 401, "member {i}");
        assert_eq!(get(Some("Bearer nope")), 401);
        assert_eq!(get(Some(&read)), 200);
        let body = format!(r#"{{"proxy_address":"10.8.8.{i}:6000","nodes":["10.8.8.{i}:7000","10.8.8.{i}:7001"]}}"#);
        let post = |auth: &str| {
            https_with(&m.http, &c.ca, "POST", "/api/v3/proxies/meta", Some(&body), &[("Authorization", auth)]).unwrap()
        };
        assert_eq!(post(&read).status, 403);
        let mut ok = false;
        for _ in 0..50 {
            let r = post(&admin);
            if r.status == 200 {
                ok = true;
                break;
            }
            assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "member {i}: the write never went through");
        // Plain HTTP on the TLS port, and HTTPS without our CA, get nothing.
        assert!(http(&m.http, "GET", "/api/v3/clusters/names", None).map(|r| r.status != 200).unwrap_or(true));
        let unverified = Command::new("curl")
            .args(["-s", "-o", "/dev/null", &format!("https://{}/api/v3/version", m.http)])
            .status()
            .unwrap();
        assert_eq!(unverified.code(), Some(60), "curl must refuse a certificate it cannot verify");
    }
    // ctl over TLS.
    let ctl = |args: &[&str]| {
        Command::new(BIN).arg("ctl").arg("--broker").arg(group.grpc_addresses()).args(args).output().unwrap()
    };
    let out = ctl(&["--tls-ca", &c.ca, "--token", READ, "--json", "proxies"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.8.8.2:6000"));
    let out = ctl(&["--tls-ca", &c.ca, "proxies"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHORIZED"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&["--token", READ, "proxies"]);
    assert!(!out.status.success(), "plain gRPC to a TLS port must fail");
    // Raft traffic over TLS: without the group secret (here the admin token) nothing gets in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pem = std::fs::read(&c.ca).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name("127.0.0.1");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", group.members[0].grpc)).unwrap();
        let mut raft = RaftInternalClient::new(endpoint.tls_config(tls).unwrap().connect_lazy());
        let garbage = || moonraft_proto::raft::RaftMessage { payload: b"{}".to_vec() };
        for token in [None, Some(READ)] {
            assert_eq!(raft.vote(with(token, garbage())).await.unwrap_err().code(), Code::Unauthenticated);
        }
        assert_eq!(raft.vote(with(Some(ADMIN), garbage())).await.unwrap_err().code(), Code::InvalidArgument);
    });
    // A coordinator syncs a proxy through the TLS brokers.
    let redis = [Redis::start(), Redis::start()];
    let proxy = Proxy::start(&[]);
    register_proxy(&group, &proxy.addr(), [&redis[0].addr(), &redis[1].addr()], "h1");
    let dir = TempDir::new("tls-co");
    let _co = Coordinator::start(&group.grpc_addresses(), &dir.0, "co", &["--token", ADMIN, "--tls-ca", &c.ca]);
    assert!(eventually(Duration::from_secs(15), || proxy_epoch(proxy.port).is_some_and(|e| e > 0)), "{}", group.logs());
}

/// Proxies serving TLS on their client port: clients connect with TLS (redis-cli --tls,
/// following MOVED to other TLS proxies), plain clients get nothing, brokers (`auto` asks the
/// proxies their epoch) and coordinators reach the proxies over TLS, and during a scale-out a
/// client rewriting keys makes the destination proxies pull them from the sources — over TLS.
#[test]
fn proxies_serve_tls_and_migrate_over_tls() {
    use std::io::{BufRead, Write};
    let c = certs();
    let proxy = ["--tls-cert", c.cert.as_str(), "--tls-key", c.key.as_str(), "--tls-ca", c.ca.as_str()];
    let s = Stack::start_with(
        4,
        1,
        &StackFlags {
            broker: &["--proxy-tls-ca", &c.ca],
            proxy: &proxy,
            // A lease and failure window that a loaded CI machine's late probes do not outrun:
            // this test is about TLS and migration, not about fencing (tests/detection.rs).
            coordinator: &["--proxy-tls-ca", &c.ca, "--failure-window-ms", "5000", "--proxy-lease-ms", "3000"],
            ..StackFlags::default()
        },
    );
    assert_eq!(s.brokers.call("POST", "/clusters/meta/c", Some(r#"{"node_number":4}"#)).status, 200);
    let entry = s.hosts[0].proxy.port.to_string();
    let tls_cli = ["--tls", "--cacert", c.ca.as_str(), "-c", "-p", entry.as_str()];
    let cli = |args: &[&str]| redis_cli(&[&tls_cli[..], args].concat());
    assert!(eventually(Duration::from_secs(20), || cli(&["SET", "probe", "1"]) == "OK"), "{}", s.logs());
    // A plain client gets no answer from a TLS port.
    assert!(Conn::try_connect(s.hosts[0].proxy.port).and_then(|mut p| p.try_cmd(&["PING"])).is_err());
    const KEYS: usize = 100_000;
    pipe_load(&s, 0..KEYS);
    // One redis-cli in cluster mode over TLS, fed SETs of the same values while slots move.
    let mut writer = Command::new("redis-cli")
        .args(tls_cli)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let mut input = writer.stdin.take().unwrap();
    let output = writer.stdout.take().unwrap();
    let replies =
        std::thread::spawn(move || std::io::BufReader::new(output).lines().map_while(Result::ok).collect::<Vec<_>>());
    let r = s.brokers.call("POST", "/clusters/migrations/auto/c/8", None);
    assert_eq!(r.status, 200, "{}\n{}", String::from_utf8_lossy(&r.body), s.logs());
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    loop {
        let info = s.brokers.call("GET", "/clusters/info/c", None).json();
        if info["is_migrating"] == false && info["node_number_with_slots"] == 8 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "migration did not finish:\n{}", s.logs());
        for _ in 0..200 {
            let i = sent.wrapping_mul(7919) % KEYS;
            writeln!(input, "SET key{i} value{i}").unwrap();
            sent += 1;
        }
        input.flush().unwrap();
    }
    drop(input);
    assert!(writer.wait().unwrap().success());
    // redis-cli -c also prints a "-> Redirected to slot …" line when it follows a MOVED, and an
    // empty line after an error reply.
    let replies: Vec<String> =
        replies.join().unwrap().into_iter().filter(|l| !l.starts_with("-> Redirected") && !l.is_empty()).collect();
    assert_eq!(
        replies.len(),
        sent,
        "one reply per write; not OK: {:?}",
        replies.iter().filter(|r| *r != "OK").collect::<Vec<_>>()
    );
    // A write that lands in the moment its slot switches gets TRYAGAIN (`docs/migration.md`):
    // a cluster client retries it, redis-cli prints it; it changed nothing (same value). Rare.
    let retry = replies.iter().filter(|r| r.starts_with("TRYAGAIN")).count();
    assert!(
        replies.iter().all(|r| r == "OK" || r.starts_with("TRYAGAIN")) && retry * 100 <= sent,
        "{retry} TRYAGAIN of {sent}; other: {:?}",
        replies.iter().find(|r| *r != "OK" && !r.starts_with("TRYAGAIN"))
    );
    let pulled: u64 = s.hosts.iter().map(|h| pulled_in_log(&h.proxy.log_text())).sum();
    assert!(pulled > 0, "no key was pulled between proxies ({sent} writes during the migration):\n{}", s.logs());
    for i in [0, 1, 777, 4242, KEYS - 1] {
        assert_eq!(cli(&["GET", &format!("key{i}")]), format!("value{i}"), "key{i}");
    }
}

/// The proxy's credential matrix over TLS (redis-cli --tls): admin commands need `AUTH admin`,
/// data commands the data password, wrong passwords get the one WRONGPASS; and a plain client
/// cannot even ask.
#[test]
fn proxy_credentials_over_tls() {
    let c = certs();
    let p = Proxy::start(&[
        "--tls-cert",
        &c.cert,
        "--tls-key",
        &c.key,
        "--tls-ca",
        &c.ca,
        "--admin-password",
        "padm",
        "--password",
        "pdata",
    ]);
    let port = p.port.to_string();
    let cli = |auth: &[&str], cmd: &[&str]| {
        let base = ["--tls", "--cacert", c.ca.as_str(), "-p", port.as_str(), "--no-auth-warning"];
        let out = Command::new("redis-cli").args(base).args(auth).args(cmd).output().expect("redis-cli");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned()
    };
    assert!(cli(&[], &["UMCTL", "GETEPOCH"]).starts_with("NOPERM"));
    assert!(cli(&[], &["GET", "k"]).starts_with("NOAUTH"));
    assert!(cli(&["--user", "admin", "--pass", "nope"], &["UMCTL", "GETEPOCH"]).contains("WRONGPASS"));
    assert!(cli(&["--user", "default", "--pass", "pdata"], &["UMCTL", "GETEPOCH"]).starts_with("NOPERM"));
    assert!(!cli(&["--user", "default", "--pass", "pdata"], &["GET", "k"]).starts_with("NOAUTH"));
    assert_eq!(cli(&["--user", "admin", "--pass", "padm"], &["UMCTL", "GETEPOCH"]), "0");
    assert!(!cli(&["--user", "admin", "--pass", "padm"], &["UMSYNC", "x"]).starts_with("NOPERM"));
    assert!(Conn::try_connect(p.port).and_then(|mut plain| plain.try_cmd(&["PING"])).is_err());
}
