#!/usr/bin/env python3
"""Benchmark a 3-member moonraft broker group on this machine (not a test: prints numbers).

Starts three brokers (default Raft timing) on free loopback ports with fresh data dirs, then
measures: write latency p50/p99 and writes/s for proxy registration and for cluster
create+delete, linearizable read latency (through the leader and through a follower), and the
time from kill -9 of the leader to the first successful write through a survivor.
Every loop is bounded in count and time; every process is stopped at the end.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("MOONRAFT_BIN", "/var/tmp/moonraft-target/release/moonraft")
N_WRITES = int(os.environ.get("WRITES", "500"))
N_READS = int(os.environ.get("READS", "1000"))
EXTRA = os.environ.get("BROKER_ARGS", "").split()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(addr, method, path, body=None, timeout=10):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, "/api/v3" + path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


RETRIES = {"count": 0}


def call_retry(addrs, method, path, body=None):
    """Like call(), but retries 409 RETRY (elections) on the members in turn; counts retries."""
    for attempt in range(200):
        addr = addrs[attempt % len(addrs)]
        try:
            st, data = call(addr, method, path, body)
        except OSError:
            st, data = 0, b""
        if st == 409 and data.startswith(b'{"error":"RETRY"'):
            RETRIES["count"] += 1
            time.sleep(0.02)
            continue
        if st == 0:
            time.sleep(0.02)
            continue
        return st, data
    sys.exit(f"{method} {path}: no answer")


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def main():
    tmp = tempfile.mkdtemp(prefix="moonraft-bench-broker-")
    ports = [(free_port(), free_port()) for _ in range(3)]
    members = ",".join(f"{i + 1}=127.0.0.1:{g}/127.0.0.1:{h}" for i, (h, g) in enumerate(ports))
    procs = []
    try:
        for i, (h, g) in enumerate(ports):
            log = open(os.path.join(tmp, f"b{i + 1}.log"), "w")
            procs.append(subprocess.Popen(
                [BIN, "broker", "--node-id", str(i + 1), "--address", f"127.0.0.1:{h}", "--grpc-address", f"127.0.0.1:{g}",
                 "--data-dir", os.path.join(tmp, f"b{i + 1}"), "--bootstrap", "true", "--initial-members", members,
                 "--log", "error"] + EXTRA,
                stdout=subprocess.DEVNULL, stderr=log))
        addrs = [f"127.0.0.1:{h}" for h, _ in ports]

        def leader_id():
            for a in addrs:
                try:
                    st, body = call(a, "GET", "/raft/status", timeout=1)
                    if st == 200 and json.loads(body).get("leader_id"):
                        return json.loads(body)["leader_id"]
                except OSError:
                    pass
            return None

        deadline = time.time() + 30
        while leader_id() is None and time.time() < deadline:
            time.sleep(0.1)
        lid = leader_id()
        if lid is None:
            sys.exit("no leader elected")
        leader = addrs[lid - 1]
        follower = addrs[lid % 3]

        lat = []
        t0 = time.time()
        for i in range(N_WRITES):
            s = time.perf_counter()
            st, _ = call_retry([leader] + addrs, "POST", "/proxies/meta",
                               {"proxy_address": f"h{i}:6000", "nodes": [f"h{i}:7000", f"h{i}:7001"]})
            lat.append((time.perf_counter() - s) * 1000)
            assert st == 200, st
        reg_rate = N_WRITES / (time.time() - t0)
        print(f"register proxy (via leader): {N_WRITES} writes, {reg_rate:.0f} writes/s, "
              f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")

        lat = []
        t0 = time.time()
        rounds = min(100, N_WRITES // 4)
        for i in range(rounds):
            s = time.perf_counter()
            st, _ = call_retry([leader] + addrs, "POST", f"/clusters/meta/c{i}", {"node_number": 4})
            assert st == 200, st
            st, _ = call_retry([leader] + addrs, "DELETE", f"/clusters/meta/c{i}")
            assert st == 200, st
            lat.append((time.perf_counter() - s) * 1000 / 2)
        cd_rate = 2 * rounds / (time.time() - t0)
        print(f"create+delete cluster (via leader): {2 * rounds} writes, {cd_rate:.0f} writes/s, "
              f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")

        lat = []
        for _ in range(200):
            s = time.perf_counter()
            st, _ = call_retry([follower], "POST", "/failures/h1:6000/bench")
            lat.append((time.perf_counter() - s) * 1000)
        print(f"write via a follower (forwarded): p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")

        for name, addr in (("leader", leader), ("follower", follower)):
            lat = []
            for _ in range(N_READS):
                s = time.perf_counter()
                st, _ = call_retry([addr], "GET", "/epoch")
                lat.append((time.perf_counter() - s) * 1000)
                assert st == 200
            print(f"linearizable read GET /epoch via {name}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")

        print(f"RETRY answers during the measurements above (elections): {RETRIES['count']}")
        lid = leader_id() or lid
        leader = addrs[lid - 1]
        # kill -9 the leader, then write through the survivors until one succeeds
        survivors = [a for a in addrs if a != leader]
        procs[lid - 1].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        ok_after = None
        deadline = time.time() + 30
        i = 0
        while time.time() < deadline:
            a = survivors[i % 2]
            i += 1
            try:
                st, body = call(a, "POST", "/proxies/meta",
                                {"proxy_address": "after:6000", "nodes": ["after:7000", "after:7001"]}, timeout=2)
                # ALREADY_EXISTED: an earlier attempt was committed although its answer was RETRY
                if st == 200 or (st == 409 and b"ALREADY_EXISTED" in body):
                    ok_after = time.perf_counter() - killed
                    break
            except OSError:
                pass
            time.sleep(0.02)
        print(f"kill -9 of the leader -> first successful write: {ok_after:.2f} s" if ok_after else "no write succeeded within 30 s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
