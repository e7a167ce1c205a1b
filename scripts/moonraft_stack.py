"""Shared helpers of the benchmark scripts: start a broker group, coordinators and proxies
(each its own "host" with two redis-servers) on loopback, talk to /api/v3, and stop every
process at the end."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import redis

BIN = os.environ.get("MOONRAFT_BIN", "/var/tmp/moonraft-target/release/moonraft")
PROCS = []
# The broker group's admin token, sent by http() when set.
TOKEN = None
# pid → what it is ("broker", "coordinator", "proxy", "redis 127.0.0.1:port"), for cpu_seconds().
LABELS = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, log, label=None):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env={k: v for k, v in os.environ.items() if k != "RUST_LOG"})
    PROCS.append(p)
    LABELS[p.pid] = label or os.path.basename(args[0])
    return p


def cpu_seconds():
    """CPU time (user + system) used so far by every started process, by label, plus "client"
    (this Python process: the benchmark's client thread and its polling)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in PROCS:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
        out[LABELS[p.pid]] = out.get(LABELS[p.pid], 0) + used
    t = os.times()
    out["client"] = t.user + t.system
    return out


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


def http(addr, method, path, body=None):
    """An /api/v3 call, retrying RETRY/503 and connection errors for up to 10 s."""
    deadline = time.time() + 10
    while True:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{addr}/api/v3{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if TOKEN:
            req.add_header("Authorization", f"Bearer {TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            if (e.code == 409 and b"RETRY" in text) or e.code == 503:
                pass
            else:
                raise RuntimeError(f"{method} {path}: {e.code} {text!r}")
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{method} {path}: no answer")
        time.sleep(0.1)


class Stack:
    def __init__(self, tmp, broker_flags=(), coordinators=2):
        self.tmp = tmp
        self.brokers = []
        ports = [(free_port(), free_port()) for _ in range(3)]
        members = ",".join(f"{i + 1}=127.0.0.1:{g}/127.0.0.1:{h}" for i, (h, g) in enumerate(ports))
        for i, (h, g) in enumerate(ports):
            spawn([BIN, "broker", "--node-id", str(i + 1), "--address", f"127.0.0.1:{h}", "--grpc-address",
                   f"127.0.0.1:{g}", "--data-dir", f"{tmp}/broker{i + 1}", "--bootstrap", "true",
                   "--initial-members", members, *broker_flags], f"{tmp}/broker{i + 1}.log", "broker")
            self.brokers.append((f"127.0.0.1:{h}", f"127.0.0.1:{g}"))
        for h, _ in self.brokers:
            wait_port(int(h.split(":")[1]))
        self.api = self.brokers[0][0]
        http(self.api, "GET", "/epoch")
        grpc = ",".join(g for _, g in self.brokers)
        for i in range(coordinators):
            admin = free_port()
            spawn([BIN, "coordinator", "--address", f"127.0.0.1:{admin}", "--broker-address", grpc,
                   "--reporter-id", f"co{i}"], f"{tmp}/coordinator{i}.log", "coordinator")
            wait_port(admin)
        self.hosts = {}
        self.n = 0

    def add_host(self, proxy_flags=()):
        self.n += 1
        redis_procs, nodes = [], []
        for _ in range(2):
            port = free_port()
            p = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", self.tmp], f"{self.tmp}/redis{port}.log", f"redis 127.0.0.1:{port}")
            wait_port(port)
            redis_procs.append(p)
            nodes.append(f"127.0.0.1:{port}")
        port = free_port()
        proxy = spawn([BIN, "proxy", "--address", f"127.0.0.1:{port}", *proxy_flags], f"{self.tmp}/proxy{port}.log",
                      f"proxy 127.0.0.1:{port}")
        wait_port(port)
        addr = f"127.0.0.1:{port}"
        http(self.api, "POST", "/proxies/meta", {"proxy_address": addr, "nodes": nodes, "host": f"host{self.n}"})
        self.hosts[addr] = [proxy] + redis_procs
        return addr


def wait_epoch(proxies, epoch, timeout=10):
    deadline = time.time() + timeout
    conns = [redis.Redis(port=int(p.split(":")[1]), socket_timeout=1) for p in proxies]
    while time.time() < deadline:
        if all(int(c.execute_command("UMCTL", "GETEPOCH")) >= epoch for c in conns):
            return time.time()
        time.sleep(0.001)
    raise RuntimeError("proxies did not reach the epoch")


def wait_replicas(cluster, ready, timeout, every=0.1):
    """Waits until `ready(replica_node)` holds for every replica node of the cluster's JSON."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(ready(n) for n in cluster["nodes"] if n["repl"]["role"] == "replica"):
            return
        time.sleep(every)
    raise RuntimeError("the replicas did not catch up")


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def stop_all(tmp=None):
    """Stops every process this module started, then removes `tmp` (kept with KEEP_TMP=1)."""
    for p in PROCS:
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait(timeout=5)
        except Exception:
            pass
    if tmp is not None:
        if os.environ.get("KEEP_TMP"):
            print("logs in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
