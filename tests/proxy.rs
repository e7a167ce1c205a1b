//! End-to-end tests of `moonraft proxy` with real redis-server processes and real clients.

mod common;

use common::*;
use moonraft_proxy::resp::Frame;
use moonraft_proxy::slot::{key_slot, node_id};
use std::time::{Duration, Instant};

#[test]
fn set_get_and_basic_commands() {
    // several backend connections per node: a client's pipeline must still run in order
    let env = SingleProxy::start(&["--backend-conn-num", "4"]);
    let mut c = env.proxy.conn();
    assert_eq!(c.cmd(&["SET", "a", "1"]), simple("OK"));
    assert_eq!(c.cmd(&["GET", "a"]), bulk("1"));
    assert_eq!(c.cmd(&["SET", "b", "2"]), simple("OK"));
    // keys land on the node that owns their slot
    assert_eq!(key_slot(b"a"), 15495);
    assert_eq!(env.b.conn().cmd(&["GET", "a"]), bulk("1"));
    assert_eq!(env.a.conn().cmd(&["GET", "b"]), bulk("2"));
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
    assert_eq!(c.cmd(&["PING", "hi"]), bulk("hi"));
    assert_eq!(c.cmd(&["ECHO", "x"]), bulk("x"));
    assert_eq!(c.cmd(&["INCR", "{a}n"]), Frame::Integer(1));
    assert_eq!(c.cmd(&["MGET", "{a}1", "{a}2"]), Frame::Array(vec![Frame::Null, Frame::Null]));
    assert_eq!(c.cmd(&["SELECT", "0"]), simple("OK"));
    assert!(error_text(&c.cmd(&["SELECT", "1"])).contains("cluster mode"));
    assert_eq!(c.cmd(&["CLUSTER", "KEYSLOT", "foo"]), Frame::Integer(12182));
    // pipelined requests are answered in order
    let mut raw = Vec::new();
    for i in 0..200 {
        raw.extend_from_slice(
            &moonraft_proxy::resp::Request::from_strs(&["SET", &format!("k{i}"), &i.to_string()]).raw,
        );
        raw.extend_from_slice(&moonraft_proxy::resp::Request::from_strs(&["GET", &format!("k{i}")]).raw);
    }
    c.send_raw(&raw);
    for i in 0..200 {
        assert_eq!(c.read(), simple("OK"));
        assert_eq!(c.read(), bulk(&i.to_string()));
    }
    // inline commands, as typed into telnet
    c.send_raw(b"PING\r\nGET a\r\nset \"sp ace\" 'v w'\r\n");
    assert_eq!(c.read(), simple("PONG"));
    assert_eq!(c.read(), bulk("1"));
    assert_eq!(c.read(), simple("OK"));
    assert_eq!(c.cmd(&["GET", "sp ace"]), bulk("v w"));
    // QUIT replies and closes
    assert_eq!(c.cmd(&["QUIT"]), simple("OK"));
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn redis_cli_follows_moved_between_two_proxies() {
    let env = TwoProxies::start();
    let p1 = env.p1.port.to_string();
    let p2 = env.p2.port.to_string();
    // "a" (slot 15495) belongs to proxy 2; redis-cli -c connected to proxy 1 follows MOVED
    assert_eq!(redis_cli(&["-p", &p1, "-c", "set", "a", "va"]), "OK");
    assert_eq!(redis_cli(&["-p", &p1, "-c", "get", "a"]), "va");
    assert_eq!(redis_cli(&["-p", &p2, "-c", "set", "b", "vb"]), "OK");
    assert_eq!(redis_cli(&["-p", &p2, "-c", "get", "b"]), "vb");
    let mut c1 = env.p1.conn();
    assert_eq!(error_text(&c1.cmd(&["GET", "a"])), format!("MOVED 15495 {}", env.p2.addr()));
    let mut c2 = env.p2.conn();
    assert_eq!(error_text(&c2.cmd(&["GET", "b"])), format!("MOVED 3300 {}", env.p1.addr()));
    // the data really is on the owning proxy's redis
    assert_eq!(env.redis[3].conn().cmd(&["GET", "a"]), bulk("va"));
    assert_eq!(env.redis[0].conn().cmd(&["GET", "b"]), bulk("vb"));
}

#[test]
fn cluster_nodes_and_slots_exact_format() {
    let env = TwoProxies::start();
    let (a1, a2) = (env.p1.addr(), env.p2.addr());
    let id1 = node_id("mycluster", &a1);
    let id2 = node_id("mycluster", &a2);
    let nodes = match env.p1.conn().cmd(&["CLUSTER", "NODES"]) {
        Frame::Bulk(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    let expected = format!(
        "{id1} {a1}@5299 myself,master - 0 0 2 connected 0-8191\n{id2} {a2}@5299 master - 0 0 2 connected 8192-16383\n"
    );
    assert_eq!(nodes, expected);
    assert_eq!(id1.len(), 40);
    assert!(id1.starts_with("mycluster_______________"));
    let slots = env.p2.conn().cmd(&["CLUSTER", "SLOTS"]);
    let entry = |s: i64, e: i64, port: u16, id: &str| {
        Frame::Array(vec![
            Frame::Integer(s),
            Frame::Integer(e),
            Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port as i64), bulk(id)]),
        ])
    };
    assert_eq!(slots, Frame::Array(vec![entry(0, 8191, env.p1.port, &id1), entry(8192, 16383, env.p2.port, &id2)]));
    // v1 node format has no bus port
    let p = Proxy::start(&["--cluster-nodes-version", "v1"]);
    let nodes = p.conn().cmd(&["CLUSTER", "NODES"]);
    assert_eq!(nodes, bulk(&format!("{} {} myself,master - 0 0 0 connected\n", node_id("", &p.addr()), p.addr())));
    // CLUSTER INFO and MYID
    match env.p1.conn().cmd(&["CLUSTER", "INFO"]) {
        Frame::Bulk(b) => {
            let s = String::from_utf8_lossy(&b);
            assert!(s.contains("cluster_state:ok\r\n") && s.contains("cluster_slots_assigned:16384\r\n"), "{s}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.p1.conn().cmd(&["CLUSTER", "MYID"]), bulk(&id1));
    // redis-cli's own cluster check parses the output
    let check = redis_cli(&["--cluster", "check", &a1]);
    assert!(check.contains("All 16384 slots covered"), "{check}");
}

#[test]
fn crossslot_and_unsupported_commands() {
    let env = SingleProxy::start(&[]);
    let mut c = env.proxy.conn();
    let cross = "CROSSSLOT Keys in request don't hash to the same slot";
    for cmd in [
        vec!["MGET", "a", "b"],
        vec!["MSET", "a", "1", "b", "2"],
        vec!["DEL", "a", "b"],
        vec!["EXISTS", "a", "b"],
        vec!["UNLINK", "a", "b"],
        vec!["TOUCH", "a", "b"],
        vec!["RENAME", "a", "b"],
        vec!["SMOVE", "a", "b", "m"],
        vec!["SUNION", "a", "b"],
        vec!["SINTERSTORE", "d", "a"],
        vec!["ZUNIONSTORE", "d", "2", "{d}a", "b"],
        vec!["RPOPLPUSH", "a", "b"],
        vec!["PFMERGE", "a", "b"],
        vec!["EVAL", "return 1", "2", "a", "b"],
        vec!["BLPOP", "a", "b", "1"],
        vec!["XREAD", "STREAMS", "a", "b", "0", "0"],
    ] {
        assert_eq!(error_text(&c.cmd(&cmd)), cross, "{cmd:?}");
    }
    // same slot through a hash tag works
    assert_eq!(c.cmd(&["MSET", "{u}a", "1", "{u}b", "2"]), simple("OK"));
    assert_eq!(c.cmd(&["MGET", "{u}a", "{u}b"]), Frame::Array(vec![bulk("1"), bulk("2")]));
    assert_eq!(c.cmd(&["SUNION", "{u}s1", "{u}s2"]), Frame::Array(vec![]));
    assert_eq!(c.cmd(&["EVAL", "return KEYS[2]", "2", "{u}a", "{u}b"]), bulk("{u}b"));
    // commands the proxy does not serve are rejected by name, never sent to some node
    for name in ["MONITOR", "SCRIPT"] {
        let e = error_text(&c.cmd(&[name, "x"]));
        assert!(e.starts_with("ERR_COMMAND_NOT_SUPPORTED"), "{name}: {e}");
        assert!(e.contains(&format!("'{}'", name.to_lowercase())), "{e}");
    }
    let e = error_text(&c.cmd(&["CLIENT", "TRACKING", "on"]));
    assert!(e.starts_with("ERR_COMMAND_NOT_SUPPORTED: 'client tracking'") && e.contains("caching"), "{e}");
    assert_eq!(error_text(&c.cmd(&["WAIT", "x"])), "ERR wrong number of arguments for 'wait' command");
    assert_eq!(error_text(&c.cmd(&["SLOWLOG", "x"])), "ERR unknown subcommand 'x'. Try SLOWLOG HELP.");
    assert_eq!(error_text(&c.cmd(&["CLIENT", "KILL", "x"])), "ERR No such client");
    // node-scoped commands answer for the proxy's nodes (tests/compat.rs covers them)
    assert_eq!(c.cmd(&["KEYS", "{u}*"]).to_string().matches("{u}").count(), 2);
    assert!(matches!(c.cmd(&["DBSIZE"]), Frame::Integer(n) if n >= 2));
    assert_eq!(error_text(&c.cmd(&["DBSIZE", "x"])), "ERR wrong number of arguments for 'dbsize' command");
    assert_eq!(error_text(&c.cmd(&["MULTI", "x"])), "ERR wrong number of arguments for 'multi' command");
    assert!(error_text(&c.cmd(&["SCAN", "x"])).contains("invalid cursor"));
    // what a proxy with active redirection sends another one
    assert_eq!(c.cmd(&["UMFORWARD", "0", "GET", "{u}a"]), bulk("1"));
    assert_eq!(error_text(&c.cmd(&["UMFORWARD", "x", "GET", "k"])), "ERR invalid redirection times");
    assert_eq!(error_text(&c.cmd(&["UMFORWARD", "0"])), "ERR missing forwarded command");
    assert!(error_text(&c.cmd(&["EVAL", "return 1", "0"])).contains("missing key"));
    // wrong arity is the proxy's own error, as Redis words it
    assert_eq!(error_text(&c.cmd(&["GET"])), "ERR wrong number of arguments for 'get' command");
    assert_eq!(error_text(&c.cmd(&["SET", "k"])), "ERR wrong number of arguments for 'set' command");
    assert_eq!(c.cmd(&["GET", "{u}a"]), bulk("1"), "connection still fine");
}

#[test]
fn setcluster_epoch_rules() {
    let env = SingleProxy::start(&[]);
    let mut c = env.proxy.conn();
    let (a, b) = (env.a.addr(), env.b.addr());
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(1));
    let set = |c: &mut Conn, epoch: &str, flags: &str| {
        c.cmd(&["UMCTL", "SETCLUSTER", "v2", epoch, flags, "test", &a, "1", "0-16383"])
    };
    // equal or smaller epoch → OLD_EPOCH, nothing changes
    assert_eq!(error_text(&set(&mut c, "1", "NOFLAG")), "OLD_EPOCH");
    assert_eq!(error_text(&set(&mut c, "0", "NOFLAG")), "OLD_EPOCH");
    assert_eq!(c.cmd(&["SET", "a", "x"]), simple("OK"));
    assert_eq!(env.b.conn().cmd(&["GET", "a"]), bulk("x"), "old table still routes slot 15495 to B");
    // a newer epoch is accepted
    assert_eq!(set(&mut c, "5", "NOFLAG"), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(5));
    assert_eq!(c.cmd(&["SET", "a", "y"]), simple("OK"));
    assert_eq!(env.a.conn().cmd(&["GET", "a"]), bulk("y"));
    // FORCE accepts an older epoch
    assert_eq!(set(&mut c, "3", "FORCE"), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(3));
    // moonraft's target check: metadata for another proxy is refused
    assert_eq!(error_text(&set(&mut c, "9", "NOFLAG,TARGET=10.9.9.9:1")), "ERR_NOT_MY_META");
    let target = format!("TARGET={}", env.proxy.addr());
    assert_eq!(set(&mut c, "9", &target), simple("OK"));
    // parse errors
    let e = c.cmd(&["UMCTL", "SETCLUSTER", "v1", "10", "NOFLAG", "test"]);
    assert_eq!(error_text(&e), "Failed to parse args: InvalidVersion");
    let e = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "10", "NOFLAG", "bad name"]);
    assert_eq!(error_text(&e), "Failed to parse args: InvalidClusterName");
    let e = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "10", "NOFLAG", "test", &a, "2", "0-1"]);
    assert_eq!(error_text(&e), "Failed to parse args: InvalidArgs");
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(9));
    // the COMPRESS form carries the same metadata as base64(gzip(JSON))
    let meta = moonraft_proxy::cluster::SetCluster::parse(
        &["v2", "1", "NOFLAG", "test", &b, "1", "0-16383"].map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())),
    )
    .unwrap()
    .meta;
    let payload = moonraft_proxy::cluster::encode_compressed(&meta);
    assert_eq!(c.cmd(&["UMCTL", "SETCLUSTER", "v2", "10", "COMPRESS", &payload]), simple("OK"));
    assert_eq!(c.cmd(&["SET", "a", "z"]), simple("OK"));
    assert_eq!(env.b.conn().cmd(&["GET", "a"]), bulk("z"));
    let e = c.cmd(&["UMCTL", "SETCLUSTER", "v2", "11", "COMPRESS", "bm90IGd6aXA="]);
    assert_eq!(error_text(&e), "Failed to parse args: InvalidArgs");
    assert_eq!(c.cmd(&["UMCTL", "GETEPOCH"]), Frame::Integer(10));
    // a free proxy (empty cluster name) answers ERR_CLUSTER_NOT_FOUND
    assert_eq!(c.cmd(&["UMCTL", "SETCLUSTER", "v2", "12", "NOFLAG", ""]), simple("OK"));
    assert_eq!(error_text(&c.cmd(&["GET", "a"])), "ERR_CLUSTER_NOT_FOUND");
    assert_eq!(c.cmd(&["UMCTL", "LISTCLUSTER"]), Frame::Array(vec![bulk("")]));
    // slots owned by nobody
    assert_eq!(c.cmd(&["UMCTL", "SETCLUSTER", "v2", "13", "NOFLAG", "test", &b, "1", "0-100"]), simple("OK"));
    assert!(error_text(&c.cmd(&["GET", "a"])).contains("slot not covered 15495"));
}

#[test]
fn default_redirection_address() {
    let p = Proxy::start(&["--default-redirection-address", "10.0.0.1:6000"]);
    assert_eq!(error_text(&p.conn().cmd(&["GET", "a"])), "MOVED 15495 10.0.0.1:6000");
}

#[test]
fn setrepl_makes_a_node_replica() {
    let env = SingleProxy::start(&["--replication-interval", "200"]);
    let master = Redis::start();
    let mut c = env.proxy.conn();
    let (a, m) = (env.a.addr(), master.addr());
    let r = c.cmd(&[
        "UMCTL",
        "SETREPL",
        "2",
        "NOFLAG",
        "replica",
        "test",
        &a,
        "1",
        &m,
        "127.0.0.1:1",
        "master",
        "test",
        &env.b.addr(),
        "0",
    ]);
    assert_eq!(r, simple("OK"));
    let role_of = |port: u16| match Conn::connect(port).cmd(&["INFO", "replication"]) {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("{other:?}"),
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            let info = role_of(env.a.port);
            info.contains("role:slave") && info.contains(&format!("master_port:{}", master.port))
        }),
        "{}",
        role_of(env.a.port)
    );
    // data written to the master shows up on the replica
    master.conn().cmd(&["SET", "replicated", "yes"]);
    assert!(eventually(Duration::from_secs(10), || env.a.conn().cmd(&["GET", "replicated"]) == bulk("yes")));
    let inforepl = c.cmd(&["UMCTL", "INFOREPL"]);
    assert!(format!("{inforepl}").contains("role:replica"), "{inforepl}");
    // stale replication epoch
    assert_eq!(error_text(&c.cmd(&["UMCTL", "SETREPL", "2", "NOFLAG"])), "OLD_EPOCH");
    assert_eq!(error_text(&c.cmd(&["UMCTL", "SETREPL", "x"])), "Invalid arguments");
    // promote it back: the replicator re-asserts REPLICAOF NO ONE
    assert_eq!(c.cmd(&["UMCTL", "SETREPL", "3", "NOFLAG", "master", "test", &a, "0"]), simple("OK"));
    assert!(eventually(Duration::from_secs(10), || role_of(env.a.port).contains("role:master")));
    // and keeps asserting it: an operator's REPLICAOF is undone within the interval
    env.a.conn().cmd(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    assert!(eventually(Duration::from_secs(10), || role_of(env.a.port).contains("role:master")));
}

#[test]
fn blpop_is_woken_by_a_push() {
    let env = SingleProxy::start(&[]);
    let mut waiter = env.proxy.conn();
    let started = Instant::now();
    waiter.send(&["BLPOP", "queue", "0"]);
    assert!(wait_blocked(env.proxy.port, "blpop"), "the BLPOP is not parked");
    // other clients are not stalled by the blocked one
    let mut other = env.proxy.conn();
    assert_eq!(other.cmd(&["SET", "x", "1"]), simple("OK"));
    assert_eq!(other.cmd(&["RPUSH", "queue", "job"]), Frame::Integer(1));
    assert_eq!(waiter.read(), Frame::Array(vec![bulk("queue"), bulk("job")]));
    assert!(started.elapsed() < Duration::from_secs(3));
    // fractional timeout expires with a null reply
    let t = Instant::now();
    assert_eq!(waiter.cmd(&["BLPOP", "nothing", "0.2"]), Frame::NullArray);
    assert!(t.elapsed() < Duration::from_secs(2));
    // the connection still works for normal commands afterwards
    assert_eq!(waiter.cmd(&["GET", "x"]), bulk("1"));
    // like Redis, commands pipelined after a blocking command wait for it: the RPUSH must not
    // run before the BLPOP has timed out
    waiter.send(&["BLPOP", "ordered", "0.5"]);
    waiter.send(&["RPUSH", "ordered", "late"]);
    assert_eq!(waiter.read(), Frame::NullArray);
    assert_eq!(waiter.read(), Frame::Integer(1));
    // and commands before it have run when it starts
    waiter.send(&["RPUSH", "ordered2", "early"]);
    waiter.send(&["BLPOP", "ordered2", "0"]);
    assert_eq!(waiter.read(), Frame::Integer(1));
    assert_eq!(waiter.read(), Frame::Array(vec![bulk("ordered2"), bulk("early")]));
    // BRPOPLPUSH / BZPOPMIN / XREAD BLOCK
    other.cmd(&["ZADD", "z", "1", "m"]);
    assert_eq!(waiter.cmd(&["BZPOPMIN", "z", "1"]), Frame::Array(vec![bulk("z"), bulk("m"), bulk("1")]));
    let blocked = |r: &Redis| match r.conn().cmd(&["INFO", "clients"]) {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).contains("blocked_clients:1"),
        _ => false,
    };
    let node_of = |k: &str| if key_slot(k.as_bytes()) <= 8191 { &env.a } else { &env.b };
    waiter.send(&["XREAD", "BLOCK", "10000", "STREAMS", "s", "$"]);
    assert!(eventually(Duration::from_secs(5), || blocked(node_of("s"))));
    assert!(matches!(other.cmd(&["XADD", "s", "*", "f", "v"]), Frame::Bulk(_)));
    assert!(matches!(waiter.read(), Frame::Array(_)));
    // a client that disconnects while blocked does not leave a blocked client behind
    let mut gone = env.proxy.conn();
    gone.send(&["BLPOP", "never", "0"]);
    let node = node_of("never");
    assert!(eventually(Duration::from_secs(5), || blocked(node)));
    drop(gone);
    assert!(eventually(Duration::from_secs(5), || !blocked(node)));
}

#[test]
fn auth_and_hello() {
    let env = SingleProxy::start(&["--password", "s3cret"]);
    let mut c = env.proxy.conn();
    assert!(error_text(&c.cmd(&["GET", "a"])).starts_with("NOAUTH"));
    assert_eq!(c.cmd(&["PING"]), simple("PONG"), "control commands work without AUTH");
    assert!(error_text(&c.cmd(&["AUTH", "wrong"])).starts_with("WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), simple("OK"));
    assert_eq!(c.cmd(&["SET", "a", "1"]), simple("OK"));
    let mut c = env.proxy.conn();
    assert_eq!(c.cmd(&["AUTH", "default", "s3cret"]), simple("OK"));
    let mut h = env.proxy.conn();
    assert!(error_text(&h.cmd(&["HELLO", "3"])).starts_with("NOAUTH"));
    match h.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me"]) {
        Frame::Map(m) => assert!(m.contains(&(bulk("proto"), Frame::Integer(3)))),
        other => panic!("{other:?}"),
    }
    // RESP3 replies come from RESP3 backend connections
    assert_eq!(h.cmd(&["GET", "nosuch"]), Frame::Null);
    h.cmd(&["HSET", "h", "f", "v"]);
    assert_eq!(h.cmd(&["HGETALL", "h"]), Frame::Map(vec![(bulk("f"), bulk("v"))]));
    assert_eq!(h.cmd(&["CLIENT", "GETNAME"]), bulk("me"));
    // back to RESP2
    assert!(matches!(h.cmd(&["HELLO", "2"]), Frame::Array(_)));
    assert_eq!(h.cmd(&["HGETALL", "h"]), Frame::Array(vec![bulk("f"), bulk("v")]));
    assert_eq!(error_text(&h.cmd(&["HELLO", "4"])), "NOPROTO unsupported protocol version");
    let p = Proxy::start(&[]);
    assert!(error_text(&p.conn().cmd(&["AUTH", "x"])).contains("without any password configured"));
}

/// Every bad-input case, each followed by a check that the proxy still serves other clients.
#[test]
fn bad_input_affects_only_the_offender() {
    let env = SingleProxy::start(&["--proto-max-bulk-len", "1048576"]);
    let mut bystander = env.proxy.conn();
    assert_eq!(bystander.cmd(&["SET", "by", "0"]), simple("OK"));
    let mut check = |i: usize| {
        assert_eq!(bystander.cmd(&["INCR", "by"]), Frame::Integer(i as i64), "bystander after case {i}");
    };
    let protocol_errors: &[&[u8]] = &[
        b"*2\r\n$3\r\nGET\r\n:1\r\n", // not a bulk string
        b"*1\r\n$-5\r\n",             // negative length
        b"*1\r\n$2000000\r\n",        // bulk above the configured limit
        b"*99999999999999\r\n",       // absurd array length
        b"*1\r\n$3\r\nGETXX\r\n",     // missing CRLF after the bulk
        b"*x\r\n",                    // not a number
        b"set \"unbalanced\r\n",      // inline with bad quotes
    ];
    let mut case = 0;
    for input in protocol_errors {
        case += 1;
        let mut c = env.proxy.conn();
        c.send_raw(input);
        let reply = c.read();
        assert!(error_text(&reply).starts_with("ERR Protocol error"), "{reply:?}");
        assert!(c.is_closed(Duration::from_secs(5)), "connection closed after a protocol error");
        check(case);
    }
    // an inline line longer than 64 KiB without a newline
    case += 1;
    let mut c = env.proxy.conn();
    c.send_raw(&vec![b'a'; 70 * 1024]);
    assert!(error_text(&c.read()).contains("too big inline request"));
    check(case);
    // wrong arity and a key of a slot the proxy does not own are plain errors
    case += 1;
    let mut c = env.proxy.conn();
    assert!(error_text(&c.cmd(&["GET", "a", "b"])).contains("wrong number of arguments"));
    c.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "2",
        "NOFLAG",
        "test",
        &env.a.addr(),
        "1",
        "0-100",
        "PEER",
        "127.0.0.1:1",
        "1",
        "101-16383",
    ]);
    assert_eq!(error_text(&c.cmd(&["GET", "a"])), "MOVED 15495 127.0.0.1:1");
    c.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "3",
        "NOFLAG",
        "test",
        &env.a.addr(),
        "1",
        "0-8191",
        &env.b.addr(),
        "1",
        "8192-16383",
    ]);
    check(case);
    // a client that disconnects mid-pipeline (and mid-request)
    case += 1;
    {
        let mut c = env.proxy.conn();
        let mut raw = Vec::new();
        for i in 0..500 {
            raw.extend_from_slice(&moonraft_proxy::resp::Request::from_strs(&["SET", &format!("p{i}"), "v"]).raw);
        }
        raw.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nz\r\n$100\r\nabc");
        c.send_raw(&raw);
    }
    check(case);
    // a huge value below the limit still works
    case += 1;
    let big = "x".repeat(1_000_000);
    let mut c = env.proxy.conn();
    assert_eq!(c.cmd(&["SET", "big", &big]), simple("OK"));
    assert_eq!(c.cmd(&["STRLEN", "big"]), Frame::Integer(1_000_000));
    check(case);
    // the proxy is still alive and well
    assert!(env.proxy.log_text().lines().all(|l| !l.contains("panicked")), "{}", env.proxy.log_text());
}

#[test]
fn dead_backend_fails_fast_for_its_slots_only() {
    let mut env = SingleProxy::start(&["--backend-timeout", "500"]);
    let mut c = env.proxy.conn();
    assert_eq!(c.cmd(&["SET", "a", "1"]), simple("OK")); // node B
    assert_eq!(c.cmd(&["SET", "b", "1"]), simple("OK")); // node A
    let b_port = env.b.port;
    env.b.proc.kill();
    let t = Instant::now();
    let e = error_text(&c.cmd(&["GET", "a"]));
    assert!(e.contains("ERR"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // node A keeps working
    assert_eq!(c.cmd(&["GET", "b"]), bulk("1"));
    // errors stay fast while B is down
    let t = Instant::now();
    for _ in 0..20 {
        assert!(matches!(c.cmd(&["GET", "a"]), Frame::Error(_)));
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // B comes back on the same port: the proxy reconnects by itself
    let dir = TempDir::new("redis-b");
    let child = std::process::Command::new("redis-server")
        .args(["--port", &b_port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("restart redis");
    let _restarted = Proc { child: Some(child) };
    assert!(eventually(Duration::from_secs(10), || c.cmd(&["SET", "a", "2"]) == simple("OK")));
    assert_eq!(c.cmd(&["GET", "a"]), bulk("2"));
}

/// A command written to a backend connection that then breaks is answered with an error and
/// never re-sent: INCR must not be applied twice.
#[test]
fn no_resend_after_broken_backend_connection() {
    let env = SingleProxy::start(&["--backend-timeout", "500"]);
    let mut c = env.proxy.conn();
    let key = "{b}counter"; // slot of "b" → node A
    assert_eq!(c.cmd(&["SET", key, "0"]), simple("OK"));
    env.a.proc.signal("STOP");
    let reply = c.cmd(&["INCR", key]);
    let e = error_text(&reply);
    assert!(e.contains("may or may not have been executed"), "{e}");
    env.a.proc.signal("CONT");
    // Redis may or may not have executed the first INCR; the proxy did not send it again.
    let v = eventually(Duration::from_secs(5), || matches!(c.cmd(&["GET", key]), Frame::Bulk(_)));
    assert!(v);
    // And it stays so: no re-sent INCR arrives later.
    let once = always(
        Duration::from_millis(300),
        || matches!(c.cmd(&["GET", key]), Frame::Bulk(b) if &b[..] == b"0" || &b[..] == b"1"),
    );
    assert!(once, "INCR applied twice: {:?}", c.cmd(&["GET", key]));
}

#[test]
fn umctl_info_and_slowlog_and_config() {
    let env = SingleProxy::start(&["--slowlog-sample-rate", "1", "--slowlog-log-slower-than", "0"]);
    let mut c = env.proxy.conn();
    c.cmd(&["SET", "a", "1"]);
    c.cmd(&["GET", "a"]);
    match c.cmd(&["UMCTL", "SLOWLOG", "GET", "1"]) {
        Frame::Array(recs) => {
            assert_eq!(recs.len(), 1);
            let text = format!("{}", recs[0]);
            assert!(text.contains("command: GET a") && text.contains("session_id:"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.cmd(&["UMCTL", "SLOWLOG", "RESET"]), simple("OK"));
    assert_eq!(error_text(&c.cmd(&["UMCTL", "SLOWLOG", "BOGUS"])), "invalid slowlog sub-command");
    assert_eq!(c.cmd(&["CONFIG", "GET", "slowlog_sample_rate"]), bulk("1"));
    assert_eq!(c.cmd(&["CONFIG", "SET", "slowlog_sample_rate", "10"]), simple("OK"));
    assert_eq!(c.cmd(&["CONFIG", "GET", "slowlog_sample_rate"]), bulk("10"));
    assert_eq!(error_text(&c.cmd(&["CONFIG", "SET", "thread_number", "3"])), "ReadonlyField");
    // Other keys are the node's, read-only and only those clients probe: never a password.
    assert_eq!(c.cmd(&["CONFIG", "GET", "password"]), Frame::Array(vec![]));
    assert_eq!(c.cmd(&["CONFIG", "GET", "requirepass"]), Frame::Array(vec![]));
    match c.cmd(&["CONFIG", "GET", "*"]) {
        Frame::Array(items) => {
            let keys: Vec<String> = items.iter().step_by(2).map(|k| k.to_string()).collect();
            assert!(keys.contains(&"maxmemory".to_string()), "{keys:?}");
            assert!(!keys.iter().any(|k| k.contains("pass") || k.contains("auth")), "{keys:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "maxmemory-policy"]),
        Frame::Array(vec![bulk("maxmemory-policy"), bulk("noeviction")])
    );
    assert_eq!(c.cmd(&["CONFIG", "GET", "announce_address"]), bulk(&env.proxy.addr()));
    assert_eq!(c.cmd(&["UMCTL", "READY"]), Frame::Integer(1));
    assert_eq!(c.cmd(&["UMCTL", "INFOMGR"]), Frame::Array(vec![]));
    assert!(format!("{}", c.cmd(&["UMCTL", "INFO"])).contains("epoch: 1"));
    assert!(format!("{}", c.cmd(&["UMCTL", "STATS"])).contains("migration_keys_moved: 0"));
    assert_eq!(error_text(&c.cmd(&["UMCTL"])), "Missing sub command");
    assert_eq!(error_text(&c.cmd(&["UMCTL", "NOPE"])), "Invalid sub command");
    match c.cmd(&["INFO"]) {
        Frame::Bulk(b) => assert!(String::from_utf8_lossy(&b).starts_with("version:")),
        other => panic!("{other:?}"),
    }
    // COMMAND lists only what the proxy supports
    match c.cmd(&["COMMAND"]) {
        Frame::Array(cmds) => {
            let names: Vec<String> = cmds
                .iter()
                .filter_map(|c| match c {
                    Frame::Array(f) => f.first().map(|n| n.to_string()),
                    _ => None,
                })
                .collect();
            assert!(names.contains(&"get".to_string()));
            assert!(names.contains(&"keys".to_string()) && names.contains(&"multi".to_string()));
            assert!(names.contains(&"subscribe".to_string()) && names.contains(&"spublish".to_string()));
            assert!(!names.contains(&"monitor".to_string()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn migration_switch_handshake_and_ask() {
    // This proxy imports 0-99 from a source proxy (a real one without the task: it answers
    // the destination's pulls with MIGRATION_TASK_NOT_FOUND).
    let env = SingleProxy::start(&[]);
    let src = Proxy::start(&[]);
    let src_addr = src.addr();
    let mut c = env.proxy.conn();
    let (a, b) = (env.a.addr(), env.b.addr());
    let meta = ["5", &src_addr, "127.0.0.1:2", &env.proxy.addr(), &a];
    let mut set =
        vec!["UMCTL", "SETCLUSTER", "v2", "5", "NOFLAG", "test", &a, "1", "100-8191", &a, "IMPORTING", "1", "0-99"];
    set.extend_from_slice(&meta);
    set.extend_from_slice(&[&b, "1", "8192-16383", "PEER", &src_addr, "MIGRATING", "1", "0-99"]);
    set.extend_from_slice(&meta);
    assert_eq!(c.cmd(&set), simple("OK"));
    let key = (0..).map(|i| format!("k{i}")).find(|k| key_slot(k.as_bytes()) < 100).unwrap();
    let slot = key_slot(key.as_bytes());
    // before PRESWITCH: ASK to the source, and ASKING lets the command through
    assert_eq!(error_text(&c.cmd(&["GET", &key])), format!("ASK {slot} {src_addr}"));
    assert_eq!(c.cmd(&["ASKING"]), simple("OK"));
    assert_eq!(c.cmd(&["GET", &key]), Frame::Null);
    // CLUSTER NODES hides the importing range until the switch
    let nodes = format!("{}", c.cmd(&["CLUSTER", "NODES"]));
    assert!(nodes.contains("connected 100-16383"), "{nodes}");
    let mut sw = |name: &str, epoch: &str| {
        let mut args = vec!["UMCTL", name, "mgr-0.2", "test", "MIGRATING", "1", "0-99", epoch];
        args.extend_from_slice(&meta[1..]);
        c.cmd(&args)
    };
    assert_eq!(error_text(&sw("PRESWITCH", "6")), "NOT_READY_FOR_SWITCHING");
    assert_eq!(error_text(&sw("PRESWITCH", "4")), "TASK_NOT_FOUND");
    assert_eq!(sw("PRECHECK", "5"), simple("OK"));
    assert_eq!(sw("PRESWITCH", "5"), simple("OK"));
    let mut c = env.proxy.conn();
    assert_eq!(c.cmd(&["SET", &key, "v"]), simple("OK"));
    let nodes = format!("{}", c.cmd(&["CLUSTER", "NODES"]));
    assert!(nodes.contains("connected 0-16383"), "{nodes}");
    assert_eq!(c.cmd(&["UMCTL", "INFOMGR"]), Frame::Array(vec![]));
    let mut args = vec!["UMCTL", "FINALSWITCH", "mgr-0.2", "test", "MIGRATING", "1", "0-99"];
    args.extend_from_slice(&meta);
    assert_eq!(c.cmd(&args), simple("OK"));
    match c.cmd(&["UMCTL", "INFOMGR"]) {
        Frame::Array(items) => {
            assert_eq!(items.len(), 1);
            assert_eq!(
                items[0],
                bulk(&format!("test IMPORTING 1 0-99 5 {src_addr} 127.0.0.1:2 {} {}", env.proxy.addr(), a))
            );
        }
        other => panic!("{other:?}"),
    }
    let mut args = vec!["UMCTL", "PRECHECK", "mgr-0.1", "test", "MIGRATING", "1", "0-99"];
    args.extend_from_slice(&meta);
    assert_eq!(error_text(&c.cmd(&args)), "switch failed: IncompatibleVersion");
    assert_eq!(error_text(&c.cmd(&["UMCTL", "PRECHECK", "mgr-0.2"])), "failed to parse migration switch arguments");
}

#[test]
fn config_errors_name_the_key() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN).arg("proxy").args(args).envs(env.iter().copied()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run(&["--thread-number", "0"], &[]);
    assert!(!ok && err.contains("thread_number"), "{err}");
    let (ok, err) = run(&[], &[("MOONRAFT_BACKEND_TIMEOUT", "soon")]);
    assert!(!ok && err.contains("backend_timeout") && err.contains("MOONRAFT_BACKEND_TIMEOUT"), "{err}");
    let (ok, err) = run(&["--no-such-key", "1"], &[]);
    assert!(!ok && err.contains("--no-such-key"), "{err}");
    let dir = TempDir::new("cfg");
    let file = dir.0.join("p.toml");
    std::fs::write(&file, "address = \"nonsense\"\n").unwrap();
    let (ok, err) = run(&[file.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("address") && err.contains("p.toml"), "{err}");
    // flag beats env beats file
    let port = free_port();
    std::fs::write(&file, "address = \"127.0.0.1:1\"\n").unwrap();
    let child = std::process::Command::new(BIN)
        .arg("proxy")
        .arg(&file)
        .args(["--address", &format!("127.0.0.1:{port}")])
        .env("MOONRAFT_ADDRESS", "127.0.0.1:2")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc { child: Some(child) };
    assert!(eventually(Duration::from_secs(5), || Conn::try_connect(port).is_ok()));
}

/// `UMCTL RESETNODES` empties a free proxy's Redis nodes (what a coordinator does before a
/// replaced proxy rejoins the pool) and refuses while the proxy serves a cluster.
#[test]
fn resetnodes_empties_only_a_free_proxy() {
    let s = SingleProxy::start(&[]);
    let mut c = s.proxy.conn();
    assert_eq!(c.cmd(&["SET", "k1", "v"]), simple("OK"));
    let mut a = s.a.conn();
    let before = a.cmd(&["DBSIZE"]);
    let refused = error_text(&c.cmd(&["UMCTL", "RESETNODES"]));
    assert!(refused.starts_with("ERR_IN_CLUSTER"), "{refused}");
    assert_eq!(a.cmd(&["DBSIZE"]), before, "nothing emptied while in a cluster");
    // The proxy becomes free (its coordinator pushes free metadata): now it empties its nodes.
    let free_repl = ["UMCTL", "SETREPL", "5", "NOFLAG", "master", "", &s.a.addr(), "0", "master", "", &s.b.addr(), "0"];
    assert_eq!(c.cmd(&free_repl), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "SETCLUSTER", "v2", "6", "NOFLAG", ""]), simple("OK"));
    assert_eq!(s.b.conn().cmd(&["SET", "other", "1"]), simple("OK"));
    assert_eq!(c.cmd(&["UMCTL", "RESETNODES"]), simple("OK"));
    assert_eq!(a.cmd(&["DBSIZE"]), Frame::Integer(0));
    assert_eq!(s.b.conn().cmd(&["DBSIZE"]), Frame::Integer(0));
    // A proxy that knows no node yet says so.
    let fresh = Proxy::start(&[]);
    let e = error_text(&fresh.conn().cmd(&["UMCTL", "RESETNODES"]));
    assert!(e.starts_with("ERR_NO_NODES"), "{e}");
}

/// The coordinator lease counts from the stamp of an answer the coordinator received, not from
/// a probe's arrival: a probe that reaches the proxy late (it queued up while the proxy was
/// paused) cannot give it a fresh lease.
#[test]
fn a_late_health_probe_does_not_renew_the_lease() {
    let env = SingleProxy::start(&[]);
    let mut c = env.proxy.conn();
    let stamp = |f: Frame| match f {
        Frame::Integer(s) => s.to_string(),
        other => panic!("HEALTH should answer a stamp: {other:?}"),
    };
    // No stamp handed back: no lease yet, and a proxy never leased is never fenced.
    let first = stamp(c.cmd(&["UMCTL", "HEALTH", "300", "1"]));
    assert_eq!(c.cmd(&["SET", "a", "1"]), simple("OK"));
    // Handed back promptly: leased.
    let second = stamp(c.cmd(&["UMCTL", "HEALTH", "300", "1", "STAMP", &first]));
    assert_eq!(c.cmd(&["SET", "a", "2"]), simple("OK"));
    // The lease runs out, then the next probe arrives late with the stamp it was given:
    // counted from that stamp, the lease is already over.
    let fenced = |c: &mut Conn| matches!(c.cmd(&["SET", "a", "3"]), Frame::Error(e) if e.starts_with("CLUSTERDOWN"));
    assert!(eventually(Duration::from_secs(5), || fenced(&mut c)));
    // Not a wait for a condition: the stamp must be older than the lease when it comes back.
    std::thread::sleep(Duration::from_millis(50));
    stamp(c.cmd(&["UMCTL", "HEALTH", "300", "1", "STAMP", &second]));
    assert!(error_text(&c.cmd(&["SET", "a", "4"])).starts_with("CLUSTERDOWN"), "a late probe renewed the lease");
    // A fresh round trip renews it; a stamp the proxy never issued does not.
    let fresh = stamp(c.cmd(&["UMCTL", "HEALTH", "300", "1"]));
    stamp(c.cmd(&["UMCTL", "HEALTH", "300", "1", "STAMP", "999999999999999"]));
    assert!(error_text(&c.cmd(&["SET", "a", "5"])).starts_with("CLUSTERDOWN"));
    stamp(c.cmd(&["UMCTL", "HEALTH", "60000", "1", "STAMP", &fresh]));
    assert_eq!(c.cmd(&["SET", "a", "6"]), simple("OK"));
    // A stale epoch answers no stamp and renews nothing; bad arguments are refused.
    assert!(error_text(&c.cmd(&["UMCTL", "HEALTH", "300", "99"])).starts_with("STALE_EPOCH"));
    assert!(error_text(&c.cmd(&["UMCTL", "HEALTH", "300", "1", "STAMP"])).contains("usage"));
    assert!(error_text(&c.cmd(&["UMCTL", "HEALTH", "300", "1", "STAMP", "x"])).contains("usage"));
}

/// `CLIENT LIST`/`INFO`/`KILL` about the proxy's own connections, `SLOWLOG` in Redis's format,
/// and `WAIT` counting the replicas of the node that took the client's last write.
#[test]
fn client_list_kill_slowlog_and_wait() {
    let env = SingleProxy::start(&[]);
    let text = |f: Frame| match f {
        Frame::Bulk(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    let id_of = |c: &mut Conn| match c.cmd(&["CLIENT", "ID"]) {
        Frame::Integer(id) => id,
        other => panic!("{other:?}"),
    };
    let mut c1 = env.proxy.conn();
    assert_eq!(c1.cmd(&["CLIENT", "SETNAME", "worker"]), simple("OK"));
    assert_eq!(c1.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "mylib"]), simple("OK"));
    assert!(error_text(&c1.cmd(&["CLIENT", "SETINFO", "LIB-VER", "a b"])).contains("cannot contain spaces"));
    let id1 = id_of(&mut c1);
    let mut c2 = env.proxy.conn();
    let id2 = id_of(&mut c2);
    assert_eq!(c2.cmd(&["MULTI"]), simple("OK"));
    assert_eq!(c2.cmd(&["SET", "{x}a", "1"]), simple("QUEUED"));
    let mut c3 = env.proxy.conn();
    let id3 = id_of(&mut c3);
    c3.send(&["BLPOP", "{x}q", "0"]);

    // every connection, each as Redis prints it
    let mut list = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        list = text(c1.cmd(&["CLIENT", "LIST"]));
        list.lines().any(|l| l.starts_with(&format!("id={id3} ")) && l.contains(" flags=b "))
    }));
    let line = |id: i64| list.lines().find(|l| l.starts_with(&format!("id={id} "))).unwrap_or_default().to_owned();
    let me = line(id1);
    for field in [" name=worker ", " cmd=client|list ", " lib-name=mylib ", " flags=N ", " multi=-1 ", " resp=2 "] {
        assert!(me.contains(field), "{field} in {me}");
    }
    assert!(
        line(id2).contains(" flags=x ") && line(id2).contains(" multi=1 ") && line(id2).contains(" cmd=set "),
        "{list}"
    );
    assert!(line(id3).contains(" cmd=blpop "), "{list}");
    let info = text(c1.cmd(&["CLIENT", "INFO"]));
    assert!(info.starts_with(&format!("id={id1} ")) && info.ends_with('\n'), "{info}");
    let only = text(c1.cmd(&["CLIENT", "LIST", "ID", &id2.to_string()]));
    assert_eq!(only.lines().count(), 1, "{only}");
    assert_eq!(text(c1.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"])), "");
    assert!(error_text(&c1.cmd(&["CLIENT", "LIST", "TYPE", "x"])).contains("Unknown client type"));

    // KILL with a filter closes the connection (a blocked one too) and counts it
    assert_eq!(c1.cmd(&["CLIENT", "KILL", "ID", &id2.to_string()]), Frame::Integer(1));
    assert!(c2.is_closed(Duration::from_secs(5)));
    assert_eq!(c1.cmd(&["CLIENT", "KILL", "ID", &id3.to_string()]), Frame::Integer(1));
    assert!(c3.is_closed(Duration::from_secs(5)));
    assert_eq!(c1.cmd(&["CLIENT", "KILL", "ID", &id1.to_string()]), Frame::Integer(0), "SKIPME yes by default");
    assert!(eventually(Duration::from_secs(5), || text(c1.cmd(&["CLIENT", "LIST"])).lines().count() == 1));
    // the old form names an address
    let mut c4 = env.proxy.conn();
    let addr4 = text(c4.cmd(&["CLIENT", "INFO"])).split(' ').find_map(|f| f.strip_prefix("addr=")).unwrap().to_owned();
    assert_eq!(c1.cmd(&["CLIENT", "KILL", &addr4]), simple("OK"));
    assert!(c4.is_closed(Duration::from_secs(5)));
    assert_eq!(error_text(&c1.cmd(&["CLIENT", "KILL", "1.2.3.4:5"])), "ERR No such client");
    assert_eq!(c1.cmd(&["CLIENT", "NO-EVICT", "on"]), simple("OK"));
    assert!(text(c1.cmd(&["CLIENT", "INFO"])).contains(" flags=e "));
    assert_eq!(c1.cmd(&["CLIENT", "GETREDIR"]), Frame::Integer(-1));

    // SLOWLOG: every command timed and kept, in Redis's entry format
    assert_eq!(c1.cmd(&["CONFIG", "SET", "slowlog_sample_rate", "1"]), simple("OK"));
    assert_eq!(c1.cmd(&["CONFIG", "SET", "slowlog_log_slower_than", "0"]), simple("OK"));
    assert_eq!(c1.cmd(&["SLOWLOG", "RESET"]), simple("OK"));
    assert_eq!(c1.cmd(&["SET", "{s}k", "v"]), simple("OK"));
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(c1.cmd(&["SLOWLOG", "LEN"]), Frame::Integer(1));
    let my_addr =
        text(c1.cmd(&["CLIENT", "INFO"])).split(' ').find_map(|f| f.strip_prefix("addr=")).unwrap().to_owned();
    match c1.cmd(&["SLOWLOG", "GET", "1"]) {
        Frame::Array(entries) => match &entries[..] {
            [Frame::Array(e)] => {
                assert!(matches!(e[0], Frame::Integer(_)));
                assert!(matches!(e[1], Frame::Integer(t) if (before - 5..=before + 1).contains(&t)), "{e:?}");
                assert!(matches!(e[2], Frame::Integer(us) if us >= 0));
                assert_eq!(e[3], Frame::Array(vec![bulk("SET"), bulk("{s}k"), bulk("v")]));
                assert_eq!(e[4], bulk(&my_addr));
                assert_eq!(e[5], bulk("worker"));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(error_text(&c1.cmd(&["SLOWLOG", "GET", "-2"])), "ERR count should be greater than or equal to -1");

    // WAIT: no replica yet, then one replica of node a (slots 0-8191)
    assert_eq!(c1.cmd(&["WAIT", "0", "0"]), Frame::Integer(0));
    assert_eq!(c1.cmd(&["SET", "b", "1"]), simple("OK")); // slot 3300: node a
    assert_eq!(c1.cmd(&["WAIT", "1", "100"]), Frame::Integer(0));
    let replica = Redis::start();
    let a_port = env.a.addr().rsplit_once(':').unwrap().1.to_owned();
    assert_eq!(replica.conn().cmd(&["REPLICAOF", "127.0.0.1", &a_port]), simple("OK"));
    assert!(eventually(Duration::from_secs(10), || {
        text(replica.conn().cmd(&["INFO", "replication"])).contains("master_link_status:up")
    }));
    assert_eq!(c1.cmd(&["SET", "b", "2"]), simple("OK"));
    assert_eq!(c1.cmd(&["WAIT", "1", "5000"]), Frame::Integer(1));
    assert_eq!(replica.conn().cmd(&["GET", "b"]), bulk("2"), "WAIT returned only once the replica had the write");
    // a write on node b, which has no replica
    assert_eq!(c1.cmd(&["SET", "a", "1"]), simple("OK")); // slot 15495: node b
    assert_eq!(c1.cmd(&["WAIT", "1", "100"]), Frame::Integer(0));
}

#[test]
fn hello_and_info_report_the_nodes_redis_version() {
    let s = SingleProxy::start(&[]);
    let info = match s.a.conn().cmd(&["INFO", "server"]) {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("{other:?}"),
    };
    let version =
        info.lines().find_map(|l| l.trim_end().strip_prefix("redis_version:")).expect("redis_version").to_owned();
    let port = s.proxy.port.to_string();
    let learned = eventually(Duration::from_secs(10), || redis_cli(&["-p", &port, "HELLO", "3"]).contains(&version));
    assert!(learned, "HELLO does not say {version}: {}", redis_cli(&["-p", &port, "HELLO", "3"]));
    let proxy_info = redis_cli(&["-p", &port, "INFO"]);
    assert!(proxy_info.contains(&format!("redis_version:{version}")), "{proxy_info}");
    assert!(!proxy_info.contains("flush_size"), "{proxy_info}");
    // The proxy's own version is the binary's build stamp, as `moonraft --version` prints it.
    let out = std::process::Command::new(BIN).arg("--version").output().expect("moonraft --version");
    let stamp = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("moonraft ").to_owned();
    assert!(proxy_info.contains(&format!("moonraft_version:{stamp}")), "{proxy_info}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let p = Proxy::start(&["--log-format", "json"]);
    let log = p.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    let listening = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "proxy listening")
        .expect("the start-up line");
    assert_eq!(listening["fields"]["address"], p.addr());
    let bad = std::process::Command::new(BIN).args(["proxy", "--log-format", "xml"]).output().expect("moonraft proxy");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected text or json"));
}

/// The health `CLUSTER SHARDS` gives for the proxy answering it: one entry per field of the
/// proxy's own node maps, read from a live reply.
fn own_shard_entry(c: &mut Conn, port: u16) -> (i64, String) {
    let Frame::Array(shards) = c.cmd(&["CLUSTER", "SHARDS"]) else { panic!("CLUSTER SHARDS is an array") };
    for shard in shards {
        let Frame::Array(fields) = shard else { panic!("a shard is a field list in RESP2") };
        let Some(Frame::Array(nodes)) = fields.get(3).cloned() else { panic!("nodes") };
        for node in nodes {
            let Frame::Array(f) = node else { panic!("a node is a field list") };
            let field = |k: &str| f.iter().position(|x| *x == Frame::bulk_str(k)).and_then(|i| f.get(i + 1)).cloned();
            if field("port") == Some(Frame::Integer(i64::from(port))) {
                let Some(Frame::Integer(offset)) = field("replication-offset") else { panic!("offset") };
                let Some(Frame::Bulk(health)) = field("health") else { panic!("health") };
                return (offset, String::from_utf8_lossy(&health).into_owned());
            }
        }
    }
    panic!("the proxy's own entry is missing")
}

#[test]
fn cluster_shards_says_whether_this_proxys_nodes_answer() {
    let mut s = SingleProxy::start(&[]);
    let mut c = s.proxy.conn();
    let port = s.proxy.port;
    let (offset, health) = own_shard_entry(&mut c, port);
    assert_eq!(health, "online");
    assert!(offset >= 0);
    s.b.proc.kill();
    let mut last = String::new();
    let failed = eventually(Duration::from_secs(10), || {
        last = own_shard_entry(&mut c, port).1;
        last == "failed"
    });
    assert!(failed, "health stayed {last} with a node down");
}
