"""Drives a moonraft cluster with redis-py's RedisCluster, as an application would.

usage: redis_cluster_client.py HOST:PORT {default|2|3} [KEYS]
Exits non-zero (with a message) on any mismatch.
"""
import sys

import redis
from redis.cluster import RedisCluster


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    proto = sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    kwargs = {} if proto == "default" else {"protocol": int(proto)}
    rc = RedisCluster(host=host, port=int(port), socket_timeout=10, **kwargs)
    nodes = rc.get_nodes()
    if len(nodes) < 2:
        sys.exit(f"expected at least 2 nodes, got {nodes}")
    slots = set()
    for i in range(n):
        key = f"key:{proto}:{i}"
        slots.add(rc.keyslot(key))
        if rc.set(key, f"value-{i}") is not True:
            sys.exit(f"SET {key} failed")
    for i in range(n):
        key = f"key:{proto}:{i}"
        got = rc.get(key)
        if got != f"value-{i}".encode():
            sys.exit(f"GET {key}: {got!r}")
    # pipelines are split per node by the client
    pipe = rc.pipeline()
    for i in range(100):
        pipe.incr(f"ctr:{proto}:{i}")
    if pipe.execute() != [1] * 100:
        sys.exit("pipeline INCR mismatch")
    # multi-key commands within one slot
    rc.mset_nonatomic({f"{{tag}}:{proto}:a": "1", f"{{tag}}:{proto}:b": "2"})
    if rc.mget([f"{{tag}}:{proto}:a", f"{{tag}}:{proto}:b"]) != [b"1", b"2"]:
        sys.exit("MGET mismatch")
    rc.hset(f"h:{proto}", mapping={"f1": "v1", "f2": "v2"})
    if rc.hgetall(f"h:{proto}") != {b"f1": b"v1", b"f2": b"v2"}:
        sys.exit("HGETALL mismatch")
    # cross-slot MGET is split by the client over nodes
    keys = [f"key:{proto}:{i}" for i in range(50)]
    if rc.mget_nonatomic(keys) != [f"value-{i}".encode() for i in range(50)]:
        sys.exit("mget_nonatomic mismatch")
    print(f"redis-py {redis.__version__} protocol={proto}: {n} keys over {len(slots)} slots and {len(nodes)} nodes OK")


if __name__ == "__main__":
    main()
