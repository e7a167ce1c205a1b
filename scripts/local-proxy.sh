#!/usr/bin/env bash
# The main job until the full local cluster exists: two redis-servers and one moonraft proxy
# owning all 16384 slots, ready for `redis-cli -c -p 6001`. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bin moonraft

PROXY_PORT="${PROXY_PORT:-6001}"
REDIS_A="${REDIS_A:-7001}"
REDIS_B="${REDIS_B:-7002}"
DATA="${DATA_DIR:-$(mktemp -d /tmp/moonraft-local.XXXXXX)}"
mkdir -p "$DATA"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped; logs are in $DATA"
}
trap cleanup EXIT INT TERM

for port in "$PROXY_PORT" "$REDIS_A" "$REDIS_B"; do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
        echo "port $port is in use; set PROXY_PORT/REDIS_A/REDIS_B to free ports" >&2
        exit 1
    fi
done
for port in "$REDIS_A" "$REDIS_B"; do
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$DATA" \
        --logfile "$DATA/redis-$port.log" &
    pids+=($!)
done
"$MOONRAFT_BIN" proxy --address "127.0.0.1:$PROXY_PORT" 2>"$DATA/proxy.log" &
pids+=($!)
for _ in $(seq 50); do
    redis-cli -p "$PROXY_PORT" ping >/dev/null 2>&1 && redis-cli -p "$REDIS_A" ping >/dev/null 2>&1 \
        && redis-cli -p "$REDIS_B" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$PROXY_PORT" UMCTL SETCLUSTER v2 1 NOFLAG local \
    "127.0.0.1:$REDIS_A" 1 0-8191 "127.0.0.1:$REDIS_B" 1 8192-16383 >/dev/null
cat <<MSG
moonraft proxy ready on 127.0.0.1:$PROXY_PORT (cluster "local": slots 0-8191 -> redis :$REDIS_A, 8192-16383 -> redis :$REDIS_B)
  redis-cli -c -p $PROXY_PORT set hello world
  redis-cli -c -p $PROXY_PORT cluster nodes
logs: $DATA   (Ctrl-C to stop)
MSG
wait "${pids[@]}"
