#!/usr/bin/env bash
# Server CPU per request of two gate builds, side by side in one run: both
# gates up at once (demo authentication, no WebSocket listeners), the same
# `client bench` load against each, rounds alternating which goes first;
# CPU per request is the gate's utime + stime over the client run (from
# /proc) divided by the requests it sent. For before/after figures of a
# change on a shared, noisy machine: compare the ratio, round by round.
#
#   bench/cpu-ab.sh OLD_GATE_BINARY NEW_GATE_BINARY
#
# Knobs (environment): ROUNDS (4), DURATION (s, 4), FIGURES ("512 16 16":
# conns depth size, several separated by commas). The load generator is
# this checkout's release `client` (built unless SKIP_BUILD=1).
set -euo pipefail

A=${1:?usage: bench/cpu-ab.sh OLD_GATE NEW_GATE}
B=${2:?usage: bench/cpu-ab.sh OLD_GATE NEW_GATE}
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-4}
FIGURES=${FIGURES:-512 16 16}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p client-cli --bin client
fi
CLIENT=${CARGO_TARGET_DIR:-target}/release/client
source bench/lib.sh

start() { # start GATE_BINARY LOGIN_PORT GATE_PORT: its pid in $STARTED
    cat >"$WORK/$2.toml" <<TOML
[login]
listen = "127.0.0.1:$2"
throttle_user_logins = 0
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "127.0.0.1:$3"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
enabled = false
TOML
    RUST_LOG=warn "$1" --config "$WORK/$2.toml" >"$WORK/$2.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$2"
    wait_port "$3"
}
start "$A" 28301 28388
PID_A=$STARTED
start "$B" 28311 28398
PID_B=$STARTED

TICK_NS=$(( 1000000000 / $(getconf CLK_TCK) ))
field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }
one() { # one PID LOGIN GATE CONNS DEPTH SIZE: "req/s cpu_ns"
    local before after j
    before=$(cpu_ticks "$1")
    j=$("$CLIENT" bench --json --warmup 1 --duration "$DURATION" --login "127.0.0.1:$2" \
        --gate "127.0.0.1:$3" --conns "$4" --depth "$5" --size "$6")
    after=$(cpu_ticks "$1")
    echo "$(field "$j" rps) $(awk -v t=$(( after - before )) -v n="$(field "$j" sent)" -v k="$TICK_NS" \
        'BEGIN { if (n > 0) printf "%.0f", t * k / n; else print 0 }')"
}
printf '%-16s %12s %10s %12s %10s %8s\n' figure "A req/s" "A CPU" "B req/s" "B CPU" "B/A CPU"
IFS=, read -ra figures <<<"$FIGURES"
for figure in "${figures[@]}"; do
    read -r conns depth size <<<"$figure"
    for round in $(seq "$ROUNDS"); do
        if (( round % 2 )); then
            a=$(one "$PID_A" 28301 28388 "$conns" "$depth" "$size")
            b=$(one "$PID_B" 28311 28398 "$conns" "$depth" "$size")
        else
            b=$(one "$PID_B" 28311 28398 "$conns" "$depth" "$size")
            a=$(one "$PID_A" 28301 28388 "$conns" "$depth" "$size")
        fi
        read -r ar ac <<<"$a"
        read -r br bc <<<"$b"
        printf '%-16s %12.0f %8dns %12.0f %8dns %8s\n' "$conns x $depth, $size B" "$ar" "$ac" "$br" "$bc" \
            "$(awk -v a="$ac" -v b="$bc" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "-" }')"
    done
done
