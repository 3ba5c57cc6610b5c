#!/usr/bin/env bash
# Instruction count of a wshub binary for a fixed fan-out, stable on a noisy
# machine: the hub runs under callgrind while the load generator connects
# 1000 clients and publishes 20 messages/s for 5 s (100,000 deliveries,
# startup and upgrades included). Compare two builds in one sitting:
#
#   cargo build --release -p wshub -p loadgen
#   bash benches/callgrind.sh target/release/wshub [extra wshub flags]
#   bash benches/callgrind.sh /path/to/older/wshub
#   bash benches/callgrind.sh --across-redis target/release/wshub
#   bash benches/callgrind.sh --closed 10000 target/release/wshub
#
# --across-redis: a redis-server and a second hub (A) are started; the
# publisher connects to A, the other 999 clients to the measured hub, and
# both hubs share topics through Redis. --closed N: N clients in a closed
# loop (16 messages in flight) for 5 s instead, as fanout.py's W=16 rows;
# the deliveries then vary with the build's speed, so it also prints the
# instructions per delivery. Prints the program's total instructions.
# Loopback only; stops what it started by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACROSS=
CLOSED=
if [ "${1:-}" = "--across-redis" ]; then ACROSS=1; shift; fi
if [ "${1:-}" = "--closed" ]; then CLOSED=$2; shift 2; fi
BIN=$1; shift
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.2; done; }
PORT=$(free_port)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
LOADGEN_EXTRA=()
if [ -n "$ACROSS" ]; then
  REDIS_PORT=$(free_port)
  A_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
  PIDS+=($!)
  wait_port "$REDIS_PORT"
  "$BIN" --listen "127.0.0.1:$A_PORT" --log-level warn --redis "redis://127.0.0.1:$REDIS_PORT" &
  PIDS+=($!)
  wait_port "$A_PORT"
  set -- "$@" --redis "redis://127.0.0.1:$REDIS_PORT"
  LOADGEN_EXTRA=(--publish-addr "127.0.0.1:$A_PORT")
fi
OUT=$(mktemp /tmp/wshub-callgrind.XXXXXX)
if [ -n "$CLOSED" ]; then
  LOAD=(--clients "$CLOSED" --size 64 --mode closed --window 16)
else
  LOAD=(--clients 1000 --size 64 --mode rate --rate 20)
fi
WSHUB_MAX_CONNECTIONS_PER_IP=20000 WSHUB_MAX_PENDING=20000 WSHUB_CONNECTION_RATE_PER_IP=0 valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  "$BIN" --listen "127.0.0.1:$PORT" --log-level warn "$@" 2>/dev/null &
HUB=$!
PIDS+=("$HUB")
wait_port "$PORT"
"$ROOT/target/release/loadgen" --addr "127.0.0.1:$PORT" --pid "$HUB" "${LOAD[@]}" \
  --warmup 1 --duration 5 "${LOADGEN_EXTRA[@]}" >"$OUT.json"
kill -TERM "$HUB"
wait "$HUB" || true
# awk reads to the end: grep -m1 would close the pipe early, and with
# pipefail a binary with symbols (a long annotation) then fails on SIGPIPE.
TOTAL=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen { print; seen = 1 }')
echo "$TOTAL"
if [ -n "$CLOSED" ]; then
  python3 - "$OUT.json" "${TOTAL%% *}" <<'PY'
import json, sys
report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
instructions = int(sys.argv[2].replace(",", ""))
print(f"deliveries {report['deliveries']}, instructions per delivery {instructions / report['deliveries']:.1f}")
PY
fi
rm -f "$OUT.json"
echo "profile: $OUT"
