"""Replica reads through moonraft with redis-py's RedisCluster: CLUSTER SLOTS lists a replica
for every range, a client that reads from replicas (it sends READONLY on every connection) gets
every key it wrote, and writes still go to the masters.

usage: replica_reads.py HOST:PORT {2|3} KEYS
Exits non-zero (with a message) on any mismatch; tests/compat.rs then checks on the Redis nodes'
INFO commandstats that the reads were served by replicas.
"""
import sys
import time

from redis.cluster import LoadBalancingStrategy, RedisCluster


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    proto = int(sys.argv[2])
    count = int(sys.argv[3])
    writer = RedisCluster(host=host, port=int(port), protocol=proto, socket_timeout=10)
    proxies = len(writer.get_primaries())
    # A client that does not read from replicas sees masters only, as from undermoon.
    for (start, end), nodes in writer.cluster_slots().items():
        check(not nodes["replicas"], f"replicas listed to a client that did not send READONLY: {nodes}")
    reader = RedisCluster(
        host=host,
        port=int(port),
        protocol=proto,
        socket_timeout=10,
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS,
    )
    # It sent READONLY on its connections: every range lists the proxy holding its master's
    # replica (but the one slot per proxy split off so that each proxy is first seen as a
    # master), and every proxy is still a primary to it.
    slots = reader.cluster_slots()
    check(sum(end - start + 1 for (start, end) in slots) == 16384, f"CLUSTER SLOTS covers {slots}")
    bare = [(s, e) for (s, e), nodes in slots.items() if not nodes["replicas"]]
    check(len(bare) <= proxies and all(s == e for s, e in bare), f"ranges without a replica: {bare}")
    for (start, end), nodes in slots.items():
        for r in nodes["replicas"]:
            check(r != nodes["primary"], f"a range's replica is its master: {nodes}")
    check(len(reader.get_primaries()) == proxies, f"{len(reader.get_primaries())} primaries, expected {proxies}")
    keys = [f"replica:{proto}:{i}" for i in range(count)]
    for k in keys:
        writer.set(k, k)
    # Replication is asynchronous (as in Redis Cluster): wait until the replicas have it all.
    deadline = time.monotonic() + 20
    missing = keys
    while missing and time.monotonic() < deadline:
        missing = [k for k in missing if reader.get(k) != k.encode()]
        if missing:
            time.sleep(0.1)
    check(not missing, f"{len(missing)} keys never read back from the replicas, e.g. {missing[:3]}")
    # A write through the replica-reading client still reaches a master.
    reader.set(f"replica:{proto}:written", "w")
    check(writer.get(f"replica:{proto}:written") == b"w", "a write through the replica-reading client")
    print(f"replica reads OK: {count} keys read through replicas (RESP{proto})")


if __name__ == "__main__":
    main()
