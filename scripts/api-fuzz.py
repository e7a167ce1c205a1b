#!/usr/bin/env python3
"""Fuzzes the broker's /api/v3 with schemathesis against a real 3-member group.

Starts three brokers (with an admin and a read token) on loopback, registers a few proxies at
addresses where nothing listens (calls that ask proxies fail fast), creates a cluster, and
points schemathesis at a follower's `GET /api/v3/openapi.json`, so that every call is also
forwarded to the leader. Checks: no 5xx, every status code documented, every body matching its
documented schema and content type. Three runs: with the admin token, with the read token (writes
must be 403), and with no token (401). Afterwards every member must still answer and hold the same
state. Membership calls (`/raft/learners`, `/raft/membership`) are left out: they change the
group under test (tests/broker.rs covers them).

Bounded: FUZZ_SECONDS (default 150) for the admin run, a third of it for each of the others.
Exit status 0 only when every run passes."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moonraft_stack as ms  # noqa: E402

# pip may put the `st` command outside PATH (e.g. ~/.local/bin, or a pyenv version's bin).
ST = shutil.which("st") or os.path.join(sysconfig.get_path("scripts"), "st")
# One worker: schemathesis' generator is not safe with CPython 3.11's parser in threads
# ("AST constructor recursion depth mismatch" seen with two).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def get(addr, path, token):
    req = urllib.request.Request(f"http://{addr}/api/v3{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def schemathesis(schema_url, token, seconds, report_dir, cwd, extra=()):
    cmd = [ST, "run", schema_url, "--checks", CHECKS, "--max-time", str(seconds), "--workers", "1",
           "--request-timeout", "10", "--seed", os.environ.get("FUZZ_SEED", "1"),
           "--exclude-path", "/raft/learners", "--exclude-path", "/raft/membership",
           "--report", "junit", "--report-dir", report_dir, *extra]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    shown = [("Bearer ***" if c.startswith("Authorization") else c) for c in cmd]
    print("api-fuzz:", " ".join(shown), flush=True)
    # In the temp dir: schemathesis keeps a cache in its working directory.
    return subprocess.run(cmd, cwd=cwd).returncode


def main():
    seconds = int(os.environ.get("FUZZ_SECONDS", "150"))
    tmp = tempfile.mkdtemp(prefix="moonraft-api-fuzz.")
    admin, read = secrets.token_hex(16), secrets.token_hex(16)
    ms.TOKEN = admin
    status = 0
    try:
        stack = ms.Stack(tmp, broker_flags=["--admin-token", admin, "--read-token", read], coordinators=0)
        # The document's examples name proxy 127.0.0.1:6001 and cluster "mycluster": they exist.
        for i in range(8):
            port = 6001 if i == 0 else ms.free_port()
            ms.http(stack.api, "POST", "/proxies/meta", {
                "proxy_address": f"127.0.0.1:{port}",
                "nodes": [f"127.0.0.1:{ms.free_port()}", f"127.0.0.1:{ms.free_port()}"],
                "host": f"host{i}"})
        ms.http(stack.api, "POST", "/clusters/meta/mycluster", {"node_number": 4})
        leader = get(stack.api, "/raft/status", admin)["leader_id"]
        follower = next(h for i, (h, _) in enumerate(stack.brokers) if i + 1 != leader)
        schema = f"http://{follower}/api/v3/openapi.json"
        runs = [("admin", admin, seconds), ("read", read, max(10, seconds // 3)), ("none", None, max(10, seconds // 3))]
        for name, token, secs in runs:
            rc = schemathesis(schema, token, secs, f"{tmp}/report-{name}", tmp)
            print(f"api-fuzz: {name} token: {'passed' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
            status |= rc != 0
        # Every member still answers, and they agree.
        deadline = time.time() + 10
        while True:
            states = [get(h, "/raft/status", admin) for h, _ in stack.brokers]
            applied = {s["last_applied_index"] for s in states}
            digests = {s["state_sha256"] for s in states}
            if len(applied) == 1 and len(digests) == 1:
                print(f"api-fuzz: 3 members answer, applied index {applied.pop()}, one state", flush=True)
                break
            if time.time() > deadline:
                print(f"api-fuzz: members disagree: {states}", file=sys.stderr)
                status = 1
                break
            time.sleep(0.2)
    except Exception as e:  # noqa: BLE001 - any failure to run is a failed fuzz
        print(f"api-fuzz: {e}", file=sys.stderr)
        status = 1
    finally:
        if status:
            os.environ["KEEP_TMP"] = "1"
        ms.stop_all(tmp)
    sys.exit(status)


if __name__ == "__main__":
    main()
