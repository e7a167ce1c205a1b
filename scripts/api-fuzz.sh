#!/usr/bin/env bash
# Fuzzes /api/v3 with schemathesis (from PyPI, installed here when missing) against a real
# 3-member broker group: no 5xx, every reply as the OpenAPI document says. About
# FUZZ_SECONDS * 5/3 seconds (default 150 → about 4 minutes). See scripts/api-fuzz.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if ! python3 -c "import schemathesis" >/dev/null 2>&1; then
    echo "api-fuzz: installing schemathesis from PyPI"
    python3 -m pip install -q schemathesis 2>/dev/null || python3 -m pip install -q --break-system-packages schemathesis
fi
cargo build --release -q --bin moonraft
MOONRAFT_BIN="$MOONRAFT_BIN" exec python3 scripts/api-fuzz.py
