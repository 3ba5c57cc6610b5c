#!/usr/bin/env bash
# Instruction count of a wshub binary for a fixed fan-out, stable on a noisy
# machine: the hub runs under callgrind while the load generator connects
# 1000 clients and publishes 20 messages/s for 5 s (100,000 deliveries,
# startup and upgrades included). Compare two builds in one sitting:
#
#   cargo build --release -p wshub -p loadgen
#   bash benches/callgrind.sh target/release/wshub [extra wshub flags]
#   bash benches/callgrind.sh /path/to/older/wshub
#
# Prints the program's total instructions. Loopback only; stops the hub it
# started by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$1; shift
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OUT=$(mktemp /tmp/wshub-callgrind.XXXXXX)
WSHUB_MAX_CONNECTIONS_PER_IP=20000 WSHUB_MAX_PENDING=20000 valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  "$BIN" --listen "127.0.0.1:$PORT" --log-level warn "$@" 2>/dev/null &
HUB=$!
trap 'kill "$HUB" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
"$ROOT/target/release/loadgen" --addr "127.0.0.1:$PORT" --pid "$HUB" --clients 1000 --size 64 --mode rate \
  --rate 20 --warmup 1 --duration 5 >/dev/null
kill -TERM "$HUB"
wait "$HUB" || true
trap - EXIT
callgrind_annotate "$OUT" 2>/dev/null | grep -m1 "PROGRAM TOTALS"
echo "profile: $OUT"
