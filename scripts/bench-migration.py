#!/usr/bin/env python3
"""Times the online scale-out of a loaded cluster from 4 to 8 nodes.

Starts 3 brokers, 1 coordinator and 4 proxies (each its own "host" with two redis-servers) on
loopback, creates a 4-node cluster, loads it with --keys keys of --size bytes (default
2,097,152 × 512 B = 1 GB) straight into the masters (redis-cli --pipe, keys routed by slot),
then runs PATCH /clusters/nodes + expand and prints the migration time, MB/s, and a client's
throughput (redis-py RedisCluster, GET/SET of loaded keys) before, during and after.

    scripts/bench-migration.py [--keys 2097152] [--size 512] [--migration-limit N]

--migration-limit sets the brokers' migration_limit (how many migrations run at once;
the spec's default is 1, 0 = all). Every process it starts is stopped when it ends.
"""

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time

import redis
from redis.crc import key_slot

from moonraft_stack import Stack, cpu_seconds, http, port_of, stop_all, wait_epoch, wait_replicas


def load(cluster, keys, size):
    """Writes key:0..keys-1 into the master owning each key's slot, with redis-cli --pipe."""
    owners = []
    for n in cluster["nodes"]:
        if n["repl"]["role"] == "master":
            for r in n["slots"]:
                for lo, hi in r["range_list"]:
                    owners.append((lo, hi, n["address"]))
    value = (b"x" * size)
    pipes = {}
    for _, _, addr in owners:
        if addr not in pipes:
            host, port = addr.rsplit(":", 1)
            pipes[addr] = subprocess.Popen(["redis-cli", "-h", host, "-p", port, "--pipe"], stdin=subprocess.PIPE,
                                           stdout=subprocess.DEVNULL)
    table = [None] * 16384
    for lo, hi, addr in owners:
        for s in range(lo, hi + 1):
            table[s] = pipes[addr].stdin
    head = b"*3\r\n$3\r\nSET\r\n"
    tail = b"$%d\r\n" % size + value + b"\r\n"
    bufs = {id(p.stdin): [] for p in pipes.values()}
    for i in range(keys):
        k = b"key:%d" % i
        out = table[key_slot(k)]
        b = bufs[id(out)]
        b.append(head + b"$%d\r\n" % len(k) + k + b"\r\n" + tail)
        if len(b) >= 4096:
            out.write(b"".join(b))
            b.clear()
    for p in pipes.values():
        b = bufs[id(p.stdin)]
        if b:
            p.stdin.write(b"".join(b))
        p.stdin.close()
    for p in pipes.values():
        p.wait()


class Client(threading.Thread):
    """GET/SET of random loaded keys through the proxies; counts completed operations."""

    def __init__(self, port, keys, size):
        super().__init__(daemon=True)
        self.rc = redis.RedisCluster(host="127.0.0.1", port=port, socket_timeout=5)
        self.keys = keys
        self.value = b"y" * size
        self.done = 0
        self.errors = 0
        self.error_kinds = {}
        # redis-py re-reads the slot map (CLUSTER SLOTS) after a few MOVED replies: count it.
        self.refreshes = 0
        self.refresh_time = 0.0
        nodes = self.rc.nodes_manager
        initialize = nodes.initialize

        def counted(*a, **kw):
            t = time.perf_counter()
            try:
                return initialize(*a, **kw)
            finally:
                self.refreshes += 1
                self.refresh_time += time.perf_counter() - t
        nodes.initialize = counted
        self.stop = False

        # Time spent per slot (and operations), so the report can split the client's time
        # between slots that move and slots that stay.
        self.slot_time = [0.0] * 16384
        self.slot_ops = [0] * 16384

    def run(self):
        rnd = random.Random(1)
        while not self.stop:
            k = "key:%d" % rnd.randrange(self.keys)
            t = time.perf_counter()
            try:
                if rnd.random() < 0.5:
                    self.rc.get(k)
                else:
                    self.rc.set(k, self.value)
                self.done += 1
            except Exception as e:
                self.errors += 1
                what = f"{type(e).__name__}: {e}"[:120]
                self.error_kinds[what] = self.error_kinds.get(what, 0) + 1
                time.sleep(0.01)
            slot = key_slot(k.encode())
            self.slot_time[slot] += time.perf_counter() - t
            self.slot_ops[slot] += 1

    def take_latencies(self):
        """(time, operations) per slot since the last call."""
        out = (self.slot_time, self.slot_ops)
        self.slot_time = [0.0] * 16384
        self.slot_ops = [0] * 16384
        return out


def latency_split(latencies, moving):
    """Mean operation latency (ms) and operations in the slots that move and in the others."""
    slot_time, slot_ops = latencies
    out = []
    for want in (True, False):
        t = sum(slot_time[s] for s in range(16384) if moving[s] == want)
        n = sum(slot_ops[s] for s in range(16384) if moving[s] == want)
        out.append((n, 1000 * t / max(n, 1)))
    return out


def rate(client, seconds):
    start = client.done
    time.sleep(seconds)
    return (client.done - start) / seconds


def wait_replicas_synced(cluster, timeout=300):
    """Waits until every replica finished its full resync, so "before" is not measured while
    Redis is busy copying the freshly loaded data to the replicas."""
    def synced(n):
        info = redis.Redis(port=port_of(n["address"])).info("replication")
        return info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == 0
    wait_replicas(cluster, synced, timeout, every=0.5)


def cpu_by_role(before, after, seconds, old, new):
    """CPU cores used per role between two cpu_seconds() snapshots; `old`/`new` are the
    cluster's metadata before and after the expand (which redis was a source or destination)."""
    roles = {}
    for cl, tag in ((new, "destination"), (old, "source")):
        for n in cl["nodes"]:
            kind = "master" if n["repl"]["role"] == "master" else "replica"
            roles[f"redis {n['address']}"] = f"redis {kind} ({tag})"
            roles[f"proxy {n['proxy_address']}"] = f"proxy ({tag})"
    used = {}
    for label, secs in after.items():
        role = roles.get(label, label)
        used[role] = used.get(role, 0) + secs - before.get(label, 0)
    return "  ".join(f"{r} {c / seconds:.2f}" for r, c in sorted(used.items(), key=lambda x: -x[1]) if c / seconds >= 0.005)


def owner(cluster, slot):
    for n in cluster["nodes"]:
        if n["repl"]["role"] == "master":
            for r in n["slots"]:
                for lo, hi in r["range_list"]:
                    if lo <= slot <= hi:
                        return n["address"]
    return None


def dbsize(cluster):
    total = 0
    for n in cluster["nodes"]:
        if n["repl"]["role"] == "master":
            total += redis.Redis(port=int(n["address"].split(":")[1])).dbsize()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=2097152)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--migration-limit", type=int, default=None)
    ap.add_argument("--timeline", action="store_true", help="print the client's ops/s every 0.5 s of the migration")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-migration-")
    flags = () if args.migration_limit is None else ("--migration-limit", str(args.migration_limit))
    try:
        stack = Stack(tmp, broker_flags=flags, coordinators=1)
        for _ in range(4):
            stack.add_host()
        http(stack.api, "POST", "/clusters/meta/bench", {"node_number": 4})
        cluster = http(stack.api, "GET", "/clusters/meta/bench")["cluster"]
        proxies = sorted({n["proxy_address"] for n in cluster["nodes"]})
        wait_epoch(proxies, cluster["epoch"])
        t = time.time()
        load(cluster, args.keys, args.size)
        loaded = dbsize(cluster)
        mb = args.keys * args.size / 1e6
        print(f"loaded {loaded} keys ({mb:.0f} MB of values) in {time.time() - t:.1f} s")
        wait_replicas_synced(cluster)
        client = Client(int(proxies[0].split(":")[1]), args.keys, args.size)
        client.start()
        time.sleep(1)
        cpu0 = cpu_seconds()
        before = rate(client, 5)
        cpu_before = (cpu0, cpu_seconds())
        old_cluster = cluster
        client.take_latencies()
        http(stack.api, "PATCH", "/clusters/nodes/bench", {"node_number": 4})
        t0 = time.time()
        cpu1 = cpu_seconds()
        http(stack.api, "POST", "/clusters/migrations/expand/bench")
        done_during = client.done
        refreshes0, refresh_time0 = client.refreshes, client.refresh_time
        last_print = 0
        timeline = []
        while True:
            timeline.append((time.time() - t0, client.done))
            info = http(stack.api, "GET", "/clusters/info/bench")
            if not info["is_migrating"]:
                break
            if time.time() - last_print > 2:
                last_print = time.time()
                for m in info["migrations"]:
                    print(f"  {time.time() - t0:5.1f} s  {m['state']:<10} {m['keys_moved']:>9} keys moved"
                          f"  ~{m['keys_remaining_estimate']:>9} left  {m['bytes_per_sec'] / 1e6:6.1f} MB/s"
                          f"  ETA {m['eta_secs']} s" + (f"  paused: {m['error']}" if m.get("error") else ""))
            if time.time() - t0 > 900:
                raise RuntimeError("migration did not finish in 15 minutes")
            time.sleep(0.2)
        took = time.time() - t0
        during = (client.done - done_during) / took
        refreshes = (client.refreshes - refreshes0, client.refresh_time - refresh_time0)
        cpu_during = (cpu1, cpu_seconds())
        latencies = client.take_latencies()
        after = rate(client, 5)
        client.stop = True
        cluster = http(stack.api, "GET", "/clusters/meta/bench")["cluster"]
        final = dbsize(cluster)
        moving = [owner(old_cluster, s) != owner(cluster, s) for s in range(16384)]
        (n_moving, lat_moving), (n_staying, lat_staying) = latency_split(latencies, moving)
        print(f"moonraft migration benchmark: expand 4 → 8 nodes, {args.keys} keys × {args.size} B, "
              f"migration_limit {args.migration_limit if args.migration_limit is not None else 'default (1)'}")
        print(f"  migration time      {took:.1f} s  (target ≤ 30 s for 1 GB)")
        print(f"  moved               half the data, {mb / 2:.0f} MB of values → {mb / 2 / took:.1f} MB/s")
        print(f"  client ops/s        before {before:.0f}  during {during:.0f}  after {after:.0f}"
              f"  (during/before {during / before:.2f}, target ≥ 0.5); client errors {client.errors}")
        print(f"  client latency      during: {lat_moving:.2f} ms in slots that moved ({n_moving} ops), "
              f"{lat_staying:.2f} ms in the others ({n_staying} ops)")
        print(f"  client slot maps    {refreshes[0]} re-reads of CLUSTER SLOTS during the migration "
              f"({refreshes[1] * 1000:.0f} ms in all)")
        if args.timeline:
            marks, last = [], (0.0, done_during)
            for t, done in timeline:
                if t - last[0] >= 0.5:
                    marks.append(f"{t:.1f}s:{(done - last[1]) / (t - last[0]):.0f}")
                    last = (t, done)
            print("  client ops/s over time  " + " ".join(marks))
        for what, n in sorted(client.error_kinds.items(), key=lambda x: -x[1])[:5]:
            print(f"  client error        {n} × {what}")
        print(f"  keys                before {loaded}  after {final}")
        print(f"  CPU cores before    {cpu_by_role(*cpu_before, 5, old_cluster, cluster)}")
        print(f"  CPU cores during    {cpu_by_role(*cpu_during, took, old_cluster, cluster)}")
    finally:
        stop_all(tmp)


if __name__ == "__main__":
    sys.exit(main())
