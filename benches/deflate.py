#!/usr/bin/env python3
"""permessage-deflate: what it saves on the wire and what it costs the hub.

    python3 benches/deflate.py [--quick]

Builds wshub and benches/loadgen in release. Every message is JSON
telemetry (`loadgen --payload json`: a gateway's sensor readings, 1 KiB,
different in every message). Each scenario runs plain and with
`loadgen --deflate` (every client negotiates compression and inflates every
delivery, as a browser would), alternating within each repetition, and
reports medians of 3 (--quick: 1):

- N=1,000 at a fixed 50 and 100 msg/s (50,000 and 100,000 deliveries a
  second; inflating every delivery takes most of the load generator's
  core at 100): bytes on the wire per delivery, deliveries per server
  CPU-second, p50/p99 latency. (A closed loop is not shown: inflating
  every delivery saturates the load generator's core long before the hub,
  which would flatter compression.)
- N=1 (one sender, one receiver, closed loop): the cost per message when
  nobody shares the compression.
- Idle memory: RSS per connection for 5,000 clients, plain and with
  compression negotiated, measured after a burst of compressed traffic
  (so the shared compressor and inflater exist already).

The hub is pinned to core 0, the load generator to core 1. Loopback only;
every process it starts is stopped by PID. About 3 minutes (--quick: 1).
"""
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import medians, run_loadgen, start_pinned, stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
QUICK = "--quick" in sys.argv
REPEAT = 1 if QUICK else 3
DURATION = "2" if QUICK else "4"
HUB = [os.path.join(REL, "wshub"), "--log-level", "warn", "--max-connections", "20000"]
SIZE = "1024"
LOADGEN = os.path.join(REL, "loadgen")


def start():
    return start_pinned(HUB)


def loadgen(port, pid, args):
    return run_loadgen(LOADGEN, port, pid, ["--payload", "json", "--size", SIZE] + args)


def run(args):
    proc, port = start()
    try:
        return loadgen(port, proc.pid, args)
    finally:
        stop(proc)


def idle(deflate):
    """RSS per connection of 5,000 idle clients, on a hub that has already
    compressed and inflated (its shared state exists), so what is left is
    what a connection costs."""
    proc, port = start()
    try:
        warm = ["--clients", "10", "--mode", "closed", "--warmup", "0.2", "--duration", "0.5", "--deflate"]
        loadgen(port, proc.pid, warm)
        extra = ["--deflate"] if deflate else []
        return loadgen(port, proc.pid, ["--clients", "5000", "--mode", "idle"] + extra)
    finally:
        stop(proc)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub", "-p", "loadgen"], cwd=ROOT, check=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} cores, {cpu}. Medians of {REPEAT}; 1 KiB JSON telemetry messages.\n")
    scenarios = [
        ("N=1000, 50 msg/s", ["--clients", "1000", "--mode", "rate", "--rate", "50", "--warmup", "1",
                               "--duration", DURATION]),
        ("N=1000, 100 msg/s", ["--clients", "1000", "--mode", "rate", "--rate", "100", "--warmup", "1",
                               "--duration", DURATION]),
        ("N=1, closed loop", ["--clients", "1", "--mode", "closed", "--window", "16", "--warmup", "1",
                              "--duration", DURATION]),
    ]
    print("| scenario | wire bytes per delivery | vs plain | deliveries per s | deliveries per server CPU-s | vs plain "
          "| p50 | p99 | lost |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, args in scenarios:
        runs = {"plain": [], "deflate": []}
        for i in range(REPEAT):
            order = ["plain", "deflate"] if i % 2 == 0 else ["deflate", "plain"]
            for kind in order:
                runs[kind].append(run(args + (["--deflate"] if kind == "deflate" else [])))
        plain, deflate = medians(runs["plain"]), medians(runs["deflate"])
        for kind, r in (("plain", plain), ("deflate", deflate)):
            wire = r["wire_bytes_per_delivery"] / plain["wire_bytes_per_delivery"]
            speed = r["deliveries_per_cpu_s"] / plain["deliveries_per_cpu_s"]
            sat = " (loadgen saturated)" if r["saturated"] else ""
            print(f"| {label}, {kind} | {r['wire_bytes_per_delivery']:.0f} | {wire:.2f}x | "
                  f"{r['deliveries_per_s'] / 1e3:.0f} k | "
                  f"{r['deliveries_per_cpu_s'] / 1e6:.3f} M{sat} | {speed:.2f}x | {r['p50_ms']:.2f} ms | "
                  f"{r['p99_ms']:.2f} ms | {r['lost']} |", flush=True)
    print()
    print("| idle clients (5,000) | bytes per connection (RSS) |")
    print("| --- | --- |")
    for deflate in (False, True):
        per = statistics.median(idle(deflate)["bytes_per_conn"] for _ in range(REPEAT))
        print(f"| {'compression negotiated' if deflate else 'plain'} | {per:.0f} |", flush=True)


if __name__ == "__main__":
    main()
