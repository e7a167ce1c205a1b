#!/usr/bin/env python3
"""A whole moonraft cluster beside a native Redis Cluster of the same size, on this machine.

Both have 4 masters and 4 replicas: Redis Cluster as 8 redis-servers with cluster-enabled
(made by `redis-cli --cluster create --cluster-replicas 1`); moonraft as 4 proxies with two
redis-servers each (8 nodes), 3 brokers and 1 coordinator. Against each, alternately, ROUNDS
times (default 3):

1. `redis-benchmark --cluster -c 50 -t set,get` with few keys (no -r: one key, one slot) and
   with many keys (-r 1000000, spread over every slot);
2. a redis-py `RedisCluster` client in THREADS threads (default 8), each doing OPS SET+GET
   pairs (default 1000) on random keys.

Prints the medians (rps, p50/p99 ms from redis-benchmark) with their spread, and the ratio
moonraft/Redis Cluster. Not a test: it prints numbers. Bounded: REQUESTS per redis-benchmark run
(default 100000)."""

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moonraft_stack as ms  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
REQUESTS = int(os.environ.get("REQUESTS", "100000"))
THREADS = int(os.environ.get("THREADS", "8"))
OPS = int(os.environ.get("OPS", "1000"))


def redis_cluster(tmp):
    """8 cluster-enabled redis-servers joined as 4 masters with a replica each; the first port."""
    ports = [ms.free_port() for _ in range(8)]
    for p in ports:
        d = f"{tmp}/rc{p}"
        os.makedirs(d)
        ms.spawn(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--cluster-enabled", "yes", "--cluster-config-file", f"{d}/nodes.conf", "--dir", d],
                 f"{d}/redis.log", f"redis-cluster 127.0.0.1:{p}")
    for p in ports:
        ms.wait_port(p)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "1",
                    "--cluster-yes"], check=True, capture_output=True, timeout=120)
    deadline = time.time() + 60
    while time.time() < deadline:
        states = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True, text=True,
                                 timeout=5).stdout for p in ports]
        if all("cluster_state:ok" in s for s in states):
            return ports[0]
        time.sleep(0.2)
    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")


def moonraft_cluster(tmp):
    """4 proxies (8 nodes) in one cluster; the first proxy's port."""
    stack = ms.Stack(tmp, coordinators=1)
    proxies = [stack.add_host() for _ in range(4)]
    ms.http(stack.api, "POST", "/clusters/meta/bench", {"node_number": 8})
    deadline = time.time() + 30
    while True:
        try:
            rc = RedisCluster(host="127.0.0.1", port=ms.port_of(proxies[0]))
            rc.set("warm", "1")
            rc.close()
            return ms.port_of(proxies[0])
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def benchmark(port, many_keys):
    """{test: (rps, p50 ms, p99 ms)} from one `redis-benchmark --cluster` run."""
    args = ["redis-benchmark", "-p", str(port), "--cluster", "-c", "50", "-n", str(REQUESTS), "-t", "set,get", "--csv"]
    if many_keys:
        args += ["-r", "1000000"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600).stdout
    res = {}
    for line in out.splitlines()[1:]:
        f = [x.strip('"') for x in line.split(",")]
        if len(f) >= 7 and f[0] in ("SET", "GET"):
            res[f[0]] = (float(f[1]), float(f[4]), float(f[6]))
    return res


def redis_py(port):
    """SET+GET pairs per second from THREADS threads, each with its own RedisCluster client."""
    clients = [RedisCluster(host="127.0.0.1", port=port) for _ in range(THREADS)]
    errors = []

    def work(c, seed):
        rnd = random.Random(seed)
        try:
            for _ in range(OPS):
                k = f"k{rnd.randrange(1_000_000)}"
                c.set(k, "v")
                c.get(k)
        except Exception as e:  # counted, and the run is reported as failed
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    took = time.perf_counter() - start
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"redis-py errors: {errors[:3]}")
    return 2 * THREADS * OPS / took


def main():
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-cluster.")
    try:
        ports = {"redis-cluster": redis_cluster(tmp), "moonraft": moonraft_cluster(tmp)}
        results = {}  # (side, case) -> [values]
        for r in range(ROUNDS):
            order = ["redis-cluster", "moonraft"] if r % 2 == 0 else ["moonraft", "redis-cluster"]
            for side in order:
                for many in (False, True):
                    for t, (rps, p50, p99) in benchmark(ports[side], many).items():
                        keys = "many" if many else "few"
                        results.setdefault((side, f"{t} {keys} keys rps"), []).append(rps)
                        results.setdefault((side, f"{t} {keys} keys p50"), []).append(p50)
                        results.setdefault((side, f"{t} {keys} keys p99"), []).append(p99)
                results.setdefault((side, "redis-py ops/s"), []).append(redis_py(ports[side]))
        print(f"4 masters + 4 replicas each; {os.cpu_count()} cores; rounds={ROUNDS}; "
              f"redis-benchmark --cluster -c 50 -n {REQUESTS}; redis-py {THREADS} threads x {OPS} SET+GET")
        print(f"{'case':<26} {'redis-cluster':>22} {'moonraft':>22} {'moonraft/rc':>12}")
        cases = []
        for (_, case) in results:
            if case not in cases:
                cases.append(case)
        for case in cases:
            rc, mr = results[("redis-cluster", case)], results[("moonraft", case)]
            mrc, mmr = statistics.median(rc), statistics.median(mr)
            fmt = (lambda v: f"{v:,.0f}") if ("rps" in case or "ops" in case) else (lambda v: f"{v:.3f}")
            print(f"{case:<26} {fmt(mrc):>9} [{fmt(min(rc))}-{fmt(max(rc))}] {fmt(mmr):>9} [{fmt(min(mr))}-{fmt(max(mr))}]"
                  f" {mmr / mrc if mrc else float('nan'):>8.2f}")
    finally:
        ms.stop_all(tmp)


if __name__ == "__main__":
    main()
