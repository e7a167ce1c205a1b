#!/usr/bin/env bash
# A short fault-injection smoke for CI (about 90 s): the register workload with kill, pause and,
# where network namespaces can be made (root), partitions; then redis-set while the cluster
# scales out and in. Fails when the checker finds an anomaly, cannot decide, or a run breaks.
# Histories and reports stay in $JEPSEN_OUT (default: a temp dir, printed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -q -p moonraft-jepsen --bin moonraft-jepsen
cargo build --release -q --bin moonraft
J="$CARGO_TARGET_DIR/release/moonraft-jepsen"
OUT="${JEPSEN_OUT:-$(mktemp -d /tmp/moonraft-jepsen-smoke.XXXXXX)}"
SECS="${JEPSEN_SMOKE_SECONDS:-25}"
if [ "$(id -u)" -eq 0 ]; then NEMESIS=kill,pause,partition; NETNS=(); else NEMESIS=kill,pause; NETNS=(--no-netns); fi
status=0
run() {
    local name=$1; shift
    echo "jepsen-smoke: $name: moonraft-jepsen test $* --time-limit $SECS --out $OUT/$name"
    if "$J" test "$@" --time-limit "$SECS" --out "$OUT/$name" 2> "$OUT/$name.progress"; then
        echo "jepsen-smoke: $name: valid"
    else
        echo "jepsen-smoke: $name: FAILED (exit $?): see $OUT/$name/results.json and report.html" >&2
        tail -20 "$OUT/$name.progress" >&2 || true
        status=1
    fi
}
mkdir -p "$OUT"
run register --workload register --nemesis "$NEMESIS" --concurrency 10 "${NETNS[@]}"
run redis-set --workload redis-set --nemesis migrate --concurrency 10 "${NETNS[@]}"
exit $status
