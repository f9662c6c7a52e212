#!/usr/bin/env bash
# Live upgrade under load: an all-in-one gate holding SESSIONS idle sessions
# (default: 1000 and 10000, one run each; half over TCP, half over
# WebSocket) while 32 players echo (1 request in flight each; 16 over TCP,
# 16 over WebSocket) is taken over by a new process (`--takeover`).
# Prints, per run: the handoff time the old process logs (pause to
# commit), the echo players' p99 and maximum over the run against a run of
# the same length without an upgrade, their errors and the idle sessions
# closed (both must be 0: no connection may close), and the RSS of the new
# process after the takeover against the old one's before it.
#
#   bench/upgrade.sh
#   SESSIONS="1000 10000 19000" bench/upgrade.sh   # beyond MAX_CONNECTED: held away
#   OLD_GATE=/path/to/previous/gate bench/upgrade.sh   # from another build
#
# OLD_GATE: the binary of the process taken over (default: this checkout's
# release gate, as is the new one), to check that a build reads the state
# the previous one writes.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SESSIONS=${SESSIONS:-"1000 10000"}
DURATION=${DURATION:-6}
# Connections the gate holds at most here: its share of a file limit of
# 20,000 is 13,910 (`net::budget`); the echo players and logins need some.
MAX_CONNECTED=${MAX_CONNECTED:-12000}
BASE=${BASE_PORT:-26300}
ulimit -n "$(ulimit -Hn)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli --bin gate --bin client
fi
source bench/lib.sh

LOGIN=127.0.0.1:$BASE GATE=127.0.0.1:$((BASE + 1))
WLOGIN=ws://127.0.0.1:$((BASE + 2)) WGATE=ws://127.0.0.1:$((BASE + 3))
cat >"$WORK/gate.toml" <<TOML
[login]
listen = "$LOGIN"
max_connections = 4096
max_connections_per_source = 0
max_connections_per_network = 0
throttle_user_logins = 0
dialogue_timeout = "60s"
[gate]
listen = "$GATE"
maxclient = 100000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
login_listen = "127.0.0.1:$((BASE + 2))"
gate_listen = "127.0.0.1:$((BASE + 3))"
[upgrade]
socket = "$WORK/upgrade.sock"
TOML
field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }

printf '%-9s %12s %14s %14s %8s %12s %12s\n' sessions "handoff" "echo p99" "echo max" errors "RSS before" "RSS after"
for n in $SESSIONS; do
    RUST_LOG=info "${OLD_GATE:-$BIN/gate}" run --config "$WORK/gate.toml" 2>"$WORK/old.log" &
    OLD=$!
    PIDS+=("$OLD")
    wait_port "$BASE"
    wait_port $((BASE + 3))
    # Sessions beyond what the descriptors allow are held away (in their
    # reconnect window, no connection).
    connected=$(( n < MAX_CONNECTED ? n : MAX_CONNECTED ))
    half=$((connected / 2))
    echo '{"errors":0}' >"$WORK/away.json"
    if (( n > connected )); then
        "$BIN/client" bench --idle --away --json --login "$LOGIN" --gate "$GATE" --user-prefix "away$n-" \
            --conns $((n - connected)) --duration 1 --timeout 60 >"$WORK/away.json" 2>"$WORK/away.err" || true
    fi
    "$BIN/client" bench --idle --json --login "$LOGIN" --gate "$GATE" --user-prefix "idle$n-" \
        --conns $((connected - half)) --duration $((DURATION * 3)) --timeout 60 >"$WORK/idle.json" 2>"$WORK/idle.err" &
    IDLE=$!
    "$BIN/client" bench --idle --json --login "$WLOGIN" --gate "$WGATE" --user-prefix "widle$n-" \
        --conns "$half" --duration $((DURATION * 3)) --timeout 60 >"$WORK/widle.json" 2>"$WORK/widle.err" &
    WIDLE=$!
    PIDS+=("$IDLE" "$WIDLE")
    for _ in $(seq 900); do
        grep -q '^ready' "$WORK/idle.err" && grep -q '^ready' "$WORK/widle.err" && break
        sleep 0.1
    done
    before=$(rss_kb "$OLD")
    # The same load without an upgrade, then with one in its middle.
    echo_run() {
        "$BIN/client" bench --json --login "$LOGIN" --gate "$GATE" --user-prefix "$1$n-" \
            --conns 16 --depth 1 --size 16 --duration "$DURATION" --warmup 0.5 >"$WORK/$1.json" &
        local tcp=$!
        "$BIN/client" bench --json --login "$WLOGIN" --gate "$WGATE" --user-prefix "w$1$n-" \
            --conns 16 --depth 1 --size 16 --duration "$DURATION" --warmup 0.5 >"$WORK/w$1.json" &
        local ws=$!
        wait "$tcp" "$ws" || true
    }
    echo_run calm
    echo_run echo &
    ECHO=$!
    sleep $((DURATION / 2))
    RUST_LOG=info "$BIN/gate" run --config "$WORK/gate.toml" --takeover "$WORK/upgrade.sock" 2>"$WORK/new.log" &
    NEW=$!
    PIDS+=("$NEW")
    wait "$ECHO" || true
    for _ in $(seq 300); do
        grep -q 'handed over\|live upgrade failed' "$WORK/old.log" && break
        sleep 0.1
    done
    took=$(grep -o 'took_ms=[0-9]*' "$WORK/old.log" | head -1 | cut -d= -f2 || true)
    if [[ -z $took ]]; then
        echo "the upgrade did not complete:" >&2
        grep -h 'upgrade\|Error' "$WORK/old.log" "$WORK/new.log" | tail -5 >&2
    fi
    after=$(rss_kb "$NEW")
    # The idle sessions end their hold: any closed by the upgrade is an
    # error.
    wait "$IDLE" "$WIDLE" || true
    worst() { # the larger of a field over the TCP and WebSocket runs
        local a b
        a=$(field "$(cat "$WORK/$1.json")" "$2") b=$(field "$(cat "$WORK/w$1.json")" "$2")
        awk -v a="${a:-0}" -v b="${b:-0}" 'BEGIN { print (a > b ? a : b) }'
    }
    errors=$(( $(worst echo errors) + $(field "$(cat "$WORK/idle.json")" errors) \
        + $(field "$(cat "$WORK/widle.json")" errors) + $(field "$(cat "$WORK/away.json")" errors) ))
    awk -v n="$n" -v t="${took:-none}" -v p="$(worst echo p99_us)" -v m="$(worst echo max_us)" \
        -v cp="$(worst calm p99_us)" -v cm="$(worst calm max_us)" -v e="$errors" \
        -v b="$before" -v a="$after" 'BEGIN {
        printf "%-9d %9s ms %6.1f/%5.1fms %6.1f/%5.1fms %8d %9.1f MiB %9.1f MiB\n",
            n, t, p / 1000, cp / 1000, m / 1000, cm / 1000, e, b / 1024, a / 1024 }'
    kill "$NEW" 2>/dev/null || true
    wait "$NEW" 2>/dev/null || true
done
echo "(echo p99 and max: with the upgrade / without, same run, the worse of TCP and WebSocket; errors: echo errors plus idle sessions closed; handoff: pause to commit, from the old process's log)"
