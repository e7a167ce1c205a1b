#!/usr/bin/env python3
"""Many client connections on one moonraft proxy (in front of one redis-server):

1. IDLE (default 10,000) idle connections, each having sent one PING: the proxy's RSS per
   connection, and the throughput of 50 active clients (redis-benchmark GET/SET) without and
   with the idle ones open (ratio);
2. ACTIVE (default 1,000) active clients at once: redis-benchmark -c 1000, rps and p99;
3. (measured first) a burst: BURST (default 200) connections each SET and GET a 1 MB value, then go idle: the
   proxy's RSS before, right after, and once they are idle again (read and write buffers are
   given back after a burst, so memory per connection stays bounded).

Not a test: it prints numbers. ROUNDS (default 3) alternations of the with/without runs;
REQUESTS per redis-benchmark run (default 100000)."""

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moonraft_stack as ms  # noqa: E402

IDLE = int(os.environ.get("IDLE", "10000"))
ACTIVE = int(os.environ.get("ACTIVE", "1000"))
BURST = int(os.environ.get("BURST", "200"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
REQUESTS = int(os.environ.get("REQUESTS", "100000"))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def benchmark(port, clients, tests="set,get"):
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(REQUESTS), "-r", "100000",
                          "-t", tests, "--csv"], capture_output=True, text=True, timeout=600).stdout
    res = {}
    for line in out.splitlines()[1:]:
        f = [x.strip('"') for x in line.split(",")]
        if len(f) >= 7:
            res[f[0]] = (float(f[1]), float(f[4]), float(f[6]))
    return res


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_reply(s, want):
    """Reads until `want` bytes of replies arrived (the replies here have known sizes)."""
    got = 0
    while got < want:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed")
        got += len(chunk)


def open_idle(port, n):
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(resp("PING"))
        conns.append(s)
    for s in conns:
        read_reply(s, len(b"+PONG\r\n"))
    return conns


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + ACTIVE + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-conns.")
    try:
        rport, pport = ms.free_port(), ms.free_port()
        ms.spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--maxclients", str(want), "--dir", tmp], f"{tmp}/redis.log", "redis")
        proxy = ms.spawn([ms.BIN, "proxy", "--address", f"127.0.0.1:{pport}", "--log", "warn"], f"{tmp}/proxy.log",
                         "proxy")
        ms.wait_port(rport)
        ms.wait_port(pport)
        subprocess.run(["redis-cli", "-p", str(pport), "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "bench",
                        f"127.0.0.1:{rport}", "1", "0-16383"], check=True, capture_output=True, timeout=10)
        benchmark(pport, 50, "get")  # warm: backend connections open
        time.sleep(0.5)

        # 3. (run first, on a fresh heap) a burst of big values, then idle
        before = rss_kb(proxy.pid)
        value = b"x" * (1 << 20)
        burst = [socket.create_connection(("127.0.0.1", pport), timeout=30) for _ in range(BURST)]
        for i, s in enumerate(burst):
            s.sendall(resp("SET", f"big{i}", value) + resp("GET", f"big{i}"))
        for s in burst:
            read_reply(s, len(b"+OK\r\n") + len(b"$1048576\r\n") + len(value) + 2)
        during = rss_kb(proxy.pid)
        for s in burst:  # one small command each: the connections are used again, then idle
            s.sendall(resp("PING"))
        for s in burst:
            read_reply(s, len(b"+PONG\r\n"))
        time.sleep(1)
        after = rss_kb(proxy.pid)
        for s in burst:
            s.close()
        time.sleep(0.5)
        base = rss_kb(proxy.pid)

        # 1. idle connections
        without, with_idle = {"SET": [], "GET": []}, {"SET": [], "GET": []}
        idle = []
        per_conn = None
        for r in range(ROUNDS):
            for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
                if side == "with" and not idle:
                    idle = open_idle(pport, IDLE)
                    time.sleep(0.5)
                    if per_conn is None:
                        per_conn = (rss_kb(proxy.pid) - base) * 1024 / IDLE
                if side == "without" and idle:
                    for s in idle:
                        s.close()
                    idle = []
                    time.sleep(0.5)
                res = benchmark(pport, 50)
                for t in ("SET", "GET"):
                    (with_idle if side == "with" else without)[t].append(res.get(t, (0, 0, 0))[0])
        for s in idle:
            s.close()
        idle = []
        time.sleep(1)
        closed = rss_kb(proxy.pid)

        # 2. many active clients
        active = [benchmark(pport, ACTIVE) for _ in range(ROUNDS)]

        med = statistics.median
        print(f"one proxy, {os.cpu_count()} cores, redis-benchmark -n {REQUESTS} -r 100000, medians of {ROUNDS}")
        print(f"proxy RSS at rest {base / 1024:.1f} MB; {IDLE} idle connections: {per_conn / 1024:.1f} KB each; "
              f"{closed / 1024:.1f} MB once they closed")
        for t in ("SET", "GET"):
            w, wo = with_idle[t], without[t]
            print(f"{t} with 50 clients: {med(wo):,.0f} rps [{min(wo):,.0f}-{max(wo):,.0f}] alone, {med(w):,.0f} rps "
                  f"[{min(w):,.0f}-{max(w):,.0f}] beside {IDLE} idle connections, ratio {med(w) / med(wo):.2f}")
        for t in ("SET", "GET"):
            rps = [a[t][0] for a in active if t in a]
            p99 = [a[t][2] for a in active if t in a]
            print(f"{t} with {ACTIVE} active clients: {med(rps):,.0f} rps [{min(rps):,.0f}-{max(rps):,.0f}], "
                  f"p99 {med(p99):.2f} ms [{min(p99):.2f}-{max(p99):.2f}]")
        print(f"burst of {BURST} connections x 1 MB SET+GET: RSS {before / 1024:.1f} MB before, {during / 1024:.1f} MB "
              f"right after, {after / 1024:.1f} MB once idle ({(after - before) * 1024 / BURST / 1024:.1f} KB per "
              f"connection kept)")
    finally:
        ms.stop_all(tmp)


if __name__ == "__main__":
    main()
