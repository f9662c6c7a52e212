#!/usr/bin/env bash
# Where the gate's time goes: a sampling profile of the gate (and of the
# raw echo server, the baseline) under `client bench` load, drawn as flame
# graphs in docs/.
#
#   bench/profile.sh            # all loads below, ~2 min
#   LOADS="tcp-512x16" bench/profile.sh
#
# Loads: tcp-512x16 and tcp-64x1 (16-byte echo through the built-in
# agent), ws-512x16 (the same over the gate's WebSocket listener),
# sealed-512x16 (the sealed channel), service-512x16 (the gate in agent
# mode, every request answered by the `service` crate's echo example in
# its own process: the gate is sampled), raw-512x16 (the raw framed echo
# server). Each samples the server process for 5 s at 499 Hz with DWARF
# call graphs while the load runs, then folds the stacks and draws
# docs/flamegraph-<load>.svg, and prints the top functions by own time.
#
# Needs perf (Debian: linux-perf) allowed to sample this user's processes
# (kernel.perf_event_paranoid <= 1, or root) and inferno (`cargo install
# inferno`). Release binaries with line tables (the workspace's release
# profile has debug = 1); SKIP_BUILD=1 uses them as they are.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADS=${LOADS:-tcp-512x16 tcp-64x1 ws-512x16 sealed-512x16 service-512x16 raw-512x16}
OUT=${OUT:-$ROOT/docs}
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "needs $tool (see the header)" >&2; exit 1; }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli -p raw-echo --bin gate --bin raw-echo --bin client
    cargo build --release --quiet -p service --example echo
fi
BIN=$TARGET_DIR/release
source bench/lib.sh

cat >"$WORK/gate.toml" <<EOF
[login]
listen = "127.0.0.1:28101"
throttle_user_logins = 0
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "127.0.0.1:28188"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
login_listen = "127.0.0.1:28102"
gate_listen = "127.0.0.1:28189"
EOF
RUST_LOG=warn "$BIN/gate" --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")
"$BIN/raw-echo" --listen 127.0.0.1:28199 >"$WORK/raw.log" 2>&1 &
RAW_PID=$!
PIDS+=("$RAW_PID")
wait_port 28101
wait_port 28188
wait_port 28189
wait_port 28199

if [[ " $LOADS " == *" service-512x16 "* ]]; then
    # A second gate, in agent mode, and the echo service on its link.
    "$BIN/gate" link-secret >"$WORK/link.secret"
    cat >"$WORK/backend.toml" <<TOML
[login]
listen = "127.0.0.1:28111"
throttle_user_logins = 0
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "127.0.0.1:28198"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
enabled = false
[backend]
listen = "127.0.0.1:28197"
agent_service = "echo"
secret_file = "$WORK/link.secret"
TOML
    RUST_LOG=warn "$BIN/gate" --config "$WORK/backend.toml" >"$WORK/gate-backend.log" 2>&1 &
    SVC_GATE_PID=$!
    PIDS+=("$SVC_GATE_PID")
    wait_port 28111
    wait_port 28198
    wait_port 28197
    start_echo_service "$TARGET_DIR/release/examples/echo" 28197 "$WORK/link.secret" \
        "$WORK/echo-service.log"
    wait_answered "$BIN/client" 127.0.0.1:28111 127.0.0.1:28198
fi

for load in $LOADS; do
    pid=$GATE_PID
    args=(--login 127.0.0.1:28101 --gate 127.0.0.1:28188 --size 16)
    case $load in
        tcp-512x16) args+=(--conns 512 --depth 16) ;;
        tcp-64x1) args+=(--conns 64 --depth 1) ;;
        ws-512x16) args=(--login 127.0.0.1:28101 --gate ws://127.0.0.1:28189 --size 16 --conns 512 --depth 16) ;;
        sealed-512x16) args+=(--conns 512 --depth 16 --seal) ;;
        service-512x16)
            pid=$SVC_GATE_PID
            args=(--login 127.0.0.1:28111 --gate 127.0.0.1:28198 --size 16 --conns 512 --depth 16)
            ;;
        raw-512x16) pid=$RAW_PID; args=(--raw --gate 127.0.0.1:28199 --size 16 --conns 512 --depth 16) ;;
        *) echo "unknown load $load" >&2; exit 1 ;;
    esac
    "$BIN/client" bench --json --warmup 2 --duration 9 "${args[@]}" >"$WORK/$load.json" &
    bench_pid=$!
    sleep 3
    perf record -o "$WORK/$load.data" -F 499 --call-graph dwarf,32768 -p "$pid" -- sleep 5 >/dev/null 2>&1
    wait "$bench_pid"
    perf script -i "$WORK/$load.data" 2>/dev/null | inferno-collapse-perf >"$WORK/$load.folded"
    inferno-flamegraph --title "$load: $(grep -o '"rps":[0-9]*' "$WORK/$load.json" | cut -d: -f2) req/s" \
        --minwidth 0.2 <"$WORK/$load.folded" >"$OUT/flamegraph-$load.svg"
    echo "== $load -> $OUT/flamegraph-$load.svg"
    { perf report -i "$WORK/$load.data" --no-children --stdio --sort dso 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -4; } || true
    { perf report -i "$WORK/$load.data" --no-children --stdio --sort symbol 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -12; } || true
done
