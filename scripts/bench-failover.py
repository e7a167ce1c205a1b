#!/usr/bin/env python3
"""Client-visible unavailability when the host of a master proxy is lost, and metadata
propagation time, on this machine.

Starts 3 brokers, 2 coordinators and proxies with two redis-servers each (every proxy its own
"host"), all on loopback. For each run: create a 4-node cluster, write keys and wait for
replication, then kill -9 (or SIGSTOP) the host of the proxy owning slot 0 (the proxy and its
two redis-servers) while a client keeps writing a key of that proxy. Prints the time from the
fault to the first successful write, per run and as median/max, for both faults. Then measures
the time from an acknowledged metadata change (PATCH /clusters/config) to every proxy of the
cluster having it (UMCTL GETEPOCH).

    scripts/bench-failover.py [--runs 5] [--samples 20]

Every process it starts is stopped when it ends (also on failure or Ctrl-C).
"""

import argparse
import signal
import statistics
import sys
import tempfile
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from moonraft_stack import Stack, http, port_of, stop_all, wait_epoch, wait_replicas

def slot_of_proxy(cluster, proxy):
    for n in cluster["nodes"]:
        if n["proxy_address"] == proxy and n["repl"]["role"] == "master" and n["slots"]:
            return n["slots"][0]["range_list"][0][0]
    return None


def wait_replicated(cluster, timeout=30):
    def same_size(n):
        size = lambda a: redis.Redis(port=port_of(a), socket_timeout=1).dbsize()
        master = size(n["repl"]["peers"][0]["node_address"])
        return master == size(n["address"]) and master > 0
    wait_replicas(cluster, same_size, timeout, every=0.05)


class Writer:
    """Writes one key like a cluster client would: to the proxy that owns it, following
    MOVED, falling back to the other known proxies on errors (0.2 s socket timeout)."""

    def __init__(self, seeds, key):
        self.seeds = seeds
        self.key = key
        self.target = None
        self.conns = {}

    def conn(self, addr):
        if addr not in self.conns:
            # No client-side retries: redis-py's default (3 retries with backoff) would add
            # seconds to what we measure.
            self.conns[addr] = redis.Redis(port=int(addr.split(":")[1]), socket_timeout=0.2,
                                           socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        return self.conns[addr]

    def write_once(self, value):
        order = ([self.target] if self.target else []) + self.seeds
        for addr in order:
            try:
                self.conn(addr).set(self.key, value)
                self.target = addr
                return True
            except redis.exceptions.MovedError as e:
                moved = f"{e.host}:{e.port}"
                try:
                    self.conn(moved).set(self.key, value)
                    self.target = moved
                    return True
                except Exception:
                    self.conns.pop(moved, None)
            except Exception:
                self.conns.pop(addr, None)
            if addr == self.target:
                self.target = None
        return False


def one_run(stack, fault, run):
    name = f"b{fault}{run}"
    for _ in range(4 - sum(1 for a in stack.hosts if a not in stack.used)):
        stack.add_host()
    http(stack.api, "POST", f"/clusters/meta/{name}", {"node_number": 4})
    cluster = http(stack.api, "GET", f"/clusters/meta/{name}")["cluster"]
    proxies = sorted({n["proxy_address"] for n in cluster["nodes"]})
    wait_epoch(proxies, cluster["epoch"])
    stack.used.update(proxies)
    rc = redis.RedisCluster(host="127.0.0.1", port=int(proxies[0].split(":")[1]))
    for i in range(200):
        rc.set(f"{name}-{i}", i)
    rc.close()
    wait_replicated(cluster)
    victim = min(proxies, key=lambda p: slot_of_proxy(cluster, p) if slot_of_proxy(cluster, p) is not None else 1 << 20)
    lo = slot_of_proxy(cluster, victim)
    key = None
    for i in range(100000):
        if redis.crc.key_slot(f"{name}-k{i}".encode()) == lo:
            key = f"{name}-k{i}"
            break
    seeds = [a for a in stack.hosts if a != victim]
    w = Writer([victim] + seeds, key)
    assert w.write_once("before")
    sig = signal.SIGKILL if fault == "kill" else signal.SIGSTOP
    t0 = time.time()
    for p in stack.hosts[victim]:
        p.send_signal(sig)
    # Wait for the first successful write (bounded: 60 s).
    while time.time() - t0 < 60:
        if w.write_once(f"after-{time.time()}"):
            break
        time.sleep(0.005)
    else:
        raise RuntimeError("no successful write within 60 s")
    took = time.time() - t0
    # Clean up: the lost host leaves for good; the cluster is deleted, its proxies freed.
    for p in stack.hosts.pop(victim):
        if fault == "stop":
            p.send_signal(signal.SIGCONT)
        p.kill()
    deadline = time.time() + 30
    while victim not in (http(stack.api, "GET", "/proxies/failed/addresses") or {}).get("addresses", []):
        if time.time() > deadline:
            raise RuntimeError("victim not in the failed set")
        time.sleep(0.05)
    http(stack.api, "DELETE", f"/clusters/meta/{name}")
    http(stack.api, "DELETE", f"/proxies/meta/{victim}")
    stack.used.clear()
    return took


def propagation(stack, samples):
    for _ in range(4 - len(stack.hosts)):
        stack.add_host()
    http(stack.api, "POST", "/clusters/meta/prop", {"node_number": 4})
    cluster = http(stack.api, "GET", "/clusters/meta/prop")["cluster"]
    proxies = sorted({n["proxy_address"] for n in cluster["nodes"]})
    wait_epoch(proxies, cluster["epoch"])
    out = []
    strategies = ["set_get_only", "disabled"]
    for i in range(samples):
        epoch = http(stack.api, "GET", "/epoch")
        http(stack.api, "PATCH", "/clusters/config/prop", {"compression_strategy": strategies[i % 2]})
        acked = time.time()
        done = wait_epoch(proxies, epoch + 1)
        out.append(done - acked)
    return out


def summary(label, xs, target):
    xs_ms = [x * 1000 for x in xs]
    print(f"{label}: " + " ".join(f"{x:.0f}" for x in xs_ms) + f" ms  | median {statistics.median(xs_ms):.0f} ms,"
          f" max {max(xs_ms):.0f} ms (target ≤ {target})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-failover-")
    try:
        stack = Stack(tmp)
        stack.used = set()
        for _ in range(4):
            stack.add_host()
        results = {}
        for fault in ("kill", "stop"):
            results[fault] = [one_run(stack, fault, r) for r in range(args.runs)]
        prop = propagation(stack, args.samples)
        print(f"moonraft failover benchmark ({args.runs} runs per fault, 2 coordinators, 3 brokers, defaults)")
        summary("host lost, kill -9  → first successful write", results["kill"], "1.5 s")
        summary("host hung, SIGSTOP  → first successful write", results["stop"], "3 s")
        summary(f"metadata commit → all proxies of the cluster ({args.samples} samples)", prop, "200 ms")
    finally:
        stop_all(tmp)


if __name__ == "__main__":
    sys.exit(main())
