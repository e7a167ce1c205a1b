#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, then end-to-end tests with
# real redis-server processes, real proxies and real clients (redis-cli, redis-py).
# Everything builds in the release profile only, so each dependency is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads "${TEST_THREADS:-4}"
