#!/usr/bin/env bash
# Runs the cargo-fuzz targets (RESP codec, SETCLUSTER/SETREPL parsing) for SECONDS each.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the stable toolchain
# accept the sanitizer flags cargo-fuzz passes. Not part of the test command.
#   SECONDS_PER_TARGET=300 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
T="${SECONDS_PER_TARGET:-120}"
for target in resp_codec setcluster; do
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$T" -max_len=4096 2>&1 \
        | grep -E "^Done|SUMMARY|panicked" || true
done
