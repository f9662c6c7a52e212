#!/usr/bin/env bash
# The login queue under a crowd: CLIENTS clients (default 5,000) arrive at
# once at a login server admitting RATE logins per second (default 1,000).
# Every client asks for queue notices, logs in once, and `client bench`
# reports the wait distribution (its latency percentiles), how many waited,
# the deepest position, and logins admitted out of queue order. The run
# fails if any login was refused, timed out, or came out of order.
#
#   bench/queue.sh
#   CLIENTS=20000 RATE=2000 bench/queue.sh
#   CLUSTER=1 bench/queue.sh    # the same crowd split over two login nodes
#                               # of a cluster sharing one queue in Redis
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
CLIENTS=${CLIENTS:-5000}
RATE=${RATE:-1000}
LOGIN_PORT=${LOGIN_PORT:-26001}
GATE_PORT=${GATE_PORT:-26002}
ulimit -n "$(ulimit -Hn)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli --bin gate --bin client
fi
source bench/lib.sh

# Queued dialogues hold their connection slot: room for all of them.
login_section() {
    cat <<TOML
[login]
listen = "127.0.0.1:$1"
max_connections = $(( CLIENTS + 100 ))
max_connections_per_source = 0
max_connections_per_network = 0
admission_rate = $RATE
admission_burst = 100
queue_max = $(( CLIENTS * 2 ))
[gate]
listen = "127.0.0.1:$GATE_PORT"
maxclient = $(( CLIENTS * 2 ))
max_connections_per_source = 0
max_connections_per_network = 0
TOML
}

if [[ ${CLUSTER:-0} != 1 ]]; then
    login_section "$LOGIN_PORT" >"$WORK/gate.toml"
    RUST_LOG=warn "$BIN/gate" --no-web --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$LOGIN_PORT"
    wait_port "$GATE_PORT"
    echo "== $CLIENTS clients at once, admission $RATE logins/s (expect ~$(( CLIENTS / RATE ))s) =="
    exec "$BIN/client" bench --logins --queue-notices --login "127.0.0.1:$LOGIN_PORT" \
        --gate "127.0.0.1:$GATE_PORT" --conns "$CLIENTS" --requests "$CLIENTS" --warmup 0 --timeout 120
fi

# Cluster: Redis, one gate node, two login nodes sharing the queue.
command -v redis-server >/dev/null || { echo "redis-server is needed" >&2; exit 1; }
REDIS_PORT=$(( LOGIN_PORT + 10 ))
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
wait_port "$REDIS_PORT"
"$BIN/gate" link-secret >"$WORK/secret"
cluster_section() {
    printf '[cluster]\nrole = "%s"\nredis = "redis://127.0.0.1:%s"\nnode_id = "%s"\nsecret_file = "%s"\ncontrol_listen = "127.0.0.1:%s"\n' \
        "$1" "$REDIS_PORT" "$2" "$WORK/secret" "$(( LOGIN_PORT + 11 ))"
}
{ cluster_section gate g1; login_section "$LOGIN_PORT"; } >"$WORK/g1.toml"
RUST_LOG=warn "$BIN/gate" run --no-web --config "$WORK/g1.toml" --name sample >"$WORK/g1.log" 2>&1 &
PIDS+=("$!")
wait_port "$GATE_PORT"
for n in 1 2; do
    { cluster_section login "l$n"; login_section "$(( LOGIN_PORT + 1 + n ))"; } >"$WORK/l$n.toml"
    # Only the login section's listen matters on a login node.
    RUST_LOG=warn "$BIN/gate" run --no-web --config "$WORK/l$n.toml" >"$WORK/l$n.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$(( LOGIN_PORT + 1 + n ))"
done
for _ in $(seq 100); do
    [[ $(redis-cli -p "$REDIS_PORT" exists gate:gate:sample) == 1 ]] && break
    sleep 0.1
done
half=$(( CLIENTS / 2 ))
echo "== $CLIENTS clients at once over 2 login nodes, one queue of $RATE logins/s (expect ~$(( CLIENTS / RATE ))s) =="
for n in 1 2; do
    "$BIN/client" bench --logins --queue-notices --login "127.0.0.1:$(( LOGIN_PORT + 1 + n ))" \
        --gate "127.0.0.1:$GATE_PORT" --user-prefix "n$n-" --conns "$half" --requests "$half" \
        --warmup 0 --timeout 120 >"$WORK/bench$n.txt" 2>&1 &
    PIDS+=("$!")
    eval "B$n=$!"
done
status=0
wait "$B1" || status=1
wait "$B2" || status=1
for n in 1 2; do echo "-- through login node l$n"; grep -E "^(measured|logins|queue|latency|checked|result)" "$WORK/bench$n.txt"; done
echo "tickets handed out in Redis: $(redis-cli -p "$REDIS_PORT" hget gate:queue tail)"
exit "$status"
