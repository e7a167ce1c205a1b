#!/usr/bin/env bash
# Registers the six proxies of the docker-compose example with the broker group (any member):
# server_proxyN:600N in front of redis(2N-1):6379 and redis(2N):6379, each its own host.
set -euo pipefail
BROKER="${BROKER:-localhost:7799}"
# The deployment's admin token (docker/.env, made by docker/credentials.sh).
ENV_FILE="$(dirname "$0")/../../docker/.env"
if [ -z "${MOONRAFT_ADMIN_TOKEN:-}" ] && [ -f "$ENV_FILE" ]; then
    MOONRAFT_ADMIN_TOKEN=$(sed -n 's/^MOONRAFT_ADMIN_TOKEN=//p' "$ENV_FILE")
fi
AUTH=()
if [ -n "${MOONRAFT_ADMIN_TOKEN:-}" ]; then AUTH=(-H "Authorization: Bearer $MOONRAFT_ADMIN_TOKEN"); fi
for n in 1 2 3 4 5 6; do
    body="{\"proxy_address\": \"server_proxy$n:600$n\", \"nodes\": [\"redis$((2*n-1)):6379\", \"redis$((2*n)):6379\"]}"
    for _ in $(seq 1 50); do
        code=$(curl -s -o /tmp/moonraft-init.$$ -w '%{http_code}' -XPOST -H 'Content-Type: application/json' "${AUTH[@]}" \
            "http://$BROKER/api/v3/proxies/meta" -d "$body" || true)
        case "$code" in
            200) echo "registered server_proxy$n:600$n"; break ;;
            409) if grep -q ALREADY_EXISTED /tmp/moonraft-init.$$; then echo "server_proxy$n:600$n already registered"; break; fi ;;
        esac
        sleep 0.2
    done
done
rm -f /tmp/moonraft-init.$$
