# Shared by the bench scripts (sourced, not run): a scratch directory
# ($WORK), the processes started ($PIDS) killed on exit, waiting for a
# port, and a process's resident memory.

WORK=$(mktemp -d)
PIDS=()
bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap bench_cleanup EXIT

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s).
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# rss_kb PID: its resident memory in KiB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID...: utime + stime of these processes, in clock ticks.
cpu_ticks() {
    local sum=0 pid
    for pid in "$@"; do
        # Fields 14 and 15 after the command name, which may hold spaces.
        sum=$(( sum + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}') ))
    done
    echo "$sum"
}


# start_echo_service BINARY LINK_PORT SECRET_FILE LOG: the `service`
# crate's echo example (BINARY) on the gate's backend link at LINK_PORT,
# in agent mode; its --max-in-flight covers 512 x 16 and more. Its pid in
# $SVC_PID.
start_echo_service() {
    RUST_LOG=warn "$1" --gate "127.0.0.1:$2" --link-secret-file "$3" \
        --max-in-flight 16384 >"$4" 2>&1 &
    SVC_PID=$!
    PIDS+=("$SVC_PID")
}

# wait_answered CLIENT LOGIN GATE: until one request through GATE is
# answered (up to 10 s): before the service has registered, requests get
# "no instance" errors.
wait_answered() {
    for _ in $(seq 100); do
        "$1" bench --json --gate "$3" --login "$2" --conns 1 --requests 1 \
            --user-prefix probe >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}
