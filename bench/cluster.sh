#!/usr/bin/env bash
# The cluster on one machine, against the all-in-one gate in the same run.
#
# Part 1 (figures): Redis, 2 login nodes and 2 gate nodes, and an
# all-in-one gate beside them. Reports
#   - x25519 logins/s: all-in-one, one login node, both login nodes at once;
#   - server CPU per login, all-in-one and summed over every cluster node
#     and Redis (/proc utime + stime), so the two compare by work, not by
#     how many processes share the cores;
#   - Redis commands per login (INFO commandstats over a login run, which
#     also counts the delete of each session its relogin ended);
#   - echo req/s at 512 x 16 through a cluster gate and through the
#     all-in-one gate (the directory is not on the request path).
# Part 3 (failover): a Redis master, one replica and three Sentinels, a
# gate node and a login node finding the master through the Sentinels;
# the master is killed (-9) and the time to the first successful login
# is reported.
# Part 2 (scale): IDLE_TOTAL idle sessions (default 100,000) logged in
# through the 2 login nodes onto IDLE_GATES gate nodes (each process may
# open at most `ulimit -Hn` files here), held HOLD seconds, then the
# sessions held, errors, RSS per session per gate, and Redis memory per
# online user.
#
#   bench/cluster.sh                       # ~4 min
#   IDLE_TOTAL=20000 HOLD=10 bench/cluster.sh
#
# Needs redis-server (Debian's package). Exit status is non-zero if a run
# lost or failed a request or a session.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
DURATION=${DURATION:-5}
IDLE_TOTAL=${IDLE_TOTAL:-100000}
IDLE_GATES=${IDLE_GATES:-6}
HOLD=${HOLD:-60}
# Below the ephemeral range (32768+), which the load generators use.
BASE=${BASE_PORT:-25000}
ulimit -n "$(ulimit -Hn)"

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli --bin gate --bin client
fi
source bench/lib.sh

REDIS_PORT=$BASE
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
PID_redis=$!
wait_port "$REDIS_PORT"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
"$BIN/gate" link-secret >"$WORK/secret"

# node NAME ROLE [TOML...]: one node with a config file; limits off for a
# load from loopback.
node() {
    local name=$1 role=$2
    shift 2
    {
        echo "[cluster]"
        echo "role = \"$role\""
        echo "redis = \"redis://127.0.0.1:$REDIS_PORT\""
        echo "node_id = \"$name\""
        echo "secret_file = \"$WORK/secret\""
        echo "lease = \"3s\"   # also the fence of a new (empty) directory"
        printf '%s\n' "$@"
        echo "[login]"
        echo "throttle_user_logins = 0   # 64 users log in again and again"
        echo "max_connections = 4096"
        echo "max_connections_per_source = 0"
        echo "max_connections_per_network = 0"
        echo "dialogue_timeout = \"60s\""
        echo "[gate]"
        echo "maxclient = 200000"
        echo "max_connections_per_source = 0"
        echo "max_connections_per_network = 0"
    } >"$WORK/$name.toml"
    # The [cluster] keys come first; listen addresses come as flags.
    RUST_LOG=warn "$BIN/gate" run --no-web --config "$WORK/$name.toml" "${NODE_FLAGS[@]}" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    eval "PID_$name=$!"
}

field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }
FAILED=0
bench() {
    local out
    if ! out=$("$BIN/client" bench --json "$@"); then
        echo "client bench $* FAILED: $out" >&2
        FAILED=1
    fi
    echo "$out"
}
gate_port() { echo $(( BASE + 10 + 2 * $1 )); }    # client port of gate N
ctl_port() { echo $(( BASE + 11 + 2 * $1 )); }     # control port of gate N
login_port() { echo $(( BASE + 1 + $1 )); }        # login node N

start_gate_node() { # N: gate node gN serving server name gN
    NODE_FLAGS=(--gate-listen "127.0.0.1:$(gate_port "$1")" --control-listen "127.0.0.1:$(ctl_port "$1")" --name "g$1")
    node "g$1" gate
    wait_port "$(gate_port "$1")"
    for _ in $(seq 100); do
        [[ $(rcli exists "gate:gate:g$1") == 1 ]] && return 0
        sleep 0.1
    done
    echo "gate node g$1 did not register" >&2
    exit 1
}
start_login_node() { # N
    NODE_FLAGS=(--login-listen "127.0.0.1:$(login_port "$1")")
    node "l$1" login
    wait_port "$(login_port "$1")"
}

# wait_unfenced: until the new directory's fence (one lease) lapsed.
wait_unfenced() {
    for _ in $(seq 100); do
        [[ $(rcli exists gate:fence) == 0 ]] && return 0
        sleep 0.1
    done
}
for n in 1 2; do start_gate_node "$n"; done
for n in 1 2; do start_login_node "$n"; done
wait_unfenced
ALL_LOGIN=$(( BASE + 90 )) ALL_GATE=$(( BASE + 91 ))
cat >"$WORK/all.toml" <<EOF
[login]
listen = "127.0.0.1:$ALL_LOGIN"
throttle_user_logins = 0
max_connections = 4096
max_connections_per_source = 0
max_connections_per_network = 0
[gate]
listen = "127.0.0.1:$ALL_GATE"
name = "g1"
maxclient = 200000
max_connections_per_source = 0
max_connections_per_network = 0
EOF
RUST_LOG=warn "$BIN/gate" --no-web --config "$WORK/all.toml" >"$WORK/all.log" 2>&1 &
PIDS+=("$!")
wait_port "$ALL_GATE"

echo "== cluster vs all-in-one, ${DURATION}s per figure, $(nproc) cores =="
printf '%-44s %12s %10s\n' figure "per second" "p99"
row() { printf '%-44s %12.0f %8.1fms\n' "$1" "$(field "$2" rps)" "$(awk -v v="$(field "$2" p99_us)" 'BEGIN{print v/1000}')"; }

ALL_PID=$!
cpu_per_login() { # TICKS_BEFORE TICKS_AFTER LOGINS
    awk -v b="$1" -v a="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (n ? (a - b) / hz / n * 1e6 : 0) }'
}
t0=$(cpu_ticks "$ALL_PID")
j=$(bench --logins --login "127.0.0.1:$ALL_LOGIN" --gate "127.0.0.1:$ALL_GATE" --server g1 --conns 64 --duration "$DURATION" --warmup 0)
cpu_all=$(cpu_per_login "$t0" "$(cpu_ticks "$ALL_PID")" "$(field "$j" requests)")
row "logins x25519, all-in-one" "$j"
rcli config resetstat >/dev/null
CLUSTER_PIDS=("$PID_redis" "$PID_g1" "$PID_l1")
t0=$(cpu_ticks "${CLUSTER_PIDS[@]}")
j=$(bench --logins --login "127.0.0.1:$(login_port 1)" --gate "127.0.0.1:$(gate_port 1)" --server g1 --conns 64 --duration "$DURATION" --warmup 0)
row "logins x25519, cluster, 1 login node" "$j"
logins=$(field "$j" requests)
cpu_cluster=$(cpu_per_login "$t0" "$(cpu_ticks "${CLUSTER_PIDS[@]}")" "$logins")
printf '%-44s %9s us   (all-in-one %s us; login node + gate node + Redis)\n' "server CPU per login, cluster" "$cpu_cluster" "$cpu_all"
sleep 1 # the deletes of the last relogins' ended sessions land
# Redis counts the commands a script runs under their own names, so the
# round trips are the script calls (EVALSHA, EVAL, SCRIPT LOAD): the
# directory sends no other command on the login path.
stats=$(rcli info commandstats)
trips=$(awk -F'[:=,]' '/^cmdstat_(eval|evalsha|script\|load):/ {s += $3} END {print s+0}' <<<"$stats")
inner=$(awk -F'[:=,]' '/^cmdstat_/ && !/^cmdstat_(eval|evalsha|script\|load|config\|resetstat|info):/ {s += $3} END {print s+0}' <<<"$stats")
awk -v t="$trips" -v i="$inner" -v n="$logins" 'BEGIN {
    printf "%-44s %12.2f   (%d logins; %.1f commands run inside the scripts per login)\n", "redis round trips per login", (n ? t / n : 0), n, (n ? i / n : 0) }'

# Both login nodes at once, each to its own gate.
bench --logins --login "127.0.0.1:$(login_port 1)" --gate "127.0.0.1:$(gate_port 1)" --server g1 --user-prefix a \
    --conns 64 --duration "$DURATION" --warmup 0.5 >"$WORK/la.json" &
la=$!
bench --logins --login "127.0.0.1:$(login_port 2)" --gate "127.0.0.1:$(gate_port 2)" --server g2 --user-prefix b \
    --conns 64 --duration "$DURATION" --warmup 0.5 >"$WORK/lb.json"
wait "$la"
total=$(( $(field "$(cat "$WORK/la.json")" rps | cut -d. -f1) + $(field "$(cat "$WORK/lb.json")" rps | cut -d. -f1) ))
printf '%-44s %12d\n' "logins x25519, cluster, 2 login nodes" "$total"

ja=$(bench --login "127.0.0.1:$ALL_LOGIN" --gate "127.0.0.1:$ALL_GATE" --server g1 --user-prefix e --conns 512 --depth 16 --size 16 --duration "$DURATION" --warmup 1)
jc=$(bench --login "127.0.0.1:$(login_port 1)" --gate "127.0.0.1:$(gate_port 1)" --server g1 --user-prefix e --conns 512 --depth 16 --size 16 --duration "$DURATION" --warmup 1)
row "echo 512x16 16 B, all-in-one gate" "$ja"
row "echo 512x16 16 B, cluster gate" "$jc"
awk -v c="$(field "$jc" rps)" -v a="$(field "$ja" rps)" 'BEGIN { printf "%-44s %11.1f %%\n", "cluster / all-in-one echo", (a ? 100 * c / a : 0) }'

echo
echo "== Redis failover through Sentinel =="
M=$(( BASE + 200 )) R=$(( BASE + 201 ))
redis-server --port "$M" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/m.log" 2>&1 &
PID_master=$!
PIDS+=("$PID_master")
redis-server --port "$R" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --replicaof 127.0.0.1 "$M" >"$WORK/r.log" 2>&1 &
PIDS+=("$!")
wait_port "$M"
wait_port "$R"
SENTINELS=()
for s in 0 1 2; do
    port=$(( BASE + 210 + s ))
    printf 'sentinel monitor main 127.0.0.1 %d 2\nsentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 10000\n' "$M" >"$WORK/s$s.conf"
    redis-server "$WORK/s$s.conf" --sentinel --port "$port" --bind 127.0.0.1 --dir "$WORK" >"$WORK/s$s.log" 2>&1 &
    PIDS+=("$!")
    SENTINELS+=("127.0.0.1:$port")
done
for _ in $(seq 100); do
    [[ $(redis-cli -p "$R" info replication | grep -c 'master_link_status:up') == 1 ]] &&
        [[ $(redis-cli -p "$(( BASE + 210 ))" sentinel replicas main | grep -c "$R") -ge 1 ]] && break
    sleep 0.1
done
SURL="redis+sentinel://$(IFS=,; echo "${SENTINELS[*]}")/main"
FG=$(( BASE + 220 )) FL=$(( BASE + 221 ))
RUST_LOG=warn "$BIN/gate" run --no-web --role gate --redis "$SURL" --lease 3s --cluster-secret-file "$WORK/secret" --node-id fg \
    --name fg --gate-listen "127.0.0.1:$FG" --control-listen "127.0.0.1:$(( BASE + 222 ))" >"$WORK/fg.log" 2>&1 &
PIDS+=("$!")
RUST_LOG=warn "$BIN/gate" run --no-web --role login --redis "$SURL" --lease 3s --cluster-secret-file "$WORK/secret" --node-id fl \
    --login-listen "127.0.0.1:$FL" >"$WORK/fl.log" 2>&1 &
PIDS+=("$!")
wait_port "$FG"
wait_port "$FL"
login_once() { "$BIN/client" login --login "127.0.0.1:$FL" --server fg --user "$1" >/dev/null 2>&1; }
for _ in $(seq 100); do login_once before && break; sleep 0.1; done
killed=$(date +%s%N)
kill -9 "$PID_master"
wait "$PID_master" 2>/dev/null || true
tries=0
until login_once "after$tries"; do
    tries=$(( tries + 1 ))
    (( tries < 3000 )) || { echo "no login within 300 s of the failover" >&2; FAILED=1; break; }
    sleep 0.1
done
awk -v ns="$(( $(date +%s%N) - killed ))" -v t="$tries" 'BEGIN {
    printf "%-44s %9.1f s   (%d refused attempts meanwhile; Sentinel down-after 1 s)\n", "master killed -> first login", ns / 1e9, t }'

echo
echo "== $IDLE_TOTAL idle sessions over $IDLE_GATES gate nodes, 2 login nodes, held ${HOLD}s =="
# Start afresh: the figures above left sessions on g1 and g2. Every node
# goes (a node that saw the directory would take the flush for lost data
# and fence logins for a lease), Redis is emptied, new nodes start.
kill "$PID_g1" "$PID_g2" "$PID_l1" "$PID_l2" 2>/dev/null || true
wait "$PID_g1" "$PID_g2" "$PID_l1" "$PID_l2" 2>/dev/null || true
rcli flushall >/dev/null
for n in $(seq "$IDLE_GATES"); do start_gate_node "$n"; done
for n in 1 2; do start_login_node "$n"; done
wait_unfenced
mem_before=$(rcli info memory | awk -F: '/^used_memory:/ {print $2+0}')
declare -A rss_before
for n in $(seq "$IDLE_GATES"); do
    pid_var="PID_g$n"
    rss_before[$n]=$(rss_kb "${!pid_var}")
done
per=$(( IDLE_TOTAL / IDLE_GATES ))
rem=$(( IDLE_TOTAL % IDLE_GATES ))
count() { echo $(( per + ($1 <= rem ? 1 : 0) )); }   # sessions on gate N
HOLDERS=()
for n in $(seq "$IDLE_GATES"); do
    l=$(( (n - 1) % 2 + 1 ))
    "$BIN/client" bench --idle --json --login "127.0.0.1:$(login_port "$l")" --gate "127.0.0.1:$(gate_port "$n")" \
        --server "g$n" --user-prefix "i$n-" --conns "$(count "$n")" --duration "$HOLD" --timeout 60 \
        --source-addrs "127.0.0.$(( n + 1 ))" >"$WORK/idle$n.json" 2>"$WORK/idle$n.err" &
    HOLDERS+=("$!")
    PIDS+=("$!")
done
started=$(date +%s)
for _ in $(seq 3000); do # at most 300 s to log everybody in
    all=1
    for n in $(seq "$IDLE_GATES"); do grep -q '^ready' "$WORK/idle$n.err" || all=0; done
    (( all )) && break
    sleep 0.1
done
ready_s=$(( $(date +%s) - started ))
sleep 1
held=0
for n in $(seq "$IDLE_GATES"); do
    held=$(( held + $(awk '/^ready/ {print $2}' "$WORK/idle$n.err" || echo 0) ))
done
records=$(rcli dbsize)
mem_after=$(rcli info memory | awk -F: '/^used_memory:/ {print $2+0}')
echo "logged in and connected: $held sessions in ~${ready_s}s; Redis keys: $records"
for n in $(seq "$IDLE_GATES"); do
    pid_var="PID_g$n"
    after=$(rss_kb "${!pid_var}")
    fds=$(find "/proc/${!pid_var}/fd" -mindepth 1 | wc -l)
    awk -v n="$n" -v b="${rss_before[$n]}" -v a="$after" -v s="$(count "$n")" -v f="$fds" 'BEGIN {
        printf "gate g%d: RSS %.1f -> %.1f MiB, %.2f KiB per session, %d descriptors\n", n, b/1024, a/1024, (a-b)/s, f }'
done
awk -v b="$mem_before" -v a="$mem_after" -v n="$held" 'BEGIN {
    printf "redis used_memory %.1f -> %.1f MiB: %.0f bytes per online user\n", b/1048576, a/1048576, (n ? (a-b)/n : 0) }'
for i in "${!HOLDERS[@]}"; do
    wait "${HOLDERS[$i]}" || FAILED=1
done
errors=0
for n in $(seq "$IDLE_GATES"); do
    e=$(grep -o '"errors":[0-9]*' "$WORK/idle$n.json" | cut -d: -f2 || echo 1)
    errors=$(( errors + ${e:-1} ))
done
echo "after ${HOLD}s: $errors errors over $held sessions (records still in Redis: $(rcli dbsize))"
(( errors == 0 )) || FAILED=1
(( held == IDLE_TOTAL )) || FAILED=1
exit "$FAILED"
