#!/usr/bin/env python3
"""What Redis compatibility costs, measured side by side on one 4-proxy cluster (8 nodes):

1. redis-benchmark with --cluster (a cluster client: each command goes to the proxy serving
   its slot) against redis-benchmark without --cluster pointed at one proxy with
   active_redirection (3 of 4 commands are forwarded to another proxy), SET and GET;
2. a one-SET transaction (MULTI/SET/EXEC through redis-py's cluster pipeline) against a plain
   SET, from one redis-py RedisCluster client.

Alternates the two sides ROUNDS times (default 3) and prints medians and ratios.
Bounded: REQUESTS per redis-benchmark run (default 50000), TX iterations (default 2000)."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moonraft_stack as ms  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
REQUESTS = int(os.environ.get("REQUESTS", "50000"))
TX = int(os.environ.get("TX", "2000"))


def benchmark(port, cluster):
    args = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(REQUESTS), "-r", "100000", "-c", "50", "-q"]
    if cluster:
        args.append("--cluster")
    out = subprocess.run(args, capture_output=True, text=True, timeout=600).stdout
    rps = {}
    for line in out.replace("\r", "\n").splitlines():
        for t in ("SET", "GET"):
            if line.startswith(f"{t}: ") and "requests per second" in line:
                rps[t] = float(line.split()[1])
    return rps


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-compat.")
    try:
        stack = ms.Stack(tmp, coordinators=1)
        proxies = [stack.add_host(proxy_flags=["--active-redirection", "true"]) for _ in range(4)]
        ms.http(stack.api, "POST", "/clusters/meta/bench", {"node_number": 8})
        rc = None
        deadline = time.time() + 20
        while rc is None:
            try:
                rc = RedisCluster(host="127.0.0.1", port=ms.port_of(proxies[0]))
                rc.set("warm", "1")
            except Exception:
                rc = None
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        port = ms.port_of(proxies[0])
        results = {("cluster", "SET"): [], ("cluster", "GET"): [], ("redirect", "SET"): [], ("redirect", "GET"): [],
                   "tx": [], "plain": []}
        for r in range(ROUNDS):
            for side in (("cluster", True), ("redirect", False)) if r % 2 == 0 else (("redirect", False), ("cluster", True)):
                rps = benchmark(port, side[1])
                for t in ("SET", "GET"):
                    results[(side[0], t)].append(rps.get(t, 0.0))

            def tx():
                for i in range(TX):
                    with rc.pipeline(transaction=True) as p:
                        p.set(f"{{t}}{i}", i)
                        p.execute()

            def plain():
                for i in range(TX):
                    rc.set(f"{{t}}{i}", i)
            pair = [("tx", tx), ("plain", plain)] if r % 2 == 0 else [("plain", plain), ("tx", tx)]
            for name, f in pair:
                results[name].append(TX / timed(f))
        med = {k: statistics.median(v) for k, v in results.items()}
        spread = {k: (min(v), max(v)) for k, v in results.items()}
        print(f"rounds={ROUNDS} requests={REQUESTS} (redis-benchmark -c 50 -r 100000), tx iterations={TX}")
        for t in ("SET", "GET"):
            c, a = med[("cluster", t)], med[("redirect", t)]
            print(f"{t}: cluster client {c:,.0f} rps {spread[('cluster', t)]}, one proxy with active redirection "
                  f"{a:,.0f} rps {spread[('redirect', t)]}, ratio {a / c:.2f}")
        print(f"transaction (MULTI/SET/EXEC) {med['tx']:,.0f}/s {spread['tx']}, plain SET {med['plain']:,.0f}/s "
              f"{spread['plain']}, ratio {med['tx'] / med['plain']:.2f}")
    finally:
        ms.stop_all(tmp)


if __name__ == "__main__":
    main()
