#!/usr/bin/env bash
# The main job: the whole system on this machine (3 brokers, 2 coordinators, 6 proxies with
# 12 redis-servers) via `moonraft demo`. Extra arguments go to `moonraft demo` (--fresh,
# --data-dir DIR, …). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bin moonraft
exec "$CARGO_TARGET_DIR/release/moonraft" demo "$@"
