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
# Tests that make faults only root can make (firewall rules, mount namespaces) are #[ignore]d
# so a plain `cargo test` skips them visibly; run them here when we can.
if [ "$(id -u)" -eq 0 ]; then
    cargo test --release --test root_faults -- --ignored --test-threads "${TEST_THREADS:-4}"
else
    echo "test: not root, so tests/root_faults.rs (firewall and mount-namespace faults) did not run" >&2
fi
