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
cat >"$WORK/gate.toml" <<TOML
[login]
listen = "127.0.0.1:$LOGIN_PORT"
max_connections = $(( CLIENTS + 100 ))
max_connections_per_source = 0
admission_rate = $RATE
admission_burst = 100
queue_max = $(( CLIENTS * 2 ))
[gate]
listen = "127.0.0.1:$GATE_PORT"
maxclient = $(( CLIENTS * 2 ))
max_connections_per_source = 0
TOML
RUST_LOG=warn "$BIN/gate" --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
PIDS+=("$!")
wait_port "$LOGIN_PORT"
wait_port "$GATE_PORT"

echo "== $CLIENTS clients at once, admission $RATE logins/s (expect ~$(( CLIENTS / RATE ))s) =="
"$BIN/client" bench --logins --queue-notices --login "127.0.0.1:$LOGIN_PORT" --gate "127.0.0.1:$GATE_PORT" \
    --conns "$CLIENTS" --requests "$CLIENTS" --warmup 0 --timeout 120
