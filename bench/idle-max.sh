#!/usr/bin/env bash
# The largest idle population one gate process holds on this machine: a
# fresh gate (demo authentication), two `client bench --idle` processes
# each logging in, connecting and holding PER_PROCESS sessions for HOLD
# seconds, dialling from several loopback source addresses (one address
# gives ~28,000 connections to a port). A process may open at most
# `ulimit -Hn` files here (20,000), which bounds the gate, so the default
# asks for just under that. Prints the sessions held, the gate's open
# descriptors and its RSS before and after.
#
#   bench/idle-max.sh              # 2 x 9993 sessions held 60 s
#   PER_PROCESS=5000 HOLD=30 bench/idle-max.sh
#
# Exit status is non-zero if a session failed or was lost.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
PER_PROCESS=${PER_PROCESS:-9993}
HOLD=${HOLD:-60}
LOGIN=127.0.0.1:${LOGIN_PORT:-31001}
GATE=127.0.0.1:${GATE_PORT:-31002}
ulimit -n "$(ulimit -Hn)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli --bin gate --bin client
fi
source bench/lib.sh

cat >"$WORK/gate.toml" <<EOF
[login]
listen = "$LOGIN"
max_connections = 4096
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "$GATE"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
EOF
RUST_LOG=warn "$BIN/gate" --no-web --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")
wait_port "${GATE#*:}"
before=$(rss_kb "$GATE_PID")

hold() { # hold NAME SOURCES: one load-generator process
    "$BIN/client" bench --idle --json --gate "$GATE" --login "$LOGIN" --conns "$PER_PROCESS" \
        --duration "$HOLD" --timeout 20 --user-prefix "$1" --source-addrs "$2" \
        >"$WORK/$1.json" 2>"$WORK/$1.err" &
    PIDS+=("$!")
}
hold a 127.0.0.2,127.0.0.3
A=${PIDS[-1]}
hold b 127.0.0.4,127.0.0.5
B=${PIDS[-1]}
for _ in $(seq $(( HOLD * 5 ))); do
    grep -q '^ready' "$WORK/a.err" && grep -q '^ready' "$WORK/b.err" && break
    sleep 0.2
done
sleep 1
after=$(rss_kb "$GATE_PID")
fds=$(find "/proc/$GATE_PID/fd" -mindepth 1 | wc -l)
ready=$(( $(awk '/^ready/ {print $2}' "$WORK/a.err" || echo 0) + $(awk '/^ready/ {print $2}' "$WORK/b.err" || echo 0) ))
echo "held: $ready idle sessions in one gate process ($fds open descriptors, limit $(ulimit -n))"
awk -v b="$before" -v a="$after" -v n="$ready" 'BEGIN {
    printf "gate RSS %.1f MiB -> %.1f MiB: %.2f KiB per session\n", b / 1024, a / 1024, (n ? (a - b) / n : 0) }'
status=0
wait "$A" || status=1
wait "$B" || status=1
for p in a b; do
    echo "$p: $(grep -o '"errors":[0-9]*' "$WORK/$p.json" || echo "no report") over ${HOLD}s"
    grep -q '"errors":0' "$WORK/$p.json" || status=1
done
exit "$status"
