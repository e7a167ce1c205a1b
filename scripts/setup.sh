#!/usr/bin/env bash
# Installs what moonraft needs on a Debian machine: redis-server/redis-tools (used by the local
# cluster and the tests), clang/libclang (RocksDB bindings), redis-py (client tests), and checks
# the Rust toolchain. Safe to run again: it only installs what is missing.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# tests/security.rs makes its TLS certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The root-only fault tests (tests/root_faults.rs) cut traffic with iptables.
if [ "$(id -u)" -eq 0 ]; then command -v iptables >/dev/null 2>&1 || need_apt+=(iptables); fi

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} from Debian packages"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import redis' >/dev/null 2>&1; then
    echo "setup: installing redis-py from PyPI"
    python3 -m pip install -q redis 2>/dev/null || python3 -m pip install -q --break-system-packages redis
fi
# The metrics tests read /metrics with Prometheus's own parser (prometheus_client).
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "setup: installing prometheus_client from PyPI"
    python3 -m pip install -q prometheus-client 2>/dev/null || python3 -m pip install -q --break-system-packages prometheus-client
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the Rust toolchain (https://rustup.rs) and run again" >&2
    exit 1
fi
echo "setup: $(cargo --version), $(redis-server --version | cut -d' ' -f1-3), redis-py $(python3 -c 'import redis; print(redis.__version__)')"
