#!/usr/bin/env python3
"""Scale-out through Redis: the cost of the Redis hop, in one run.

    python3 benches/redis.py [--quick]

Starts its own redis-server (no persistence) on a free 127.0.0.1 port and
compares, alternating within every repetition and reporting medians:

- fan-out to 1,000 subscribers done locally (one hub, no --redis), the same
  with --redis on (every message also PUBLISHed, nobody else listening), and
  across hubs (publisher on hub A, the 1,000 subscribers on hub B): B's
  deliveries per CPU-second against the local hub's;
- latency at a fixed low rate (100 messages/s), local and across hubs, to
  10 subscribers (where the hop is visible) and to 1,000 (where writing to
  a thousand sockets dominates): the added p50/p99 of the Redis hop;
- a hub with --redis at idle against one without: memory, and CPU spent.

The measured hub is pinned to core 0; the load generator, the other hub
and Redis share core 1 (they do one thousandth of the measured hub's work
at N=1000). Loopback only; every process it starts is stopped by PID.
About 6 minutes (--quick: about 1.5).
"""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import REL, ROOT, fmt_rate, median_of  # noqa: E402
from procs import free_port, stop, uncapped_env, wait_listening  # noqa: E402

QUICK = "--quick" in sys.argv
REPEAT = 1 if QUICK else 5
DURATION = "2" if QUICK else "4"
CLIENTS = "1000"
WSHUB = [os.path.join(REL, "wshub"), "--log-level", "warn", "--max-connections", "20000"]
ENV = uncapped_env()


def start_redis():
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL)
    wait_listening(proc, port, "redis-server")
    return proc, port


def start_hub(core, redis_port=None):
    port = free_port()
    cmd = WSHUB + ["--listen", f"127.0.0.1:{port}"]
    if redis_port:
        cmd += ["--redis", f"redis://127.0.0.1:{redis_port}"]
    proc = subprocess.Popen(["taskset", "-c", core] + cmd, stderr=subprocess.DEVNULL, env=ENV)
    wait_listening(proc, port, "wshub")
    return proc, port


def loadgen(measured, port, args, publish_port=None):
    cmd = ["taskset", "-c", "1", os.path.join(REL, "loadgen"), "--addr", f"127.0.0.1:{port}",
           "--pid", str(measured.pid), "--warmup", "1", "--duration", DURATION] + args
    if publish_port:
        cmd += ["--publish-addr", f"127.0.0.1:{publish_port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr}")
    if out.stderr.strip():
        print(f"  {out.stderr.strip()}", file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(setup, redis_port, args):
    """One loadgen run in a setup: local, local+redis or cross."""
    if setup == "cross":
        a, a_port = start_hub("1", redis_port)
        b, b_port = start_hub("0", redis_port)
        try:
            return loadgen(b, b_port, args, publish_port=a_port)
        finally:
            stop(b)
            stop(a)
    hub, port = start_hub("0", redis_port if setup == "local+redis" else None)
    try:
        return loadgen(hub, port, args)
    finally:
        stop(hub)


def proc_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss, ticks / os.sysconf("SC_CLK_TCK")


def idle(redis_port, seconds):
    """RSS and CPU of an idle hub, with and without --redis, side by side."""
    plain, _ = start_hub("0")
    shared, _ = start_hub("0", redis_port)
    try:
        time.sleep(1)
        before = {name: proc_figures(p.pid) for name, p in (("plain", plain), ("redis", shared))}
        time.sleep(seconds)
        after = {name: proc_figures(p.pid) for name, p in (("plain", plain), ("redis", shared))}
    finally:
        stop(shared)
        stop(plain)
    return {name: (after[name][0], after[name][1] - before[name][1]) for name in after}


def main():
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub", "-p", "loadgen"], cwd=ROOT, check=True)
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.*)", f.read())
        if m:
            cpu = m.group(1)
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"machine: {os.cpu_count()} cores, {cpu}; kernel {os.uname().release}; redis-server {version}",
          file=sys.stderr)
    redis, redis_port = start_redis()
    try:
        setups = ["local", "local+redis", "cross"]
        fanout = {s: [] for s in setups}
        latency = {(s, n): [] for s in ("local", "cross") for n in ("10", CLIENTS)}
        for rep in range(REPEAT):
            order = setups if rep % 2 == 0 else setups[::-1]
            for setup in order:
                args = ["--clients", CLIENTS, "--mode", "closed", "--window", "64", "--size", "64"]
                fanout[setup].append(run(setup, redis_port, args))
            for n in ("10", CLIENTS):
                for setup in (("local", "cross") if rep % 2 == 0 else ("cross", "local")):
                    args = ["--clients", n, "--mode", "rate", "--rate", "100", "--size", "64"]
                    latency[(setup, n)].append(run(setup, redis_port, args))
            print(f"  repetition {rep + 1}/{REPEAT} done", file=sys.stderr)
        idle_figures = idle(redis_port, 10 if QUICK else 30)
    finally:
        stop(redis)

    fan = {s: median_of(r) for s, r in fanout.items()}
    base = fan["local"]["deliveries_per_cpu_s"]
    print(f"\n### Fan-out to {CLIENTS} subscribers, 64-byte messages, closed loop (window 64), "
          f"medians of {REPEAT}\n")
    print("| setup | deliveries/s | measured hub's CPU-s | deliveries per CPU-s | vs local | lost | reordered |")
    print("|---|---|---|---|---|---|---|")
    labels = {"local": "local (one hub, no --redis)", "local+redis": "local, --redis on (each message also PUBLISHed)",
              "cross": "across hubs: publisher on A, subscribers on B (B measured)"}
    for s in setups:
        r = fan[s]
        print(f"| {labels[s]} | {fmt_rate(r['deliveries_per_s'])} | {r['server_cpu_s']:.2f} | "
              f"{fmt_rate(r['deliveries_per_cpu_s'])} | {r['deliveries_per_cpu_s'] / base:.2f}x | "
              f"{r['lost']} | {r['reordered']} |")

    lat = {k: median_of(r) for k, r in latency.items()}
    print(f"\n### Latency at 100 messages/s, medians of {REPEAT}\n")
    print("| subscribers | setup | p50 | p99 | p99.9 |")
    print("|---|---|---|---|---|")
    for n in ("10", CLIENTS):
        local, cross = lat[("local", n)], lat[("cross", n)]
        for s, r in (("local", local), ("cross", cross)):
            print(f"| {n} | {labels[s]} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {r['p999_ms']:.3f} ms |")
        print(f"| {n} | added by the Redis hop | {cross['p50_ms'] - local['p50_ms']:+.3f} ms | "
              f"{cross['p99_ms'] - local['p99_ms']:+.3f} ms | {cross['p999_ms'] - local['p999_ms']:+.3f} ms |")

    seconds = 10 if QUICK else 30
    print(f"\n### Idle hub, {seconds} s, no clients\n")
    print("| hub | RSS | CPU over the interval |")
    print("|---|---|---|")
    for name, label in (("plain", "no --redis"), ("redis", "--redis (two links, keepalive PINGs)")):
        rss, cpu_s = idle_figures[name]
        print(f"| {label} | {rss} KiB | {cpu_s * 1000:.0f} ms |")
    print(f"| difference | {idle_figures['redis'][0] - idle_figures['plain'][0]:+d} KiB | "
          f"{(idle_figures['redis'][1] - idle_figures['plain'][1]) * 1000:+.0f} ms |")


if __name__ == "__main__":
    main()
