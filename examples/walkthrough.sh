#!/usr/bin/env bash
# undermoon's walkthrough against `moonraft demo` (start it first:
# ./scripts/demo.sh --fresh). Each step prints what it does and checks the result; the
# script stops at the first difference. Needs curl, jq and redis-cli.
#
#   DEMO_DIR=moonraft-demo examples/walkthrough.sh
#
# A = 127.0.0.1:6001 and B = 127.0.0.1:6002 get the cluster (the broker's deterministic
# choice), C = 6003 and D = 6004 are added by the scale-out, R = 6005 replaces A.
# KILL_BROKER_LEADER=1 also kills the broker leader (kill -9) before the scale-out.
set -euo pipefail
BROKERS="${BROKERS:-127.0.0.1:7799 127.0.0.1:7899 127.0.0.1:7999}"
DEMO_DIR="${DEMO_DIR:-moonraft-demo}"
# The demo's generated credentials (absent for `moonraft demo --insecure`): MOONRAFT_TOKEN for
# the brokers, REDISCLI_AUTH (read by redis-cli) for the proxies, MOONRAFT_REDIS_PASSWORD for
# the redis-servers.
if [ -f "$DEMO_DIR/credentials.env" ]; then
    # shellcheck disable=SC1091
    source "$DEMO_DIR/credentials.env"
fi
AUTH=()
if [ -n "${MOONRAFT_TOKEN:-}" ]; then AUTH=(-H "Authorization: Bearer $MOONRAFT_TOKEN"); fi
# redis-cli straight to a redis-server (not through a proxy).
redis_node() {
    if [ -n "${MOONRAFT_REDIS_PASSWORD:-}" ]; then REDISCLI_AUTH="$MOONRAFT_REDIS_PASSWORD" redis-cli "$@"; else redis-cli "$@"; fi
}

step() { printf '\n== %s\n' "$*"; }
expect() { # expect <what> <actual> <wanted>
    if [ "$2" != "$3" ]; then
        printf 'FAILED: %s\n  got:    %s\n  wanted: %s\n' "$1" "$2" "$3" >&2
        exit 1
    fi
    printf 'ok: %s = %s\n' "$1" "$2"
}
# Retries a check for up to $1 seconds (metadata propagation, failover).
eventually() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then "$@"; return 1; fi
        sleep 0.2
    done
}
# An /api/v3 call to any broker: the next one when one is down, again on RETRY (election).
# Prints the body, then the status code on a last line.
call() {
    local out
    for _ in $(seq 1 50); do
        for b in $BROKERS; do
            out=$(curl -s -m 5 -w '\n%{http_code}' -X "$1" -H 'Content-Type: application/json' "${AUTH[@]}" \
                "http://$b/api/v3$2" ${3:+-d "$3"}) || continue
            case "$out" in *'"error":"RETRY"'*) continue ;; esac
            printf '%s' "$out"
            return 0
        done
        sleep 0.2
    done
    echo "no broker answered $1 $2" >&2
    return 1
}
api() { call "$@" | sed '$d'; }
status() { call "$@" | tail -n 1; }

step "1. the demo runs and its six proxies are registered"
expect "proxy addresses" "$(api GET /proxies/addresses | jq -c .addresses)" \
    '["127.0.0.1:6001","127.0.0.1:6002","127.0.0.1:6003","127.0.0.1:6004","127.0.0.1:6005","127.0.0.1:6006"]'
expect "cluster names" "$(api GET /clusters/names | jq -c .names)" '[]'

step "2. create mycluster with 4 nodes"
expect "create" "$(status POST /clusters/meta/mycluster '{"node_number": 4}')" 200
expect "create again" "$(api POST /clusters/meta/mycluster '{"node_number": 4}')" '{"error":"ALREADY_EXISTED"}'
expect "6 nodes" "$(api POST /clusters/meta/other '{"node_number": 6}')" '{"error":"INVALID_NODE_NUMBER"}'
expect "proxies of mycluster" "$(api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[].proxy_address] | unique')" \
    '["127.0.0.1:6001","127.0.0.1:6002"]'
expect "nodes" "$(api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[] | [.address, .repl.role, (.slots[0].range_list // [])]]')" \
    '[["127.0.0.1:7001","master",[[0,8191]]],["127.0.0.1:7002","replica",[]],["127.0.0.1:7003","master",[[8192,16383]]],["127.0.0.1:7004","replica",[]]]'
nodes_of_a() { redis-cli -p 6001 cluster nodes | awk '{print $2, $9}' | sort | tr '\n' ';'; }
has_two_masters() { [ "$(nodes_of_a)" = "127.0.0.1:6001@5299 0-8191;127.0.0.1:6002@5299 8192-16383;" ]; }
eventually 10 has_two_masters
expect "CLUSTER NODES on A" "$(nodes_of_a)" "127.0.0.1:6001@5299 0-8191;127.0.0.1:6002@5299 8192-16383;"

step "3. redirections: get a → slot 15495 on B, set b → slot 3300 on A"
expect "get a on A" "$(redis-cli -p 6001 get a)" "MOVED 15495 127.0.0.1:6002"
expect "set b with -c" "$(redis-cli -c -p 6002 set b 1)" "OK"
expect "get b on A" "$(redis-cli -p 6001 get b)" "1"
for i in $(seq 1 200); do echo "SET key$i value$i"; done | redis-cli -c -p 6001 >/dev/null
expect "key77" "$(redis-cli -c -p 6002 get key77)" "value77"
expect "a free proxy" "$(redis-cli -p 6005 get a)" "ERR_CLUSTER_NOT_FOUND"

if [ "${KILL_BROKER_LEADER:-0}" = 1 ]; then
    step "kill -9 the broker leader"
    leader=$(api GET /raft/status | jq -r .leader_id)
    kill -9 "$(jq -r ".brokers[] | select(.id == $leader) | .pid" "$DEMO_DIR/demo.json")"
    echo "killed broker $leader"
fi

step "4. scale out to 8 nodes: PATCH + expand"
expect "add 4 nodes" "$(api PATCH /clusters/nodes/mycluster '{"node_number": 4}' | jq -c '[.[].address]')" \
    '["127.0.0.1:7005","127.0.0.1:7006","127.0.0.1:7007","127.0.0.1:7008"]'
expect "expand" "$(status POST /clusters/migrations/expand/mycluster)" 200
migrated() { [ "$(api GET /clusters/info/mycluster | jq -c '[.is_migrating, .node_number_with_slots]')" = '[false,8]' ]; }
eventually 60 migrated
masters() { api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[] | select(.repl.role == "master") | [.proxy_address, .slots[0].range_list]]'; }
expect "masters" "$(masters)" \
    '[["127.0.0.1:6001",[[0,4095]]],["127.0.0.1:6002",[[8192,12287]]],["127.0.0.1:6003",[[4096,8191]]],["127.0.0.1:6004",[[12288,16383]]]]'
expect "node addresses" "$(api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[].address]')" \
    '["127.0.0.1:7001","127.0.0.1:7002","127.0.0.1:7003","127.0.0.1:7004","127.0.0.1:7005","127.0.0.1:7006","127.0.0.1:7007","127.0.0.1:7008"]'
four_ranges() { [ "$(redis-cli -p 6003 cluster nodes | awk '{print $9}' | sort | tr '\n' ' ')" = "0-4095 12288-16383 4096-8191 8192-12287 " ]; }
eventually 10 four_ranges
for i in 1 50 77 123 200; do expect "key$i after the scale-out" "$(redis-cli -c -p 6004 get key$i)" "value$i"; done
expect "b after the scale-out" "$(redis-cli -c -p 6004 get b)" "1"

step "5. kill A (proxy 127.0.0.1:6001) by pid; it is replaced, B serves its slots"
# Replication of what A holds must be complete first (only replicated writes survive).
synced() { [ "$(redis_node -p 7001 dbsize)" = "$(redis_node -p 7004 dbsize)" ]; }
eventually 30 synced
pid=$(jq -r '.proxies[] | select(.address == "127.0.0.1:6001") | .pid' "$DEMO_DIR/demo.json")
kill -9 "$pid"
failed() { [ "$(api GET /proxies/failed/addresses | jq -c .addresses)" = '["127.0.0.1:6001"]' ]; }
eventually 30 failed
replaced() { [ "$(api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[].proxy_address] | unique')" = '["127.0.0.1:6002","127.0.0.1:6003","127.0.0.1:6004","127.0.0.1:6005"]' ]; }
eventually 30 replaced
expect "B's masters" "$(api GET /clusters/meta/mycluster | jq -c '[.cluster.nodes[] | select(.proxy_address == "127.0.0.1:6002") | [.repl.role, (.slots | map(.range_list[0]))]]')" \
    '[["master",[[8192,12287]]],["master",[[0,4095]]]]'
b_serves() { [ "$(redis-cli -c -p 6003 get b)" = "1" ]; }
eventually 30 b_serves
for i in 1 50 77 123 200; do expect "key$i after the failover" "$(redis-cli -c -p 6003 get key$i)" "value$i"; done
expect "write after the failover" "$(redis-cli -c -p 6003 set b 2)" "OK"

step "6. delete the failed proxy; a proxy in use cannot be deleted"
expect "delete A" "$(status DELETE /proxies/meta/127.0.0.1:6001)" 200
expect "delete B" "$(api DELETE /proxies/meta/127.0.0.1:6002)" '{"error":"IN_USE"}'
printf '\nwalkthrough: all steps passed\n'
