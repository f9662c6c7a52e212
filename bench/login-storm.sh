#!/usr/bin/env bash
# A storm of argon2 logins against a gate with an accounts file (argon2id,
# default costs: m = 19 MiB, t = 2): 64 clients log in again and again until
# LOGINS logins (default 10,000) are done. Prints logins/s, latency, and the
# gate's RSS fresh, at its peak during the storm and after it: the hashing
# pool holds one block per worker, so RSS after stays within a few blocks
# of a fresh gate's whatever the number of logins.
#
#   bench/login-storm.sh
#   LOGINS=3000 bench/login-storm.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
LOGINS=${LOGINS:-10000}
LOGIN_PORT=${LOGIN_PORT:-26101}
GATE_PORT=${GATE_PORT:-26102}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet -p gate -p client-cli --bin gate --bin client
fi
DIR=$(mktemp -d)
trap 'kill "${GATE_PID:-}" "${SAMPLER:-}" 2>/dev/null || true; rm -rf "$DIR"' EXIT

# One hash for every bench user: the cost is the same as 64 distinct ones.
HASH=$(echo password | "$BIN/gate" hash-password)
for i in $(seq 0 63); do echo "bench$i:$HASH"; done >"$DIR/accounts"
cat >"$DIR/gate.toml" <<TOML
accounts = "$DIR/accounts"
[login]
listen = "127.0.0.1:$LOGIN_PORT"
# 64 users log in again and again: measure the hashing, not the bound on
# one user's logins.
throttle_user_logins = 0
[gate]
listen = "127.0.0.1:$GATE_PORT"
TOML
"$BIN/gate" run --config "$DIR/gate.toml" 2>"$DIR/gate.log" &
GATE_PID=$!
for _ in $(seq 100); do
    grep -q "login server listening" "$DIR/gate.log" && break
    sleep 0.1
done
rss() { awk '/VmRSS/{print $2}' "/proc/$GATE_PID/status"; }
echo "gate RSS fresh:       $(rss) KiB"
(while kill -0 "$GATE_PID" 2>/dev/null; do rss >>"$DIR/rss"; sleep 0.5; done) &
SAMPLER=$!
"$BIN/client" bench --logins --login "127.0.0.1:$LOGIN_PORT" --gate "127.0.0.1:$GATE_PORT" \
    --conns 64 --requests "$LOGINS" --warmup 0
echo "gate RSS peak:        $(sort -n "$DIR/rss" | tail -1) KiB"
sleep 2
echo "gate RSS 2 s after:   $(rss) KiB"
