#!/usr/bin/env bash
# Server CPU per request of two gate builds, side by side in one run: both
# gates up at once (demo authentication), the same `client bench` load
# against each, rounds alternating which goes first; CPU per request is the
# server processes' utime + stime over the client run (from /proc) divided
# by the requests it sent. For before/after figures of a change on a
# shared, noisy machine: compare the ratio, round by round.
#
#   bench/cpu-ab.sh OLD_GATE_BINARY NEW_GATE_BINARY
#   OVER=ws bench/cpu-ab.sh OLD NEW        # through the WebSocket listener
#   OVER=service bench/cpu-ab.sh OLD NEW   # through an echo service process
#
# OVER: `tcp` (default: the built-in echo agent over TCP), `ws` (the same
# over the gate's WebSocket listener), `service` (agent mode: each gate
# gets its own `service` echo example process on its link, and the CPU is
# the gate's plus the service's).
#
# Knobs (environment): ROUNDS (4), DURATION (s, 4), FIGURES ("512 16 16":
# conns depth size, several separated by commas). The load generator is
# this checkout's release `client` (built unless SKIP_BUILD=1, as is the
# echo example for OVER=service).
set -euo pipefail

A=${1:?usage: bench/cpu-ab.sh OLD_GATE NEW_GATE}
B=${2:?usage: bench/cpu-ab.sh OLD_GATE NEW_GATE}
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-4}
FIGURES=${FIGURES:-512 16 16}
OVER=${OVER:-tcp}
case $OVER in
    tcp | ws | service) ;;
    *) echo "OVER is tcp, ws or service, not $OVER" >&2; exit 1 ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p client-cli --bin client
    if [[ $OVER == service ]]; then
        cargo build --release --quiet -p service --example echo
    fi
fi
CLIENT=$TARGET_DIR/release/client
source bench/lib.sh

# start GATE_BINARY PORT: a gate whose login listens on PORT, its gate on
# PORT+1 (TCP) and PORT+2 (WebSocket; its WebSocket login on PORT+4), its
# backend link on PORT+3; the server processes' pids in $STARTED.
start() {
    local web="enabled = false" backend=""
    if [[ $OVER == ws ]]; then
        web="gate_listen = \"127.0.0.1:$(( $2 + 2 ))\"
login_listen = \"127.0.0.1:$(( $2 + 4 ))\""
    fi
    if [[ $OVER == service ]]; then
        "$1" link-secret >"$WORK/$2.secret"
        backend="[backend]
listen = \"127.0.0.1:$(( $2 + 3 ))\"
agent_service = \"echo\"
secret_file = \"$WORK/$2.secret\""
    fi
    cat >"$WORK/$2.toml" <<TOML
[login]
listen = "127.0.0.1:$2"
throttle_user_logins = 0
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "127.0.0.1:$(( $2 + 1 ))"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
$web
$backend
TOML
    RUST_LOG=warn "$1" --config "$WORK/$2.toml" >"$WORK/$2.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$2"
    wait_port $(( $2 + 1 ))
    if [[ $OVER == ws ]]; then wait_port $(( $2 + 2 )); fi
    if [[ $OVER == service ]]; then
        wait_port $(( $2 + 3 ))
        start_echo_service "$TARGET_DIR/release/examples/echo" $(( $2 + 3 )) "$WORK/$2.secret" \
            "$WORK/$2.echo.log"
        STARTED="$STARTED $SVC_PID"
        wait_answered "$CLIENT" "127.0.0.1:$2" "127.0.0.1:$(( $2 + 1 ))"
    fi
}
start "$A" 28301
PIDS_A=$STARTED
start "$B" 28311
PIDS_B=$STARTED

TICK_NS=$(( 1000000000 / $(getconf CLK_TCK) ))
field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }
one() { # one "PIDS" PORT CONNS DEPTH SIZE: "req/s cpu_ns"
    local before after j gate
    gate="127.0.0.1:$(( $2 + 1 ))"
    if [[ $OVER == ws ]]; then gate="ws://127.0.0.1:$(( $2 + 2 ))"; fi
    # shellcheck disable=SC2086 # the pids are words
    before=$(cpu_ticks $1)
    j=$("$CLIENT" bench --json --warmup 1 --duration "$DURATION" --login "127.0.0.1:$2" \
        --gate "$gate" --conns "$3" --depth "$4" --size "$5")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $1)
    if [[ $(field "$j" errors) != 0 ]]; then
        echo "client bench against $gate had errors: $j" >&2
        exit 1
    fi
    echo "$(field "$j" rps) $(awk -v t=$(( after - before )) -v n="$(field "$j" sent)" -v k="$TICK_NS" \
        'BEGIN { if (n > 0) printf "%.0f", t * k / n; else print 0 }')"
}
echo "over $OVER"
printf '%-16s %12s %10s %12s %10s %8s\n' figure "A req/s" "A CPU" "B req/s" "B CPU" "B/A CPU"
IFS=, read -ra figures <<<"$FIGURES"
for figure in "${figures[@]}"; do
    read -r conns depth size <<<"$figure"
    for round in $(seq "$ROUNDS"); do
        if (( round % 2 )); then
            a=$(one "$PIDS_A" 28301 "$conns" "$depth" "$size")
            b=$(one "$PIDS_B" 28311 "$conns" "$depth" "$size")
        else
            b=$(one "$PIDS_B" 28311 "$conns" "$depth" "$size")
            a=$(one "$PIDS_A" 28301 "$conns" "$depth" "$size")
        fi
        read -r ar ac <<<"$a"
        read -r br bc <<<"$b"
        printf '%-16s %12.0f %8dns %12.0f %8dns %8s\n' "$conns x $depth, $size B" "$ar" "$ac" "$br" "$bc" \
            "$(awk -v a="$ac" -v b="$bc" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "-" }')"
    done
done
