#!/usr/bin/env python3
"""wshub vs the tokio hub, fan-out and memory, in one run.

    python3 benches/fanout.py [--quick] [--extra NAME=PATH ...] [--no-idle] [--auth] [--tls] [--steady]

Builds wshub, benches/tokio-hub and benches/loadgen in release, then runs
each scenario against each server, alternating servers within every
repetition (so drift on a shared machine hits all alike) and reporting
medians, with the server pinned to core 0 and the load generator to core 1.
Prints Markdown tables. `--extra NAME=PATH` adds another wshub binary (an
older build, a variant) to every wshub row, for before/after comparisons in
one run. `--auth` adds a `wshub-jwt` column: the same binary with an HS256
key, every client upgrading with a token (verification costs only at the
upgrade; the table shows the fan-out does not notice). `--tls` runs both
hubs over TLS instead (a P-256 certificate made with `openssl`; the tokio
version through tokio-rustls, same ring provider and defaults), for the
N=1000 rows and idle memory. Steady streams (fixed 200 and 1,000 msg/s to 1,000
clients, and 50 where no hub is busy all the time) are measured with `--write-delay` 0, 5 and 20 beside the tokio
version, as server CPU per delivery and latency; `--steady` runs only
those. Loopback only; every process it starts is stopped by PID. About
6.5 minutes (--quick: about 1.5; --steady: about 3; each --extra adds about
half).
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokens  # noqa: E402
from procs import free_port, stop, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
QUICK = "--quick" in sys.argv
NO_IDLE = "--no-idle" in sys.argv
AUTH = "--auth" in sys.argv
TLS = "--tls" in sys.argv
STEADY_ONLY = "--steady" in sys.argv
# Extra load generator arguments for every run (--tls-ca in TLS mode).
LOADGEN_EXTRA = []
# The request target each server's clients upgrade with.
PATHS = {}
EXTRA = [a.split("=", 1) for i, a in enumerate(sys.argv) if i > 0 and sys.argv[i - 1] == "--extra"]
REPEAT = 1 if QUICK else 3
DURATION = "2" if QUICK else "3"

SERVERS = {
    "wshub": [os.path.join(REL, "wshub"), "--log-level", "warn", "--max-connections", "20000"],
    "tokio": [os.path.join(REL, "tokio-hub")],
    "tokio-mt": [os.path.join(REL, "tokio-hub"), "--runtime", "multi"],
    "tokio-4k": [os.path.join(REL, "tokio-hub"), "--buffers", "4096"],
}
# Coalesced writes, for the steady-stream rows.
WRITE_DELAYS = [5, 20]
for _ms in WRITE_DELAYS:
    SERVERS[f"wshub-wd{_ms}"] = SERVERS["wshub"] + ["--write-delay", str(_ms)]


def start(server):
    port = free_port()
    cmd = SERVERS[server] + ["--listen", f"127.0.0.1:{port}"]
    # The multi-thread runtime gets both cores; everything else one.
    cores = "0,1" if server == "tokio-mt" else "0"
    # The load generator opens up to 20,000 clients from 4 addresses.
    proc = subprocess.Popen(["taskset", "-c", cores] + cmd, stderr=subprocess.DEVNULL, env=uncapped_env())
    wait_listening(proc, port, server)
    return proc, port


def loadgen(server, args):
    proc, port = start(server)
    try:
        out = subprocess.run(
            ["taskset", "-c", "1", os.path.join(REL, "loadgen"), "--addr", f"127.0.0.1:{port}",
             "--pid", str(proc.pid)] + args + LOADGEN_EXTRA + (["--path", PATHS[server]] if server in PATHS else []),
            capture_output=True, text=True, timeout=300)
    finally:
        stop(proc)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed against {server}: {out.stderr}")
    if out.stderr.strip():
        print(f"  [{server}] {out.stderr.strip()}", file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs):
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    result = {k: statistics.median(r[k] for r in runs) for k in keys}
    result["lost"] = sum(r["lost"] for r in runs)
    result["reordered"] = sum(r["reordered"] for r in runs)
    result["saturated"] = any(r.get("loadgen_saturated") for r in runs)
    return result


def fmt_rate(v):
    return f"{v / 1e6:.2f} M"


WSHUB_VARIANTS = []


def main():
    for name, path in EXTRA:
        SERVERS[name] = [os.path.abspath(path)] + SERVERS["wshub"][1:]
        WSHUB_VARIANTS.append(name)
    if AUTH:
        keys = tokens.make_keys(tempfile.mkdtemp(prefix="wshub-fanout-"))
        SERVERS["wshub-jwt"] = SERVERS["wshub"] + ["--jwt-secret-file", keys["secret"]]
        claims = {"sub": "bench", "subscribe": ["*"], "publish": ["*"], "exp": int(time.time()) + 86400}
        PATHS["wshub-jwt"] = "/ws?token=" + tokens.hs256(tokens.secret_of(keys), claims)
        WSHUB_VARIANTS.append("wshub-jwt")
    if TLS:
        certs = tempfile.mkdtemp(prefix="wshub-fanout-tls-")
        cert, key = f"{certs}/cert.pem", f"{certs}/key.pem"
        # CA:FALSE: rustls clients refuse a CA certificate as a server's.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        for name in ["wshub", "tokio", "tokio-4k"] + WSHUB_VARIANTS:
            SERVERS[name] = SERVERS[name] + ["--tls-cert", cert, "--tls-key", key]
        LOADGEN_EXTRA.extend(["--tls-ca", cert])
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub", "-p", "tokio-hub", "-p", "loadgen"],
                   cwd=ROOT, check=True)
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.*)", f.read())
        if m:
            cpu = m.group(1)
    print(f"machine: {os.cpu_count()} cores, {cpu}; kernel {os.uname().release}", file=sys.stderr)

    rows = []

    def load_row(label, args, servers=("wshub", "tokio")):
        servers = [servers[0]] + WSHUB_VARIANTS + list(servers[1:])
        runs = {s: [] for s in servers}
        # alternate servers within each repetition so drift hits all alike
        for rep in range(REPEAT):
            for s in servers:
                print(f"  {label}: {s} ({rep + 1}/{REPEAT})", file=sys.stderr)
                runs[s].append(loadgen(s, args))
        results = {s: median_of(runs[s]) for s in servers}
        base = results.get("tokio")
        for s in servers:
            r = results[s]
            cpu_ratio = p99_ratio = ""
            if s != "tokio" and base and base["deliveries_per_cpu_s"] > 0:
                cpu_ratio = f"{r['deliveries_per_cpu_s'] / base['deliveries_per_cpu_s']:.2f}x"
                p99_ratio = f"{r['p99_ms'] / base['p99_ms']:.2f}x"
            note = f"{int(r['lost'])}/{int(r['reordered'])}" + (" (loadgen saturated)" if r["saturated"] else "")
            rows.append([label, s, fmt_rate(r["deliveries_per_s"]), fmt_rate(r["deliveries_per_cpu_s"]), cpu_ratio,
                         f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", p99_ratio, f"{r['rss_kib'] / 1024:.1f} MiB", note])
        return results

    def steady_rows():
        """A sensor-like stream: fixed rates, 1,000 clients, with and without
        coalesced writes; server CPU per delivery against the no-delay run."""
        table = []
        servers = ("wshub",) + tuple(f"wshub-wd{ms}" for ms in WRITE_DELAYS) + ("tokio",)
        # 50 msg/s: a rate at which the hub without a delay is not busy all
        # the time; at 200 and 1,000 it is, and a hub that lags behind
        # coalesces by itself.
        for rate in (50, 200, 1000):
            results = load_row(f"N=1000, 64 B, steady {rate} msg/s",
                               ["--clients", "1000", "--size", "64", "--mode", "rate", "--rate", str(rate),
                                "--warmup", "1", "--duration", DURATION], servers=servers)
            base = results["wshub"]
            for name, r in results.items():
                us = 1e6 / r["deliveries_per_cpu_s"] if r["deliveries_per_cpu_s"] > 0 else float("nan")
                base_us = 1e6 / base["deliveries_per_cpu_s"]
                delay = "n/a" if name == "tokio" else (name.split("-wd")[1] + " ms" if "-wd" in name else "0")
                note = f"{int(r['lost'])}/{int(r['reordered'])}" + (" (loadgen saturated)" if r["saturated"] else "")
                busy = f"{100 * r['server_cpu_s'] / r['wall_s']:.0f}%"
                table.append([f"{rate} msg/s", name, delay, f"{us:.2f}", f"{us / base_us:.2f}x", busy,
                              f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p99_ms'] - base['p99_ms']:+.2f}", note])
        print("\n| steady stream, N=1000, 64 B | server | --write-delay | server CPU per delivery (µs) | vs wshub without delay | server busy | p50 ms | p99 ms | p99 minus wshub's without delay (ms) | lost/reordered |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in table:
            print("| " + " | ".join(r) + " |")

    if STEADY_ONLY:
        steady_rows()
        return
    common = ["--mode", "closed", "--window", "16", "--warmup", "1", "--duration", DURATION]
    if TLS:
        load_row("TLS, N=1000, 64 B, W=16", ["--clients", "1000", "--size", "64"] + common)
        load_row("TLS, N=1000, 1 KiB, W=16", ["--clients", "1000", "--size", "1024"] + common)
        print("\n| scenario | server | deliveries/s | deliveries per server CPU-s | vs tokio | p50 ms | p99 ms | p99 vs tokio | server RSS | lost/reordered |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        if not NO_IDLE:
            print("\n| idle TLS connections | server | RSS before | RSS after | bytes per connection |")
            print("| --- | --- | --- | --- | --- |")
            for srv in ["wshub", "tokio"]:
                print(f"  idle TLS 10000: {srv}", file=sys.stderr)
                r = loadgen(srv, ["--clients", "10000", "--mode", "idle"])
                print(f"| 10000 | {srv} | {r['rss_before_kib'] / 1024:.1f} MiB | {r['rss_kib'] / 1024:.1f} MiB | {r['bytes_per_conn']:.0f} |")
        return
    main_run = load_row("N=1000, 64 B, W=16", ["--clients", "1000", "--size", "64"] + common,
                        servers=("wshub", "tokio", "tokio-mt"))
    load_row("N=100, 64 B, W=16", ["--clients", "100", "--size", "64"] + common)
    load_row("N=1000, 1 KiB, W=16", ["--clients", "1000", "--size", "1024"] + common)
    load_row("N=1000, 16 KiB, W=16", ["--clients", "1000", "--size", "16384"] + common)
    load_row("N=10000, 64 B, W=16", ["--clients", "10000", "--size", "64"] + common)

    # Latency at equal load: half of tokio's closed-loop maximum, then a
    # tenth of that, where neither server is busy.
    rate = main_run["tokio"]["deliveries_per_s"] / 2 / 1000
    for r in (rate, rate / 10):
        load_row(f"N=1000, 64 B, fixed {r:.0f} msg/s",
                 ["--clients", "1000", "--size", "64", "--mode", "rate", "--rate", f"{r:.0f}",
                  "--warmup", "1", "--duration", DURATION])

    print("\n| scenario | server | deliveries/s | deliveries per server CPU-s | vs tokio | p50 ms | p99 ms | p99 vs tokio | server RSS | lost/reordered |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    steady_rows()

    if NO_IDLE:
        return
    print("\n| idle connections | server | RSS before | RSS after | bytes per connection |")
    print("| --- | --- | --- | --- | --- |")
    for n in ([10000] if QUICK else [10000, 19000]):
        for s in ["wshub"] + WSHUB_VARIANTS + ["tokio", "tokio-4k"]:
            print(f"  idle {n}: {s}", file=sys.stderr)
            r = loadgen(s, ["--clients", str(n), "--mode", "idle"])
            print(f"| {n} | {s} | {r['rss_before_kib'] / 1024:.1f} MiB | {r['rss_kib'] / 1024:.1f} MiB | {r['bytes_per_conn']:.0f} |")


if __name__ == "__main__":
    main()
