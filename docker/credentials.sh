#!/usr/bin/env bash
# Generates the compose deployment's credentials once, into docker/.env (owner-only), which
# docker-compose reads for docker/docker-compose.yml and the scripts `source`. Run again: keeps
# the existing file. Delete it (and `make docker-down`) to start over with new ones.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f .env ]; then
    echo "credentials: docker/.env exists (kept)"
    exit 0
fi
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
umask 077
cat > .env <<EOT
# moonraft compose credentials (generated $(date -u +%Y-%m-%dT%H:%M:%SZ)); keep this file private.
# Brokers: curl -H "Authorization: Bearer \$MOONRAFT_ADMIN_TOKEN", moonraft ctl --token.
MOONRAFT_ADMIN_TOKEN=$(secret)
MOONRAFT_READ_TOKEN=$(secret)
MOONRAFT_CLUSTER_SECRET=$(secret)
# Proxies: data commands (redis-cli -a / REDISCLI_AUTH) and admin commands (AUTH admin …).
MOONRAFT_PROXY_PASSWORD=$(secret)
MOONRAFT_PROXY_ADMIN_PASSWORD=$(secret)
# The redis-servers' requirepass.
MOONRAFT_REDIS_PASSWORD=$(secret)
EOT
echo "credentials: generated docker/.env"
