#!/usr/bin/env bash
# Throughput of one moonraft proxy versus the redis-server behind it, with redis-benchmark,
# and of haproxy in TCP mode (the reference "dumb hop", same thread count) in the same rounds.
# Not a test: it prints numbers. Runs direct, proxy and haproxy one after the other, ROUNDS
# times per case, and reports the median requests/s and the ratios proxy/direct,
# haproxy/direct and proxy/haproxy. haproxy comes from Debian packages (installed if missing
# and running as root; otherwise its column is skipped).
# METRICS=1 adds a second proxy with /metrics on (commands counted and timed) to the same
# rounds and prints the ratio metrics-on/metrics-off: the ratio of the medians, and the median
# (with its spread) of the ratios of each round, where the two proxies ran back to back in
# alternating order — the paired figure the VM's drift disturbs least. METRICS_ONLY=1 runs just
# those two proxies (no direct or haproxy runs), so more rounds fit.
#   ROUNDS=3 REQUESTS=200000 PROXY_THREADS=1 METRICS=1 scripts/bench-proxy.sh
#   ROUNDS=21 REQUESTS=100000 METRICS=1 METRICS_ONLY=1 scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bin moonraft >/dev/null 2>&1 || cargo build --release --bin moonraft

ROUNDS="${ROUNDS:-3}"
REQUESTS="${REQUESTS:-200000}"
CLIENTS="${CLIENTS:-50}"
PROXY_THREADS="${PROXY_THREADS:-1}"
METRICS="${METRICS:-0}"
METRICS_ONLY="${METRICS_ONLY:-0}"
# PIN=1: proxies on the last core, redis-server and redis-benchmark on the others (less
# scheduler noise between rounds on a small VM).
PIN="${PIN:-0}"
PIN_PROXY=(); PIN_REST=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    last=$(($(nproc) - 1))
    PIN_PROXY=(taskset -c "$last"); PIN_REST=(taskset -c "0-$((last - 1))")
fi
[ "$METRICS_ONLY" = 1 ] && METRICS=1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); PPORT=$(free_port); HPORT=$(free_port); MPORT=$(free_port); MHTTP=$(free_port)
if ! command -v haproxy >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null 2>&1 || true
fi
HAPROXY=""; command -v haproxy >/dev/null 2>&1 && HAPROXY=haproxy
DIR=$(mktemp -d /tmp/moonraft-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM

"${PIN_REST[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" --logfile "$DIR/redis.log" &
pids+=($!)
"${PIN_PROXY[@]}" "$MOONRAFT_BIN" proxy --address "127.0.0.1:$PPORT" --thread-number "$PROXY_THREADS" --log warn 2>"$DIR/proxy.log" &
pids+=($!)
MTARGET=""
if [ "$METRICS" = 1 ]; then
    "${PIN_PROXY[@]}" "$MOONRAFT_BIN" proxy --address "127.0.0.1:$MPORT" --metrics-address "127.0.0.1:$MHTTP" \
        --thread-number "$PROXY_THREADS" --log warn 2>"$DIR/proxy-metrics.log" &
    pids+=($!)
    MTARGET=metrics
fi
for _ in $(seq 100); do
    redis-cli -p "$PPORT" ping >/dev/null 2>&1 && redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break
    sleep 0.05
done
if [ -n "$HAPROXY" ]; then
    cat > "$DIR/haproxy.cfg" <<EOF
global
    maxconn 4000
    nbthread $PROXY_THREADS
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen redis
    bind 127.0.0.1:$HPORT
    server redis 127.0.0.1:$RPORT
EOF
    haproxy -f "$DIR/haproxy.cfg" -db >"$DIR/haproxy.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$HPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
    if ! redis-cli -p "$HPORT" ping >/dev/null 2>&1; then
        echo "haproxy did not start (its column is skipped):" >&2; tail -3 "$DIR/haproxy.log" >&2; HAPROXY=""
    fi
fi
redis-cli -p "$PPORT" UMCTL SETCLUSTER v2 1 NOFLAG bench "127.0.0.1:$RPORT" 1 0-16383 >/dev/null
if [ -n "$MTARGET" ]; then
    for _ in $(seq 100); do redis-cli -p "$MPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
    redis-cli -p "$MPORT" UMCTL SETCLUSTER v2 1 NOFLAG bench "127.0.0.1:$RPORT" 1 0-16383 >/dev/null
fi

# rps for one run: "<test> <rps> <p50 ms>" lines from redis-benchmark's CSV output
run() { # port pipeline clients tests
    timeout 300 "${PIN_REST[@]}" redis-benchmark -p "$1" -P "$2" -c "$3" -n "$REQUESTS" -r 100000 -t "$4" --csv 2>/dev/null \
        | awk -F, 'NR>1 {gsub(/"/,""); print $1, $2, $5}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A res
declare -A per_round
for pipe in 1 16; do
    for round in $(seq "$ROUNDS"); do
        # The two proxies run back to back, in alternating order.
        pair="proxy $MTARGET"
        [ $((round % 2)) = 0 ] && pair="$MTARGET proxy"
        if [ "$METRICS_ONLY" = 1 ]; then targets="$pair"; else targets="direct ${HAPROXY:+haproxy} $pair"; fi
        for target in $targets; do
            case $target in direct) port=$RPORT ;; proxy) port=$PPORT ;; haproxy) port=$HPORT ;; metrics) port=$MPORT ;; esac
            while read -r t rps p50; do
                res["$t,$pipe,$target"]+="$rps "
                per_round["$t,$pipe,$target,$round"]=$rps
            done < <(run "$port" "$pipe" "$CLIENTS" set,get)
        done
    done
done
lat() { timeout 120 redis-benchmark -p "$1" -c 1 -n 20000 -t get --csv 2>/dev/null | awk -F, 'NR>1 {gsub(/"/,""); print $5}'; }
p50_direct=$(lat "$RPORT"); p50_proxy=$(lat "$PPORT"); p50_haproxy=-
[ -n "$HAPROXY" ] && p50_haproxy=$(lat "$HPORT")

if [ "$METRICS_ONLY" != 1 ]; then
echo "moonraft proxy vs direct redis: redis-benchmark -c $CLIENTS -n $REQUESTS, median of $ROUNDS, proxy threads $PROXY_THREADS, $(nproc) cores"
printf "%-6s %-4s %12s %12s %12s %13s %15s %15s\n" test -P direct_rps proxy_rps haproxy_rps proxy/direct haproxy/direct proxy/haproxy
for pipe in 1 16; do
    for t in SET GET; do
        d=$(echo ${res["$t,$pipe,direct"]} | tr ' ' '\n' | median)
        p=$(echo ${res["$t,$pipe,proxy"]} | tr ' ' '\n' | median)
        if [ -n "$HAPROXY" ]; then
            h=$(echo ${res["$t,$pipe,haproxy"]} | tr ' ' '\n' | median)
            printf "%-6s %-4s %12.0f %12.0f %12.0f %13.2f %15.2f %15.2f\n" "$t" "$pipe" "$d" "$p" "$h" \
                "$(echo "$p / $d" | bc -l)" "$(echo "$h / $d" | bc -l)" "$(echo "$p / $h" | bc -l)"
        else
            printf "%-6s %-4s %12.0f %12.0f %12s %13.2f %15s %15s\n" "$t" "$pipe" "$d" "$p" - "$(echo "$p / $d" | bc -l)" - -
        fi
    done
done
echo "p50 latency, 1 client, GET: direct ${p50_direct} ms, proxy ${p50_proxy} ms, haproxy ${p50_haproxy} ms"
fi
if [ -n "$MTARGET" ]; then
    echo "metrics on (a proxy with --metrics-address, every command counted and timed) vs off, $ROUNDS rounds:"
    printf "%-6s %-4s %12s %12s %10s %14s %22s\n" test -P off_rps on_rps on/off paired_on/off "paired quartiles, range"
    for pipe in 1 16; do
        for t in SET GET; do
            p=$(echo ${res["$t,$pipe,proxy"]} | tr ' ' '\n' | median)
            m=$(echo ${res["$t,$pipe,metrics"]} | tr ' ' '\n' | median)
            ratios=$(for round in $(seq "$ROUNDS"); do
                echo "${per_round["$t,$pipe,metrics,$round"]} / ${per_round["$t,$pipe,proxy,$round"]}" | bc -l
            done | sort -n)
            stats=$(echo "$ratios" | awk '{a[NR]=$1} END {m=(NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2); q1=a[int((NR+3)/4)]; q3=a[int((3*NR+1)/4)]; printf "%.3f %.3f-%.3f, %.3f-%.3f", m, q1, q3, a[1], a[NR]}')
            printf "%-6s %-4s %12.0f %12.0f %10.3f %14s %22s\n" "$t" "$pipe" "$p" "$m" "$(echo "$m / $p" | bc -l)" \
                "${stats%% *}" "${stats#* }"
        done
    done
    echo "commands the metrics proxy counted: $(curl -s "127.0.0.1:$MHTTP/metrics" | awk '/^moonraft_proxy_commands_total/ {s += $NF} END {print s}')"
fi
