#!/usr/bin/env bash
# Benchmark of the gate against a raw framed echo server, on one machine.
#
# Builds the release binaries, starts the gate (demo authentication: any
# user, password `password`) and `raw-echo`, runs the same `client bench`
# load against each in turn, several rounds, and prints the gate/raw ratio
# of requests/s for 512 connections x 16 in flight and 64 x 1 (closed
# loop), with 16-byte and 512-byte payloads; logins/s at 64 concurrent
# clients for each suite; and the gate's memory per idle logged-in session,
# over TCP and over WebSocket
# (RSS with N idle sessions minus RSS with none); and echo through a
# backend service process (the `service` crate's echo example) at 512 x 16,
# against a byte relay (`raw-echo --relay-to`: one upstream connection per
# client, bytes copied both ways) in front of the raw echo server;
# and echo over the gate's WebSocket listener against TCP echo through the
# same gate, interleaved in the same rounds (requests/s and p99); and
# echo over the sealed channel (`client bench --seal`) and over the gate's
# TLS listener against plain TCP echo through the same gate, interleaved,
# with the gate's CPU per request (from /proc).
#
# Every echo figure also reports the server's CPU per request: utime +
# stime of the server processes of the path (gate; raw echo; gate + service;
# relay + raw echo) from /proc. Against the raw echo server and the relay,
# over the client's measured window alone, divided by the requests answered
# in it: the gate's side logs its clients in first, the baselines do not
# (512 logins are about 2.5 % of the gate's CPU over a whole 512 x 16 run).
# The rows that put the gate beside itself (WebSocket, sealed, TLS) take it
# over the whole client run, divided by the requests sent. And a
# game-shaped open loop: PLAYERS players (default: as many as the idle
# figure's sessions) sending RATE (10) messages a second each, through the
# gate and against the raw echo server at the same offered load.
#
# Absolute numbers on a shared 2-core box are noise (the load generator runs
# on the same cores); the ratios of one run are the figure.
#
#   bench/run.sh               # full: 3 rounds of 5 s per figure, ~6 min
#   QUICK=1 bench/run.sh       # 1 round of 2 s, fewer idle sessions, < 1 min
#
# Writes a chart of latency by percentile (gate and raw echo, 512 x 16) to
# docs/latency.png with gnuplot when it is installed.
#
# Knobs (environment): ROUNDS, DURATION (s), WARMUP (s), IDLE_SESSIONS, CHART,
# LOGIN_PORT, GATE_PORT, RAW_PORT, BACKEND_PORT, WEB_GATE_PORT, TLS_GATE_PORT, RELAY_PORT, PLAYERS, RATE, SKIP_BUILD=1. The TLS
# row needs openssl (a throwaway certificate); it is skipped without. Exit status is non-zero if
# any run lost or got a wrong response.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

if [[ ${QUICK:-0} == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-0.5}
    IDLE_SESSIONS=${IDLE_SESSIONS:-2000}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-5}
    WARMUP=${WARMUP:-1}
    IDLE_SESSIONS=${IDLE_SESSIONS:-10000}
fi
LOGIN_PORT=${LOGIN_PORT:-28001}
GATE_PORT=${GATE_PORT:-28888}
RAW_PORT=${RAW_PORT:-28999}
WEB_GATE_PORT=${WEB_GATE_PORT:-28889}
WEB_LOGIN_PORT=${WEB_LOGIN_PORT:-28002}
TLS_GATE_PORT=${TLS_GATE_PORT:-28890}
LOGIN=127.0.0.1:$LOGIN_PORT
GATE=127.0.0.1:$GATE_PORT
RAW=127.0.0.1:$RAW_PORT
# Where the latency chart goes (PNG).
CHART=${CHART:-$ROOT/docs/latency.png}

# The load comes from one address: no per-source bound in these configs.
# Idle sessions need a descriptor each, in the gate and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( IDLE_SESSIONS + 200 > $(ulimit -n) )); then
    IDLE_SESSIONS=$(( $(ulimit -n) - 200 ))
fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building release binaries..." >&2
    cargo build --release --quiet -p gate -p client-cli -p raw-echo --bin gate --bin raw-echo --bin client
fi
BIN=$TARGET_DIR/release
for b in gate raw-echo client; do
    [[ -x $BIN/$b ]] || { echo "missing $BIN/$b" >&2; exit 1; }
done

source bench/lib.sh

start_gate() { # start_gate: a fresh gate; sets GATE_PID
    cat >"$WORK/gate.toml" <<EOF
[login]
listen = "$LOGIN"
throttle_user_logins = 0   # 64 users log in again and again
max_connections = 4096
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "$GATE"
name = "sample"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
login_listen = "127.0.0.1:$WEB_LOGIN_PORT"
gate_listen = "127.0.0.1:$WEB_GATE_PORT"
EOF
    if [[ -s $WORK/tls.crt ]]; then
        cat >>"$WORK/gate.toml" <<EOF
[tls]
gate_listen = "127.0.0.1:$TLS_GATE_PORT"
cert_file = "$WORK/tls.crt"
key_file = "$WORK/tls.key"
EOF
    fi
    RUST_LOG=warn "$BIN/gate" --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    wait_port "$LOGIN_PORT"
    wait_port "$GATE_PORT"
    wait_port "$WEB_GATE_PORT"
    if [[ -s $WORK/tls.crt ]]; then wait_port "$TLS_GATE_PORT"; fi
}

stop_gate() {
    kill "$GATE_PID" 2>/dev/null || true
    wait "$GATE_PID" 2>/dev/null || true
}

FAILED=0
# field JSON NAME: a number from client bench's one-line JSON report
field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }

bench() { # bench ARGS...: one client bench run, prints its JSON line
    local out
    if ! out=$("$BIN/client" bench --json --warmup "$WARMUP" "$@"); then
        echo "client bench $* FAILED: $out" >&2
        FAILED=1
    fi
    echo "$out"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }

# Server CPU per request: utime + stime of the server processes over a
# client run (clock ticks from cpu_ticks), divided by the requests the run
# sent; the run's setup (its logins) is included, a few % at most.
TICK_NS=$(( 1000000000 / $(getconf CLK_TCK) ))
# bench_window "PID..." ARGS...: one client bench run whose server CPU is
# taken over its measured window alone (`--mark-window`: setup and warmup
# left out, which matters when the load is light and the logins are not);
# sets WIN_JSON, and WIN_NS to the CPU per request answered in the window.
bench_window() {
    local pids=$1 cpid t0="" t1=""
    shift
    "$BIN/client" bench --json --mark-window --warmup "$WARMUP" "$@" >"$WORK/window.json" 2>"$WORK/window.err" &
    cpid=$!
    # The marks are looked for once more after the client has gone: it
    # may print its last one and exit (and be reaped) between two looks.
    while :; do
        if [[ -z $t0 ]] && grep -q '^measuring' "$WORK/window.err"; then
            # shellcheck disable=SC2086 # one argument per pid
            t0=$(cpu_ticks $pids)
        fi
        if [[ -n $t0 ]] && grep -q '^measured' "$WORK/window.err"; then
            # shellcheck disable=SC2086
            t1=$(cpu_ticks $pids)
            break
        fi
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.02
    done
    if ! wait "$cpid"; then
        echo "client bench $* FAILED: $(cat "$WORK/window.json")" >&2
        FAILED=1
    fi
    WIN_JSON=$(cat "$WORK/window.json")
    WIN_NS=$(awk -v t=$(( ${t1:-0} - ${t0:-0} )) -v n="$(field "$WIN_JSON" requests)" -v k="$TICK_NS" \
        'BEGIN { if (n > 0) printf "%.0f", t * k / n; else print 0 }')
}
per_request() { # per_request TICKS_BEFORE TICKS_AFTER JSON: ns
    awk -v t=$(( $2 - $1 )) -v n="$(field "$3" sent)" -v k="$TICK_NS" \
        'BEGIN { if (n > 0) printf "%.0f", t * k / n; else print 0 }'
}

# A throwaway CA and a certificate it signs for the TLS listener (the TLS
# row), if openssl is there.
if command -v openssl >/dev/null; then
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' >"$WORK/tls.ext"
    { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
          -addext basicConstraints=critical,CA:TRUE -keyout "$WORK/ca.key" -out "$WORK/ca.crt" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
          -keyout "$WORK/tls.key" -out "$WORK/tls.csr" &&
      openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
          -days 1 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt"; } >/dev/null 2>&1 || rm -f "$WORK/tls.crt"
fi

cores=$(nproc)
echo "== gate vs raw echo: $ROUNDS round(s) of ${DURATION}s (+${WARMUP}s warmup) per figure, $cores cores =="
"$BIN/raw-echo" --listen "$RAW" >"$WORK/raw.log" 2>&1 &
RAW_PID=$!
PIDS+=("$RAW_PID")
wait_port "$RAW_PORT"
start_gate

printf '%-28s %12s %12s %9s %10s %10s %9s %9s %9s\n' figure "gate req/s" "raw req/s" gate/raw "gate p99" "raw p99" \
    "gate CPU" "raw CPU" "CPU g/r"
for figure in "512 16 16" "512 16 512" "64 1 16" "64 1 512"; do
    read -r conns depth size <<<"$figure"
    gate_rps="" raw_rps="" gate_p99="" raw_p99="" gate_cpu="" raw_cpu=""
    for _ in $(seq "$ROUNDS"); do
        # Interleaved, so drift on the machine hits both sides alike. The
        # 512 x 16, 16 B figure also keeps its latency distributions (the
        # last round's) for the chart.
        hg=() hr=()
        if [[ $figure == "512 16 16" ]]; then
            hg=(--hgrm "$WORK/gate.hgrm"); hr=(--hgrm "$WORK/raw.hgrm")
        fi
        # CPU over the measured window: the gate's logins (the raw server
        # has none) stay out of its figure.
        bench_window "$GATE_PID" --gate "$GATE" --login "$LOGIN" --conns "$conns" --depth "$depth" --size "$size" \
            --duration "$DURATION" "${hg[@]}"
        gate_rps+=" $(field "$WIN_JSON" rps)"; gate_p99+=" $(field "$WIN_JSON" p99_us)"; gate_cpu+=" $WIN_NS"
        bench_window "$RAW_PID" --raw --gate "$RAW" --conns "$conns" --depth "$depth" --size "$size" \
            --duration "$DURATION" "${hr[@]}"
        raw_rps+=" $(field "$WIN_JSON" rps)"; raw_p99+=" $(field "$WIN_JSON" p99_us)"; raw_cpu+=" $WIN_NS"
    done
    g=$(median <<<"$gate_rps"); r=$(median <<<"$raw_rps")
    gp=$(median <<<"$gate_p99"); rp=$(median <<<"$raw_p99")
    gc=$(median <<<"$gate_cpu"); rc=$(median <<<"$raw_cpu")
    ratio=$(awk -v g="$g" -v r="$r" 'BEGIN { if (r > 0) printf "%.1f %%", 100 * g / r; else print "-" }')
    printf '%-28s %12.0f %12.0f %9s %8.1fms %8.1fms %7.0fns %7.0fns %9s\n' "$conns conns x $depth, $size B" "$g" "$r" "$ratio" \
        "$(awk -v v="$gp" 'BEGIN{print v/1000}')" "$(awk -v v="$rp" 'BEGIN{print v/1000}')" "$gc" "$rc" \
        "$(awk -v g="$gc" -v r="$rc" 'BEGIN { if (r > 0) printf "%.2fx", g / r; else print "-" }')"
done
echo "target (issue 23): gate CPU per request <= 1.25x raw at 512x16, <= 1.05x at 64x1"

echo
# WebSocket: the same gate, its WebSocket listener against its TCP one,
# interleaved rounds (the load generator masks and frames every message
# too, on the same cores).
printf '%-28s %12s %12s %9s %10s %10s %9s %9s %9s\n' figure "ws req/s" "tcp req/s" ws/tcp "ws p99" "tcp p99" \
    "ws CPU" "tcp CPU" "CPU w/t"
for figure in "512 16 16" "512 16 512" "64 1 16"; do
    read -r conns depth size <<<"$figure"
    ws_rps="" tcp_rps="" ws_p99="" tcp_p99="" ws_cpu="" tcp_cpu=""
    for _ in $(seq "$ROUNDS"); do
        t0=$(cpu_ticks "$GATE_PID")
        j=$(bench --gate "ws://127.0.0.1:$WEB_GATE_PORT" --login "$LOGIN" --conns "$conns" --depth "$depth" --size "$size" --duration "$DURATION")
        ws_rps+=" $(field "$j" rps)"; ws_p99+=" $(field "$j" p99_us)"
        ws_cpu+=" $(per_request "$t0" "$(cpu_ticks "$GATE_PID")" "$j")"
        t0=$(cpu_ticks "$GATE_PID")
        j=$(bench --gate "$GATE" --login "$LOGIN" --conns "$conns" --depth "$depth" --size "$size" --duration "$DURATION")
        tcp_rps+=" $(field "$j" rps)"; tcp_p99+=" $(field "$j" p99_us)"
        tcp_cpu+=" $(per_request "$t0" "$(cpu_ticks "$GATE_PID")" "$j")"
    done
    w=$(median <<<"$ws_rps"); t=$(median <<<"$tcp_rps")
    wp=$(median <<<"$ws_p99"); tp=$(median <<<"$tcp_p99")
    wc=$(median <<<"$ws_cpu"); tc=$(median <<<"$tcp_cpu")
    ratio=$(awk -v w="$w" -v t="$t" 'BEGIN { if (t > 0) printf "%.1f %%", 100 * w / t; else print "-" }')
    printf '%-28s %12.0f %12.0f %9s %8.1fms %8.1fms %7.0fns %7.0fns %9s\n' "ws $conns conns x $depth, $size B" "$w" "$t" "$ratio" \
        "$(awk -v v="$wp" 'BEGIN{print v/1000}')" "$(awk -v v="$tp" 'BEGIN{print v/1000}')" "$wc" "$tc" \
        "$(awk -v w="$wc" -v t="$tc" 'BEGIN { if (t > 0) printf "%.2fx", w / t; else print "-" }')"
done
echo "targets: WebSocket echo >= 60 % of TCP at 512x16 (issue 12); <= 1.15x TCP's CPU per request (issue 23)"

echo
# The sealed channel: the same gate over TCP, plain and sealed (every
# request opened and every answer sealed with ChaCha20-Poly1305), and over
# its TLS listener, interleaved in the same rounds. CPU per request is the
# gate's utime + stime over the whole client run divided by the requests
# sent (the logins of the setup included: a few % of it at most).
seal_run() { # seal_run KIND CONNS DEPTH SIZE: prints "rps p99_us cpu_ns_per_request"
    local kind=$1 before after j sent
    local args=(--login "$LOGIN" --conns "$2" --depth "$3" --size "$4" --duration "$DURATION")
    before=$(cpu_ticks "$GATE_PID")
    case $kind in
        plain) j=$(bench --gate "$GATE" "${args[@]}") ;;
        sealed) j=$(bench --gate "$GATE" --seal "${args[@]}") ;;
        tls)
            if ! j=$("$BIN/client" --tls-ca-file "$WORK/ca.crt" bench --json --warmup "$WARMUP" \
                --gate "tls://127.0.0.1:$TLS_GATE_PORT" "${args[@]}"); then
                echo "client bench (TLS) FAILED: $j" >&2
                FAILED=1
            fi ;;
    esac
    after=$(cpu_ticks "$GATE_PID")
    sent=$(field "$j" sent)
    echo "$(field "$j" rps) $(field "$j" p99_us) $(awk -v t=$(( after - before )) -v n="${sent:-0}" -v k="$TICK_NS" \
        'BEGIN { if (n > 0) printf "%.0f", t * k / n; else print 0 }')"
}
kinds=(plain sealed)
if [[ -s $WORK/tls.crt ]]; then kinds+=(tls); fi
printf '%-28s %12s %10s %12s %10s\n' figure "req/s" "p99" "CPU/request" "vs plain"
for figure in "512 16 16" "512 16 512" "64 1 16"; do
    read -r conns depth size <<<"$figure"
    declare -A rps=() p99=() cpu=()
    for _ in $(seq "$ROUNDS"); do
        for kind in "${kinds[@]}"; do
            seal_run "$kind" "$conns" "$depth" "$size" >"$WORK/seal.out"
            read -r r p c <"$WORK/seal.out"
            rps[$kind]+=" $r"; p99[$kind]+=" $p"; cpu[$kind]+=" $c"
        done
    done
    plain_cpu=$(median <<<"${cpu[plain]}")
    for kind in "${kinds[@]}"; do
        c=$(median <<<"${cpu[$kind]}")
        printf '%-28s %12.0f %8.1fms %10.0fns %9s\n' "$kind $conns x $depth, $size B" \
            "$(median <<<"${rps[$kind]}")" "$(awk -v v="$(median <<<"${p99[$kind]}")" 'BEGIN{print v/1000}')" "$c" \
            "$(awk -v c="$c" -v p="$plain_cpu" 'BEGIN { if (p > 0) printf "%.2fx", c / p; else print "-" }')"
    done
    unset rps p99 cpu
done
echo "target (issue 22): sealed <= 1.5x plain CPU per request at 512x16, 16 B"

echo
# Game-shaped load: PLAYERS players, each sending RATE messages a second on
# schedule (an open loop: `client bench --rate`), through the gate and
# against the raw echo server at the same offered load, interleaved. The
# figures: the rate achieved, p99 and max latency counted from when each
# message was due (coordinated omission corrected), and the server's CPU
# per message over the measured window alone (the players' logins are a
# large part of a light load's run).
PLAYERS=${PLAYERS:-$IDLE_SESSIONS}
RATE=${RATE:-10}
printf '%-34s %10s %10s %10s %10s %11s\n' figure "msgs/s" "achieved" "p99" "max" "CPU/msg"
game_rps="" game_p99="" game_max="" game_cpu="" raw_rps="" raw_p99="" raw_max="" raw_cpu=""
for _ in $(seq "$ROUNDS"); do
    bench_window "$GATE_PID" --gate "$GATE" --login "$LOGIN" --conns "$PLAYERS" --rate "$RATE" --depth 4 \
        --size 16 --duration "$DURATION" --user-prefix game
    j=$WIN_JSON
    game_rps+=" $(field "$j" rps)"; game_p99+=" $(field "$j" p99_us)"; game_max+=" $(field "$j" max_us)"
    game_cpu+=" $WIN_NS"
    bench_window "$RAW_PID" --raw --gate "$RAW" --conns "$PLAYERS" --rate "$RATE" --depth 4 --size 16 \
        --duration "$DURATION"
    j=$WIN_JSON
    raw_rps+=" $(field "$j" rps)"; raw_p99+=" $(field "$j" p99_us)"; raw_max+=" $(field "$j" max_us)"
    raw_cpu+=" $WIN_NS"
done
offered=$(awk -v p="$PLAYERS" -v r="$RATE" 'BEGIN { printf "%.0f", p * r }')
for side in gate raw; do
    if [[ $side == gate ]]; then
        r=$(median <<<"$game_rps"); p=$(median <<<"$game_p99"); m=$(median <<<"$game_max"); c=$(median <<<"$game_cpu")
    else
        r=$(median <<<"$raw_rps"); p=$(median <<<"$raw_p99"); m=$(median <<<"$raw_max"); c=$(median <<<"$raw_cpu")
    fi
    printf '%-34s %10s %9.1f%% %8.1fms %8.1fms %9.0fns\n' "$side: $PLAYERS players x $RATE msg/s" "$offered" \
        "$(awk -v r="$r" -v o="$offered" 'BEGIN { print (o > 0 ? 100 * r / o : 0) }')" \
        "$(awk -v v="$p" 'BEGIN{print v/1000}')" "$(awk -v v="$m" 'BEGIN{print v/1000}')" "$c"
done

echo
# The chart: latency by percentile, gate and raw echo from the same run
# (needs gnuplot, e.g. Debian's gnuplot-nox; skipped without it).
if command -v gnuplot >/dev/null && [[ -s $WORK/gate.hgrm && -s $WORK/raw.hgrm ]]; then
    cp "$WORK/gate.hgrm" "${CHART%.png}-gate.hgrm"
    cp "$WORK/raw.hgrm" "${CHART%.png}-raw.hgrm"
    gnuplot <<GNUPLOT
set terminal png size 900,520
set output "$CHART"
set title "Echo latency by percentile, 512 connections x 16 in flight, 16 B ($cores cores, one run)"
set logscale x
set xrange [1:100000]
set xtics ("0%%" 1, "50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000)
set xlabel "percentile"
set ylabel "latency (ms)"
set key top left
set grid
plot "$WORK/gate.hgrm" skip 2 using 4:1 with lines lw 2 title "gate", \
     "$WORK/raw.hgrm" skip 2 using 4:1 with lines lw 2 title "raw framed echo"
GNUPLOT
    echo "chart: $CHART (distributions: ${CHART%.png}-gate.hgrm, ${CHART%.png}-raw.hgrm)"
else
    echo "chart skipped (needs gnuplot)"
fi

echo
printf '%-28s %12s %10s\n' figure "logins/s" "p99"
for suite in skynet x25519; do
    rates="" p99s=""
    for _ in $(seq "$ROUNDS"); do
        j=$(bench --logins --login "$LOGIN" --gate "$GATE" --suite "$suite" --conns 64 --duration "$DURATION")
        rates+=" $(field "$j" rps)"; p99s+=" $(field "$j" p99_us)"
    done
    printf '%-28s %12.0f %8.1fms\n' "logins, 64 clients, $suite" "$(median <<<"$rates")" \
        "$(awk -v v="$(median <<<"$p99s")" 'BEGIN{print v/1000}')"
done

echo
# Memory: a fresh gate, RSS before and with N idle logged-in, handshaken
# sessions (one connection each), held by one client process; over TCP,
# then over WebSocket.
idle_rss() { # idle_rss LABEL GATE_ADDR
    stop_gate
    start_gate
    # One session first, so one-time allocations (runtime, tables) are not
    # charged to the idle sessions.
    "$BIN/client" bench --idle --gate "$2" --login "$LOGIN" --conns 1 --duration 0 --user-prefix warm >/dev/null 2>&1
    local before after ready hold
    before=$(rss_kb "$GATE_PID")
    hold=$(( 30 + IDLE_SESSIONS / 500 ))
    "$BIN/client" bench --idle --json --gate "$2" --login "$LOGIN" --conns "$IDLE_SESSIONS" \
        --duration "$hold" --user-prefix idle >"$WORK/idle.json" 2>"$WORK/idle.err" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    for _ in $(seq $(( hold * 10 ))); do
        grep -q '^ready' "$WORK/idle.err" && break
        kill -0 "$IDLE_PID" 2>/dev/null || break
        sleep 0.1
    done
    ready=$(awk '/^ready/ {print $2}' "$WORK/idle.err")
    if [[ -n $ready ]]; then
        sleep 1 # let the last handshakes' transient buffers go
        after=$(rss_kb "$GATE_PID")
        awk -v l="$1" -v n="$ready" -v b="$before" -v a="$after" 'BEGIN {
            printf "idle %s sessions: %d logged in and connected; gate RSS %.1f MiB -> %.1f MiB: %.2f KiB per session\n",
                l, n, b / 1024, a / 1024, (a - b) / n }'
    else
        echo "idle $1 sessions: setup failed: $(cat "$WORK/idle.err")"
        FAILED=1
    fi
    kill "$IDLE_PID" 2>/dev/null || true
    wait "$IDLE_PID" 2>/dev/null || true
}
idle_rss TCP "$GATE"
idle_rss WebSocket "ws://127.0.0.1:$WEB_GATE_PORT"

echo
# Backend services (issue 5): the same echo load, answered by the `service`
# crate's echo example in its own process over the gate's backend RPC
# (agent mode, every user bound to the one `echo` instance), against the
# raw server in the same rounds. The service's --max-in-flight must cover
# conns x depth, or it refuses the excess by design.
BACKEND_PORT=${BACKEND_PORT:-28899}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p service --example echo
fi
stop_gate
"$BIN/gate" link-secret >"$WORK/link.secret"
cat >"$WORK/backend.toml" <<TOML
[login]
listen = "$LOGIN"
throttle_user_logins = 0   # 64 users log in again and again
max_connections = 4096
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "$GATE"
name = "sample"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
[web]
enabled = false
[backend]
listen = "127.0.0.1:$BACKEND_PORT"
agent_service = "echo"
secret_file = "$WORK/link.secret"
TOML
RUST_LOG=warn "$BIN/gate" --config "$WORK/backend.toml" >"$WORK/gate-backend.log" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")
wait_port "$LOGIN_PORT"
wait_port "$GATE_PORT"
wait_port "$BACKEND_PORT"
start_echo_service "$TARGET_DIR/release/examples/echo" "$BACKEND_PORT" "$WORK/link.secret" \
    "$WORK/echo-service.log"
# The baseline of the service path: a dumb byte relay (one upstream
# connection per client, copy both ways) in front of the raw echo server.
RELAY_PORT=${RELAY_PORT:-28998}
"$BIN/raw-echo" --listen "127.0.0.1:$RELAY_PORT" --relay-to "$RAW" >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT"
wait_answered "$BIN/client" "$LOGIN" "$GATE"
printf '%-28s %12s %12s %9s %10s %10s %9s %9s %9s\n' figure "svc req/s" "raw req/s" svc/raw "svc p99" "raw p99" \
    "svc CPU" "relay CPU" "CPU s/r"
svc_rps="" raw_rps="" svc_p99="" raw_p99="" rel_rps="" rel_p99="" svc_cpu="" rel_cpu=""
for _ in $(seq "$ROUNDS"); do
    # CPU of the whole path over the measured window (the logins, which
    # only the gate's side has, left out): gate + service process; relay +
    # raw echo.
    bench_window "$GATE_PID $SVC_PID" --gate "$GATE" --login "$LOGIN" --conns 512 --depth 16 --size 16 \
        --duration "$DURATION"
    svc_rps+=" $(field "$WIN_JSON" rps)"; svc_p99+=" $(field "$WIN_JSON" p99_us)"; svc_cpu+=" $WIN_NS"
    j=$(bench --raw --gate "$RAW" --conns 512 --depth 16 --size 16 --duration "$DURATION")
    raw_rps+=" $(field "$j" rps)"; raw_p99+=" $(field "$j" p99_us)"
    bench_window "$RELAY_PID $RAW_PID" --raw --gate "127.0.0.1:$RELAY_PORT" --conns 512 --depth 16 --size 16 \
        --duration "$DURATION"
    rel_rps+=" $(field "$WIN_JSON" rps)"; rel_p99+=" $(field "$WIN_JSON" p99_us)"; rel_cpu+=" $WIN_NS"
done
g=$(median <<<"$svc_rps"); r=$(median <<<"$raw_rps"); l=$(median <<<"$rel_rps")
sc=$(median <<<"$svc_cpu"); lc=$(median <<<"$rel_cpu")
ratio=$(awk -v g="$g" -v r="$r" 'BEGIN { if (r > 0) printf "%.1f %%", 100 * g / r; else print "-" }')
printf '%-28s %12.0f %12.0f %9s %8.1fms %8.1fms %7.0fns %7.0fns %9s\n' "echo service, 512x16, 16 B" "$g" "$r" "$ratio" \
    "$(awk -v v="$(median <<<"$svc_p99")" 'BEGIN{print v/1000}')" \
    "$(awk -v v="$(median <<<"$raw_p99")" 'BEGIN{print v/1000}')" "$sc" "$lc" \
    "$(awk -v s="$sc" -v l="$lc" 'BEGIN { if (l > 0) printf "%.2fx", s / l; else print "-" }')"
printf '%-28s %12.0f %12s %9s %8.1fms\n' "relay + raw echo, 512x16" "$l" "" \
    "$(awk -v g="$g" -v l="$l" 'BEGIN { if (l > 0) printf "svc %.0f %%", 100 * g / l; else print "-" }')" \
    "$(awk -v v="$(median <<<"$rel_p99")" 'BEGIN{print v/1000}')"
echo "target (issue 23): the service path <= 1.0x the relay + raw echo's CPU per request, at least its req/s"
echo "target (issue 5): echo through a service process >= 25 % of raw at 512x16"

echo
echo "targets (issue 3): 512x16 >= 50 %, 64x1 >= 85 %, logins skynet >= 25000/s, x25519 >= 8000/s, <= 4 KB per idle session (RSS delta / sessions; includes allocator slack)"
exit "$FAILED"
