//! A real cluster-aware client (redis-py's RedisCluster, installed by scripts/setup.sh) against
//! two proxies, with its default protocol and with RESP2 and RESP3 forced.

mod common;

use common::*;
use std::process::Command;

fn run_client(env: &TwoProxies, proto: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/redis_cluster_client.py");
    let out =
        Command::new("python3").arg(script).arg(env.p1.addr()).arg(proto).output().expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-py ({proto}) failed:\n{stdout}\n{stderr}\nproxy log:\n{}", env.p1.log_text());
    assert!(stdout.contains("10000 keys"), "{stdout}");
    println!("{stdout}");
}

#[test]
fn redis_py_default_protocol() {
    let env = TwoProxies::start();
    run_client(&env, "default");
    // the keys really are spread over both proxies' nodes
    for r in &env.redis {
        match r.conn().cmd(&["DBSIZE"]) {
            moonraft_proxy::resp::Frame::Integer(n) => {
                assert!(n > 1000, "node {} has only {n} keys", r.port)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn redis_py_protocol_2() {
    let env = TwoProxies::start();
    run_client(&env, "2");
}

#[test]
fn redis_py_protocol_3() {
    let env = TwoProxies::start();
    run_client(&env, "3");
}
