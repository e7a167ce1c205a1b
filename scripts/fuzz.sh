#!/usr/bin/env bash
# Runs each cargo-fuzz target (RESP codec, SETCLUSTER/SETREPL parsing) for SECONDS_PER_TARGET
# seconds and fails if one crashes (a panic, an overflow, a hang past libFuzzer's timeout),
# printing the input that did it. CI runs it with 30 s per target. Installs cargo-fuzz if it is
# missing; RUSTC_BOOTSTRAP lets the stable toolchain accept the sanitizer flags cargo-fuzz
# passes. The fuzz build has its own target dir (other flags than the main build's).
#   SECONDS_PER_TARGET=300 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
T="${SECONDS_PER_TARGET:-120}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/moonraft-fuzz-target}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fi
cd fuzz
failed=0
for target in $(cargo fuzz list); do
    log="$(mktemp /tmp/moonraft-fuzz-$target.XXXXXX)"
    mkdir -p "corpus/$target"
    if RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$FUZZ_TARGET_DIR" -O "$target" "corpus/$target" -- \
        -max_total_time="$T" -max_len=4096 -timeout=10 >"$log" 2>&1; then
        echo "fuzz: $target: $(grep -E '^Done' "$log" | tail -1)"
    else
        echo "fuzz: $target FAILED:" >&2
        grep -E -A 20 "panicked|ERROR: libFuzzer|SUMMARY|artifact_prefix|Test unit written" "$log" | head -60 >&2 || tail -40 "$log" >&2
        failed=1
    fi
    rm -f "$log"
done
exit "$failed"
