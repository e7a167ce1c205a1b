# Sourced by the scripts: one cargo target dir outside the checkout, shared by CI runs and
# sessions on this machine, so dependencies are built once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/moonraft-target}"
MOONRAFT_BIN="$CARGO_TARGET_DIR/release/moonraft"
