#!/usr/bin/env bash
# Attacks from outside against a default all-in-one gate, one after the
# other, while real players keep logging in and playing. The gate runs
# with its defaults (demo auth; an accounts file only for the password
# guessing), a backend listener with the `echo` example service as every
# user's agent, an operations listener with an admin token, and its
# WebSocket listeners (on by default).
#
# During each attack (ATTACK_SECS, default 10 s):
#   - 4 established players echo requests over the gate (`client bench`,
#     their gate connections from 127.0.2.1-4): their p99;
#   - a real player logs in and handshakes every 0.25 s, each time from
#     another address 127.0.3.1-50 (`client bench --conns 1 --requests 1`,
#     its login bound to that address by a small LD_PRELOAD shim, as
#     `client bench` binds only gate connections to --source-addrs):
#     success rate and p50/p99 of login + handshake;
#   - the gate's open descriptors and RSS, sampled every 0.5 s (max);
#   - the bytes the gate logged, those of the attack (lines not about the
#     real players), and `EMFILE` lines in them.
# The attacker (bench/attack.py) holds its sockets and opens a new one for
# each the gate closes, from loopback addresses other than 127.0.0.1.
#
# Goal for every row (PASS/FAIL): every real login succeeds, login p99
# under 1 s, echo p99 under 50 ms, no EMFILE, under 100 KB of log per
# attack minute from the attack (the players' own logins log ~60 KB a
# minute).
#
#   bench/attack.sh
#   ATTACK_SECS=20 bench/attack.sh
#   ONLY=slow-ops,wsping bench/attack.sh   # some of the attacks
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SECS=${ATTACK_SECS:-10}
ONLY=${ONLY:-}
BASE=${PORT_BASE:-27100}
LOGIN_PORT=$BASE GATE_PORT=$((BASE + 1)) WS_LOGIN_PORT=$((BASE + 2)) WS_GATE_PORT=$((BASE + 3))
BACKEND_PORT=$((BASE + 4)) OPS_PORT=$((BASE + 5))
ulimit -n "$(ulimit -Hn)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli -p service --bin gate --bin client --example echo
fi
source bench/lib.sh

# Binds a process's outgoing IPv4 connections to $BIND_SRC (unless the
# socket is bound already): lets `client` log in from any loopback address.
cat >"$WORK/bindsrc.c" <<'C'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *src = getenv("BIND_SRC");
    if (src && addr->sa_family == AF_INET) {
        struct sockaddr_in me;
        socklen_t ml = sizeof me;
        if (getsockname(fd, (struct sockaddr *)&me, &ml) == 0 && me.sin_port == 0) {
            struct sockaddr_in b = {.sin_family = AF_INET};
            if (inet_pton(AF_INET, src, &b.sin_addr) == 1) bind(fd, (struct sockaddr *)&b, sizeof b);
        }
    }
    return real(fd, addr, len);
}
C
cc -shared -fPIC -O2 -o "$WORK/bindsrc.so" "$WORK/bindsrc.c" -ldl
client_from() { BIND_SRC=$1 LD_PRELOAD="$WORK/bindsrc.so" "$BIN/client" "${@:2}"; }

"$BIN/gate" link-secret >"$WORK/link.secret"
"$BIN/gate" link-secret >"$WORK/admin.token"
HASH=$(echo password | "$BIN/gate" hash-password)
{
    for k in $(seq 1 50); do echo "real$k-0:$HASH"; done
    for i in 0 1 2 3; do echo "player$i:$HASH"; done
    echo "alice0:$HASH"
} >"$WORK/accounts"

GATE_PID='' ECHO_PID=''
# start_gate [ACCOUNTS]: a gate with default bounds, and the echo service.
start_gate() {
    [[ -n $GATE_PID ]] && { kill "$GATE_PID" "$ECHO_PID"; wait "$GATE_PID" "$ECHO_PID" 2>/dev/null || true; }
    {
        [[ -n ${1:-} ]] && echo "accounts = \"$1\""
        cat <<TOML
[login]
listen = "127.0.0.1:$LOGIN_PORT"
[gate]
listen = "127.0.0.1:$GATE_PORT"
[web]
login_listen = "127.0.0.1:$WS_LOGIN_PORT"
gate_listen = "127.0.0.1:$WS_GATE_PORT"
[backend]
listen = "127.0.0.1:$BACKEND_PORT"
secret_file = "$WORK/link.secret"
agent_service = "echo"
[ops]
listen = "127.0.0.1:$OPS_PORT"
admin_token_file = "$WORK/admin.token"
TOML
    } >"$WORK/gate.toml"
    "$BIN/gate" run --config "$WORK/gate.toml" >>"$WORK/gate.log" 2>&1 &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    wait_port "$LOGIN_PORT"
    wait_port "$GATE_PORT"
    wait_port "$BACKEND_PORT"
    "$BIN/examples/echo" --gate "127.0.0.1:$BACKEND_PORT" --link-secret-file "$WORK/link.secret" >"$WORK/echo.log" 2>&1 &
    ECHO_PID=$!
    PIDS+=("$ECHO_PID")
    # Until a player's request is answered by the service.
    for _ in $(seq 50); do
        "$BIN/client" bench --login "127.0.0.1:$LOGIN_PORT" --gate "127.0.0.1:$GATE_PORT" --conns 1 \
            --requests 1 --warmup 0 --workers 1 --user-prefix player >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the echo service never answered" >&2
    exit 1
}

# sample_logins DIR SECS INTERVAL PREFIX [ADDR]: a login + handshake every
# INTERVAL seconds, user PREFIX<k>-0 from 127.0.3.k (k = 1..50), or user
# PREFIX0 from ADDR; one JSON report (or nothing: a failure) per file.
sample_logins() {
    local dir=$1 end=$((SECONDS + $2)) n=0 k addr user
    while ((SECONDS < end)); do
        n=$((n + 1))
        k=$((n % 50 + 1))
        if [[ -n ${5:-} ]]; then addr=$5 user=$4; else addr=127.0.3.$k user=$4$k-; fi
        client_from "$addr" bench --login "127.0.0.1:$LOGIN_PORT" --gate "127.0.0.1:$GATE_PORT" \
            --conns 1 --requests 1 --warmup 0 --workers 1 --json --timeout 10 \
            --user-prefix "$user" --source-addrs "$addr" >"$dir/$4$n.json" 2>/dev/null &
        sleep "$3"
    done
    wait
}

# sample_gate FILE: descriptors and RSS (KiB) of the gate every 0.5 s.
sample_gate() {
    while kill -0 "$GATE_PID" 2>/dev/null; do
        echo "$(ls "/proc/$GATE_PID/fd" | wc -l) $(rss_kb "$GATE_PID")" >>"$1"
        sleep 0.5
    done
}

addrs() { # addrs PREFIX N: PREFIX.1,...,PREFIX.N
    local out=() i
    for i in $(seq 1 "$2"); do out+=("$1.$i"); done
    (IFS=,; echo "${out[*]}")
}

ROWS=()
# attack NAME WHAT COMMAND...: runs COMMAND as the attacker for SECS
# seconds under the players' load and adds a row to the table.
attack() {
    local name=$1 what=$2
    shift 2
    if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then return 0; fi
    local d="$WORK/$name"
    mkdir -p "$d/logins"
    local log0
    log0=$(stat -c %s "$WORK/gate.log")
    "$BIN/client" bench --login "127.0.0.1:$LOGIN_PORT" --gate "127.0.0.1:$GATE_PORT" --conns 4 \
        --workers 1 --warmup 0 --duration "$((SECS + 1))" --json --timeout 10 --user-prefix player \
        --source-addrs "$(addrs 127.0.2 4)" >"$d/echo.json" 2>"$d/echo.err" &
    local echo_pid=$!
    sample_gate "$d/gate" &
    local sampler=$!
    sleep 0.5
    "$@" >"$d/attacker.txt" 2>&1 &
    local attacker=$!
    sleep 1
    (sample_logins "$d/logins" "$((SECS - 1))" 0.25 real)
    if [[ $name == guess ]]; then wait "$alice"; fi
    wait "$attacker" || true
    wait "$echo_pid" || true
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local bytes
    bytes=$(($(stat -c %s "$WORK/gate.log") - log0))
    tail -c "$bytes" "$WORK/gate.log" >"$d/gate.log"
    ROWS+=("$(python3 - "$d" "$name" "$what" "$bytes" "$SECS" <<'PY'
import glob, json, re, sys
d, name, what, log_bytes, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
times, ok = [], 0
files = sorted(glob.glob(f"{d}/logins/*.json"))
for f in files:
    try:
        r = json.loads(open(f).read())
    except ValueError:
        continue
    if r.get("ok") and r.get("established") == 1:
        ok += 1
        times.append(r["setup_s"] * 1000)
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))] if times else float("nan")
try:
    e = json.loads(open(f"{d}/echo.json").read())
    echo_ok = e["ok"] and e["established"] == 4
    echo_p99 = e["p99_us"] / 1000
except (ValueError, KeyError):
    echo_ok, echo_p99 = False, float("nan")
fds, rss = zip(*(map(int, l.split()) for l in open(f"{d}/gate") if len(l.split()) == 2))
lines = open(f"{d}/gate.log", errors="replace").readlines()
emfile = sum(1 for l in lines if "EMFILE" in l or "Too many open files" in l)
# The attack's share: lines not about the real players (their logins,
# sessions and addresses).
players = re.compile(r"addr=127\.0\.[023]\.|uid=(real[0-9]+-|player|alice)[0-9]")
attack_bytes = sum(len(l.encode()) for l in lines if not players.search(l))
rate = 100 * ok / len(files) if files else 0
good = (files and ok == len(files) and q(0.99) < 1000 and echo_ok and echo_p99 < 50
        and emfile == 0 and attack_bytes * 60 / secs < 100 * 1024)
print(f"| {name} | {what} | {ok}/{len(files)} ({rate:.0f} %) | {q(0.5):.1f} ms | {q(0.99):.1f} ms "
      f"| {echo_p99:.2f} ms{'' if echo_ok else ' (errors)'} | {max(fds)} | {max(rss) / 1024:.1f} MiB "
      f"| {log_bytes / 1024:.1f} KB ({attack_bytes / 1024:.1f} KB) | {emfile} | {'PASS' if good else 'FAIL'} |")
PY
)")
    echo "${ROWS[-1]}"
    echo "   attacker: $(tail -1 "$d/attacker.txt")"
    sleep 2
}

# guess_passwords SECS: wrong passwords for alice0, 10 a second, each from
# the next of 250 addresses (127.0.5.1-250); prints the statuses seen.
guess_passwords() {
    local end=$((SECONDS + $1)) n=0
    mkdir -p "$WORK/guesses"
    while ((SECONDS < end)); do
        n=$((n + 1))
        client_from "127.0.5.$((n % 250 + 1))" login --login "127.0.0.1:$LOGIN_PORT" --user alice0 \
            --password "guess$n" >"$WORK/guesses/$n" 2>&1 &
        sleep 0.1
    done
    wait
    echo "guesses $n: $(cat "$WORK"/guesses/* | grep -oE '^[0-9]{3} [A-Za-z ]+' | sort | uniq -c | tr -s ' \n' ' ')"
}

echo "== gate (demo auth, echo service agent, ops listener, WebSocket on): attacks of ${SECS}s each =="
echo
start_gate
PY=("python3" "$ROOT/bench/attack.py")
attack none "no attack" sleep "$SECS"
attack idle-login-1 "idle login sockets, 1 address x 1000" "${PY[@]}" idle "$LOGIN_PORT" 127.0.10.1 1000 "$SECS"
attack idle-login-20 "idle login sockets, 20 addresses x 200" "${PY[@]}" idle "$LOGIN_PORT" "$(addrs 127.0.11 20)" 200 "$SECS"
attack idle-login-50 "idle login sockets, 50 addresses x 100" "${PY[@]}" idle "$LOGIN_PORT" "$(addrs 127.0.12 50)" 100 "$SECS"
attack fd-gate "idle gate sockets, 10 addresses x 1990 (the file limit)" "${PY[@]}" idle "$GATE_PORT" "$(addrs 127.0.13 10)" 1990 "$SECS"
attack slow-login "slowloris on login, 20 x 60, a byte a second" "${PY[@]}" slow "$LOGIN_PORT" "$(addrs 127.0.14 20)" 60 "$SECS"
attack slow-gate "slowloris on gate, 20 x 50 (a partial package)" "${PY[@]}" slow "$GATE_PORT" "$(addrs 127.0.15 20)" 50 "$SECS" '\x00\x40YWxpY2U=@c2FtcGxl#MQ==:1:AAAAAAAAAAA=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
attack slow-ops "slowloris on ops, 20 x 50 (a request head)" "${PY[@]}" slow "$OPS_PORT" "$(addrs 127.0.16 20)" 50 "$SECS" 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'
attack keyline "abandoned x25519 key exchanges, 20 x 60" "${PY[@]}" keyline "$LOGIN_PORT" "$(addrs 127.0.17 20)" 60 "$SECS"
attack backend "unauthenticated backend links, 20 x 20" "${PY[@]}" idle "$BACKEND_PORT" "$(addrs 127.0.18 20)" 20 "$SECS"
attack wsping "WebSocket ping flood, 4 x 4 connections" "${PY[@]}" wsping "$WS_GATE_PORT" "$(addrs 127.0.19 4)" 4 "$SECS"
if [[ -z $ONLY || ",$ONLY," == *",guess,"* ]]; then
    # Password guessing needs an accounts file: a new gate with one, and
    # alice0 logging in once from her address before the guesses start.
    start_gate "$WORK/accounts"
    client_from 127.0.3.250 login --login "127.0.0.1:$LOGIN_PORT" --user alice0 >/dev/null
    mkdir -p "$WORK/guess/logins"
    sample_logins "$WORK/guess/logins" "$SECS" 1 alice 127.0.3.250 &
    alice=$!
    attack guess "wrong passwords for alice0 from 250 rotating addresses, 10/s (accounts file)" guess_passwords "$SECS"
fi

echo
echo "| attack | attacker | real logins ok | login p50 | login p99 | echo p99 | gate fds (max) | gate RSS (max) | log written (the attack's) | EMFILE | goal |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [[ -n ${KEEP:-} ]]; then cp -r "$WORK" "$KEEP"; fi
