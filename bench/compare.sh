#!/usr/bin/env bash
# Compares two builds of the gate on one machine, in the same run: echo
# req/s (512 x 16 and 64 x 1, 16-byte payloads) of build A, build B and
# the raw framed echo server, interleaved round by round, and the memory
# per idle logged-in session of each build.
#
#   bench/compare.sh OLD_RELEASE_DIR NEW_RELEASE_DIR
#
# Each directory holds `gate`, `client` and `raw-echo` release binaries
# (e.g. a worktree of an older commit built with its own CARGO_TARGET_DIR).
# The raw server and the load generator come from the second build.
# Knobs (environment): ROUNDS (3), DURATION (s, 5), IDLE_SESSIONS (10000).
set -euo pipefail

A=${1:?usage: bench/compare.sh OLD_RELEASE_DIR NEW_RELEASE_DIR}
B=${2:?usage: bench/compare.sh OLD_RELEASE_DIR NEW_RELEASE_DIR}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
IDLE_SESSIONS=${IDLE_SESSIONS:-10000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# start NAME BIN_DIR LOGIN_PORT GATE_PORT: a gate with the demo
# authenticator; its pid in $STARTED
start() {
    # Builds that bound connections per source address get no bound here.
    local unbounded=""
    if "$2/gate" --help | grep -q -- --link-secret-file; then
        unbounded="max_connections_per_source = 0"
    fi
    # Builds with WebSocket listeners: off, so two builds can run at once.
    local web=""
    if "$2/gate" run --help 2>/dev/null | grep -q -- --no-web; then
        web=$'[web]\nenabled = false'
    fi
    cat >"$WORK/$1.toml" <<EOF
[login]
listen = "127.0.0.1:$3"
max_connections = 4096
$unbounded
[gate]
listen = "127.0.0.1:$4"
maxclient = 200000
$unbounded
$web
EOF
    RUST_LOG=warn "$2/gate" --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$3"
    wait_port "$4"
}

field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }
bench() { "$B/client" bench --json --warmup 1 "$@"; }

"$B/raw-echo" --listen 127.0.0.1:29999 >"$WORK/raw.log" 2>&1 &
PIDS+=("$!")
wait_port 29999
start a "$A" 29001 29888
A_PID=$STARTED
start b "$B" 29002 29889
B_PID=$STARTED

echo "== A: $A"
echo "== B: $B"
printf '%-22s %12s %12s %12s %8s %8s\n' figure "A req/s" "B req/s" "raw req/s" "A/raw" "B/raw"
for figure in "512 16" "64 1"; do
    read -r conns depth <<<"$figure"
    a="" b="" r=""
    for round in $(seq "$ROUNDS"); do
        # The order alternates: whichever runs first in a round does
        # measurably better on a shared box.
        for side in $( (( round % 2 )) && echo "a b" || echo "b a"); do
            if [[ $side == a ]]; then
                j=$(bench --gate 127.0.0.1:29888 --login 127.0.0.1:29001 --conns "$conns" --depth "$depth" --duration "$DURATION")
                a+=" $(field "$j" rps)"
            else
                j=$(bench --gate 127.0.0.1:29889 --login 127.0.0.1:29002 --conns "$conns" --depth "$depth" --duration "$DURATION")
                b+=" $(field "$j" rps)"
            fi
        done
        j=$(bench --raw --gate 127.0.0.1:29999 --conns "$conns" --depth "$depth" --duration "$DURATION")
        r+=" $(field "$j" rps)"
    done
    a=$(median <<<"$a"); b=$(median <<<"$b"); r=$(median <<<"$r")
    awk -v f="$conns x $depth, 16 B" -v a="$a" -v b="$b" -v r="$r" 'BEGIN {
        printf "%-22s %12.0f %12.0f %12.0f %7.1f%% %7.1f%%\n", f, a, b, r, 100*a/r, 100*b/r }'
done

# idle NAME PID LOGIN GATE: KiB of gate RSS per idle logged-in session
idle() {
    "$B/client" bench --idle --gate "$4" --login "$3" --conns 1 --duration 0 --user-prefix "warm$1" >/dev/null 2>&1
    local before after ready hold=$(( 30 + IDLE_SESSIONS / 500 ))
    before=$(rss_kb "$2")
    "$B/client" bench --idle --json --gate "$4" --login "$3" --conns "$IDLE_SESSIONS" \
        --duration "$hold" --user-prefix "idle$1" >"$WORK/idle-$1.json" 2>"$WORK/idle-$1.err" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq $(( hold * 10 ))); do
        grep -q '^ready' "$WORK/idle-$1.err" && break
        sleep 0.1
    done
    ready=$(awk '/^ready/ {print $2}' "$WORK/idle-$1.err")
    sleep 1
    after=$(rss_kb "$2")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    awk -v n="${ready:-0}" -v b="$before" -v a="$after" -v name="$1" 'BEGIN {
        if (n > 0) printf "idle %s: %d sessions, %.2f KiB per session\n", name, n, (a - b) / n;
        else print "idle " name ": setup failed" }'
}
idle A "$A_PID" 127.0.0.1:29001 127.0.0.1:29888
idle B "$B_PID" 127.0.0.1:29002 127.0.0.1:29889
