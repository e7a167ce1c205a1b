"""What applications do through a Redis Cluster, done through moonraft with redis-py's
RedisCluster: transactions (committed, aborted, WATCH-failed), node-scoped commands merged by
the client (scan_iter, DBSIZE, KEYS, FLUSHALL), scripts (SCRIPT LOAD then EVALSHA on every node,
redis-py's Script), INFO, TIME, RANDOMKEY, MEMORY USAGE, pub/sub (a message published through one
proxy reaches subscribers on every proxy once; sharded channels through the cluster client).

usage: compat_client.py HOST:PORT {2|3} EXPECTED_PROXIES
Exits non-zero (with a message) on any mismatch.
"""
import sys

import redis
from redis.cluster import RedisCluster


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    proto = int(sys.argv[2])
    expected_proxies = int(sys.argv[3])
    rc = RedisCluster(host=host, port=int(port), protocol=proto, socket_timeout=10)
    primaries = rc.get_primaries()
    check(len(primaries) == expected_proxies, f"{len(primaries)} primaries, expected {expected_proxies}")

    # Node-scoped commands, fanned out by the client and merged per proxy.
    keys = [f"scan:{proto}:{i}" for i in range(3000)]
    pipe = rc.pipeline()
    for k in keys:
        pipe.set(k, "v")
    pipe.execute()
    seen = list(rc.scan_iter(match=f"scan:{proto}:*", count=100))
    check(len(seen) == len(set(seen)), f"scan_iter returned {len(seen) - len(set(seen))} keys twice")
    check({k.decode() for k in seen} == set(keys), f"scan_iter returned {len(set(seen))} of {len(keys)} keys")
    # redis-py asks its default node for DBSIZE and KEYS unless told to ask every primary.
    every = RedisCluster.PRIMARIES
    check(rc.dbsize(target_nodes=every) == len(keys), f"DBSIZE {rc.dbsize(target_nodes=every)} != {len(keys)}")
    check(len(rc.keys(f"scan:{proto}:*", target_nodes=every)) == len(keys), "KEYS missed keys")
    check(rc.randomkey() is not None, "RANDOMKEY on a non-empty cluster")
    usage = rc.memory_usage(keys[0])
    check(isinstance(usage, int) and usage > 0, f"MEMORY USAGE {usage!r}")
    info = rc.info(target_nodes=RedisCluster.PRIMARIES)
    for node, section in info.items():
        check("redis_version" in section and section.get("cluster_enabled") == 1, f"INFO of {node}: {section}")
    t = rc.time(target_nodes=RedisCluster.RANDOM)
    check(isinstance(t, tuple) and t[0] > 1_700_000_000, f"TIME {t!r}")

    # Transactions on one slot.
    with rc.pipeline(transaction=True) as p:
        p.set("{tx}a", 1)
        p.incr("{tx}a")
        p.get("{tx}a")
        got = p.execute()
    # (redis-py's cluster transactions leave SET's reply as b"OK")
    check(got in ([True, 2, b"2"], [b"OK", 2, b"2"]), f"MULTI/EXEC {got!r}")
    # WATCH: a change by anyone else makes EXEC return nil (WatchError in redis-py).
    other = RedisCluster(host=host, port=int(port), protocol=proto)
    with rc.pipeline(transaction=True) as p:
        p.watch("{tx}w")
        other.set("{tx}w", "changed")
        p.multi()
        p.set("{tx}w", "mine")
        try:
            p.execute()
            sys.exit("FAILED: EXEC after a watched key changed did not fail")
        except redis.WatchError:
            pass
    check(rc.get("{tx}w") == b"changed", "the aborted transaction wrote")
    # Unchanged watched key: commits.
    with rc.pipeline(transaction=True) as p:
        p.watch("{tx}w")
        p.multi()
        p.set("{tx}w", "mine")
        check(p.execute() in ([True], [b"OK"]), "EXEC with an untouched WATCH")
    # Errors while queueing abort the transaction (raw connection to the slot's proxy).
    node = rc.get_node_from_key("{tx}a")
    raw = redis.Redis(host=node.host, port=node.port, protocol=proto)
    conn = raw.connection_pool.get_connection()
    conn.send_command("MULTI")
    check(conn.read_response() == b"OK", "MULTI")
    conn.send_command("SET", "{tx}a", "queued")
    check(conn.read_response() == b"QUEUED", "QUEUED")
    conn.send_command("SET", "elsewhere", "x")
    try:
        conn.read_response()
        sys.exit("FAILED: a key of another slot was queued")
    except redis.ResponseError as e:
        # (redis-py drops the CROSSSLOT code from the message)
        check("same slot" in str(e), f"queueing another slot: {e}")
    conn.send_command("EXEC")
    try:
        conn.read_response()
        sys.exit("FAILED: EXEC after a queueing error ran")
    except redis.exceptions.ExecAbortError:
        pass
    check(rc.get("{tx}a") == b"2", "the aborted transaction wrote")
    conn.send_command("DISCARD")
    try:
        conn.read_response()
        sys.exit("FAILED: DISCARD without MULTI")
    except redis.ResponseError as e:
        check("without MULTI" in str(e), str(e))
    raw.connection_pool.release(conn)

    # Scripts: loaded on every node, so EVALSHA works for keys on any of them.
    body = "return redis.call('GET', KEYS[1])"
    sha = rc.script_load(body)
    check(all(rc.script_exists(sha)), "SCRIPT EXISTS after SCRIPT LOAD")
    for k in keys[:200]:
        check(rc.evalsha(sha, 1, k) == b"v", f"EVALSHA for {k}")
    script = rc.register_script("return redis.call('INCR', KEYS[1])")
    check(script(keys=["{s}n"]) == 1 and script(keys=["{s}n"]) == 2, "Script object")

    check_pubsub(rc, primaries, proto)

    # FLUSHALL through the cluster client empties every node.
    rc.flushall()
    check(rc.dbsize(target_nodes=every) == 0, f"DBSIZE after FLUSHALL: {rc.dbsize(target_nodes=every)}")
    print(f"redis-py {redis.__version__} protocol={proto}: {len(primaries)} proxies, compatibility OK")


def next_message(ps, kind, timeout=10.0, sharded=False):
    """The next message of `kind` on `ps` (subscription confirmations are skipped)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sharded:
            m = ps.get_sharded_message(timeout=0.5)
        else:
            m = ps.get_message(timeout=0.5)
        if m is not None and m["type"] == kind:
            return m
    sys.exit(f"FAILED: no {kind} within {timeout} s")


def check_pubsub(rc, primaries, proto):
    channel = f"news:{proto}"
    subscribers = []
    clients = []  # (a client that is garbage collected closes its pub/sub connections)
    for node in primaries:
        clients.append(redis.Redis(host=node.host, port=node.port, protocol=proto, socket_timeout=10))
        ps = clients[-1].pubsub()
        ps.subscribe(channel)
        ps.psubscribe(f"news:{proto}*")
        next_message(ps, "subscribe")
        next_message(ps, "psubscribe")
        subscribers.append(ps)
    # Through one proxy, then through the cluster client: every subscriber gets each once.
    first = primaries[0]
    publisher = redis.Redis(host=first.host, port=first.port, protocol=proto)
    receivers = publisher.publish(channel, "one")
    check(receivers == 2 * len(primaries), f"PUBLISH reached {receivers}, expected {2 * len(primaries)}")
    rc.publish(channel, "two")
    for ps in subscribers:
        for payload in (b"one", b"two"):
            m = next_message(ps, "message")
            check(m["channel"] == channel.encode() and m["data"] == payload, f"message {m!r}")
            m = next_message(ps, "pmessage")
            check(m["data"] == payload, f"pmessage {m!r}")
        extra = ps.get_message(timeout=0.3)
        check(extra is None, f"a message came twice: {extra!r}")
    # Each proxy counts the subscribers on its own nodes, like a Redis Cluster node.
    for node in primaries:
        numsub = redis.Redis(host=node.host, port=node.port, protocol=proto).pubsub_numsub(channel)
        check(numsub == [(channel.encode(), 1)], f"PUBSUB NUMSUB on {node.port}: {numsub!r}")
    for ps in subscribers:
        ps.close()
    # Sharded pub/sub through the cluster client, on channels of several slots.
    sharded = rc.pubsub()
    names = [f"shard:{proto}:{i}" for i in range(8)]
    for name in names:
        sharded.ssubscribe(name)
    for name in names:
        check(rc.spublish(name, f"to {name}") == 1, f"SPUBLISH {name} reached no subscriber")
    got = {}
    while len(got) < len(names):
        m = next_message(sharded, "smessage", sharded=True)
        got[m["channel"].decode()] = m["data"].decode()
    check(got == {n: f"to {n}" for n in names}, f"sharded messages {got!r}")
    sharded.close()


if __name__ == "__main__":
    main()
