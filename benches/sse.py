#!/usr/bin/env python3
"""Server-Sent Events and history: fan-out, idle memory, history overhead,
a resume storm, and what history costs the WebSocket fan-out.

    python3 benches/sse.py [--quick]

Builds wshub and benches/loadgen in release. Messages are JSON
(`loadgen --payload json`), since SSE carries text. Medians of 3 (--quick:
1), variants alternating within each repetition, the hub on core 0 and the
load generator on core 1:

- Fan-out at N=1,000, 64 B and 1 KiB, closed loop (16 in flight): the same
  hub read through `/ws` and through `/sse` (`loadgen --sse`; the
  publisher stays a WebSocket client): deliveries per server CPU-second.
- Idle: RSS per connection of 5,000 WebSocket and 5,000 SSE clients.
- History overhead: one WebSocket client publishes 100,000 messages of 64 B
  (its own echo read back) into a hub with `--history 100000` and one
  with history off; the RSS difference per retained message, less the
  payload.
- Resume storm: 100 messages published, then 10,000 SSE clients connect at
  once with `Last-Event-ID` 100 messages back: time until the last has all
  100, server CPU, peak RSS, and whether any arrived out of order.
- The WebSocket fan-out (N=1,000, 64 B, closed loop) with `--history` off
  and with `--history 1000`.

Loopback only; every process it starts is stopped by PID. About 6 minutes
(--quick: 2).
"""
import http.client
import json
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
DURATION = "2" if QUICK else "3"
HUB = [os.path.join(REL, "wshub"), "--log-level", "warn", "--max-connections", "20000"]
LOADGEN = os.path.join(REL, "loadgen")


def start(extra=()):
    return start_pinned(HUB + list(extra))


def loadgen(port, pid, args):
    return run_loadgen(LOADGEN, port, pid, ["--payload", "json"] + args)


def run(hub_args, args):
    proc, port = start(hub_args)
    try:
        return loadgen(port, proc.pid, args)
    finally:
        stop(proc)


def alternate(variants):
    """variants: name -> (hub args, loadgen args); medians of each key."""
    runs = {name: [] for name in variants}
    for i in range(REPEAT):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in names:
            runs[name].append(run(*variants[name]))
    out = {name: medians(rs) for name, rs in runs.items()}
    return out


def publish_json(port, count):
    """Publishes `count` JSON messages over one keep-alive connection;
    returns the last id."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    last = None
    for i in range(count):
        body = '{"seq":%020d,"ts":%020d,"pad":"%s"}' % (i, 0, "x" * 10)
        conn.request("POST", "/publish/all", body=body)
        last = json.loads(conn.getresponse().read())["id"]
    conn.close()
    return last


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub", "-p", "loadgen"], cwd=ROOT, check=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} cores, {cpu}. Medians of {REPEAT}.\n")

    print("| fan-out, N=1000, W=16 | WebSocket deliveries per server CPU-s | SSE | SSE vs WebSocket | SSE p99 | lost |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in ("64", "1024"):
        load = ["--clients", "1000", "--size", size, "--mode", "closed", "--window", "16", "--warmup", "1",
                "--duration", DURATION]
        r = alternate({"ws": ([], load), "sse": ([], load + ["--sse"])})
        ws, sse = r["ws"], r["sse"]
        sat = " (loadgen saturated)" if sse["saturated"] or ws["saturated"] else ""
        print(f"| {size} B | {ws['deliveries_per_cpu_s'] / 1e6:.3f} M | {sse['deliveries_per_cpu_s'] / 1e6:.3f} M{sat} | "
              f"{sse['deliveries_per_cpu_s'] / ws['deliveries_per_cpu_s']:.2f}x | {sse['p99_ms']:.2f} ms | "
              f"{ws['lost'] + sse['lost']} |", flush=True)

    print("\n| idle clients (5,000) | bytes per connection (RSS) |")
    print("| --- | --- |")
    idle = ["--clients", "5000", "--size", "64", "--mode", "idle"]
    r = alternate({"ws": ([], idle), "sse": ([], idle + ["--sse"])})
    print(f"| WebSocket | {r['ws']['bytes_per_conn']:.0f} |")
    print(f"| SSE | {r['sse']['bytes_per_conn']:.0f} |", flush=True)

    messages = 100_000
    load = ["--clients", "1", "--size", "64", "--mode", "rate", "--rate", str(messages // 5), "--warmup", "0",
            "--duration", "5"]
    r = alternate({"off": ([], load), "on": (["--history", str(messages), "--history-bytes", str(1 << 30)], load)})
    kept = r["on"]["deliveries"]
    per = (r["on"]["rss_kib"] - r["off"]["rss_kib"]) * 1024 / kept
    print(f"\nHistory: {kept:.0f} messages of 64 B retained: RSS {r['off']['rss_kib'] / 1024:.1f} MiB without, "
          f"{r['on']['rss_kib'] / 1024:.1f} MiB with: {per:.0f} bytes per message, {per - 66:.0f} beyond the "
          f"64-byte payload and its 2-byte frame header.", flush=True)

    print("\n| resume storm: 10,000 SSE clients, Last-Event-ID 100 back | seconds | server CPU-s | peak RSS | complete | out of order |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = []
    for _ in range(REPEAT):
        proc, port = start(["--history", "1000"])
        try:
            last = publish_json(port, 100)
            epoch, seq = last.split("-")
            since = f"{epoch}-{int(seq) - 100}"
            results.append(loadgen(port, proc.pid, ["--clients", "10000", "--size", "64", "--sse", "--mode", "resume",
                                                    "--last-event-id", since, "--expect", "100"]))
        finally:
            stop(proc)
    med = {k: statistics.median(r[k] for r in results) for k in ("seconds", "server_cpu_s", "peak_rss_kib")}
    print(f"| median of {REPEAT} | {med['seconds']:.2f} | {med['server_cpu_s']:.2f} | "
          f"{med['peak_rss_kib'] / 1024:.1f} MiB | {min(r['complete'] for r in results)} of 10000 | "
          f"{sum(r['out_of_order'] for r in results)} |", flush=True)

    print("\n| WebSocket fan-out, N=1000, 64 B, W=16 | deliveries per server CPU-s | vs history off | p99 |")
    print("| --- | --- | --- | --- |")
    load = ["--clients", "1000", "--size", "64", "--mode", "closed", "--window", "16", "--warmup", "1",
            "--duration", DURATION]
    r = alternate({"off": ([], load), "on": (["--history", "1000"], load)})
    for name in ("off", "on"):
        print(f"| --history {'1000' if name == 'on' else 'off'} | {r[name]['deliveries_per_cpu_s'] / 1e6:.3f} M | "
              f"{r[name]['deliveries_per_cpu_s'] / r['off']['deliveries_per_cpu_s']:.2f}x | {r[name]['p99_ms']:.2f} ms |")


if __name__ == "__main__":
    main()
