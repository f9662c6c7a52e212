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
