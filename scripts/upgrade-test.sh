#!/usr/bin/env bash
# A rolling upgrade from an older build to this checkout's: builds `moonraft` at <commit> (in
# a worktree of its own, with its own target dir so this checkout's build is untouched), then
# runs tests/upgrade.rs with MOONRAFT_OLD_BIN set: the cluster starts on the old build and
# every process is restarted onto this one while a client writes.
#
#   scripts/upgrade-test.sh v0.1.0        # or any commit
#
# CI runs tests/upgrade.rs without an old build (a restart onto the same build): building a
# second copy of the dependencies would double CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
COMMIT="${1:?usage: scripts/upgrade-test.sh <commit>}"
OLD_DIR="${OLD_DIR:-/var/tmp/moonraft-old}"
OLD_TARGET="${OLD_TARGET:-/var/tmp/moonraft-old-target}"
rm -rf "$OLD_DIR"
git worktree prune
git worktree add --detach "$OLD_DIR" "$COMMIT" >/dev/null
trap 'git worktree remove --force "$OLD_DIR" >/dev/null 2>&1 || true' EXIT
(cd "$OLD_DIR" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release --bin moonraft)
cp "$OLD_TARGET/release/moonraft" "$OLD_TARGET/moonraft-old"
MOONRAFT_OLD_BIN="$OLD_TARGET/moonraft-old" cargo test --release --test upgrade -- --nocapture
