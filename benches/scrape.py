#!/usr/bin/env python3
"""What one `/metrics` scrape costs as the hub grows, and whether memory
comes back after the clients leave.

    python3 benches/scrape.py [--baseline PATH] [--clients N]

Starts a release wshub (and `--baseline`, an older build, in the same run,
alternating), then times 200 scrapes of `GET /metrics` (a new connection
each, as Prometheus without keep-alive) with no clients and with N idle
WebSocket clients (default 10,000). Prints the median and p99 time of a
scrape as the scraper sees it, then the server's RSS before the N clients,
with them, and 3 s after they all left. Loopback only; every process it
starts is stopped by its PID; about 1 minute.
"""
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
SCRAPES = 200


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def open_idle(port, n):
    """N upgraded WebSocket clients that stay silent."""
    socks = []
    request = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("upgrade refused")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"upgrade refused: {head[:40]!r}")
    return socks


def scrape(port):
    start = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    elapsed = (time.perf_counter() - start) * 1000
    if not body.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"scrape failed: {body[:60]!r}")
    return elapsed


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(binary, clients, memory):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", binary, "--listen", f"127.0.0.1:{port}", "--log-level", "warn",
                             "--max-connections", "20000"], stderr=subprocess.DEVNULL, env=uncapped_env())
    try:
        wait_listening(proc, port, binary)
        time.sleep(0.5)
        before = rss(proc.pid)
        socks = open_idle(port, clients)
        time.sleep(1)
        times = sorted(scrape(port) for _ in range(SCRAPES))
        with_them = rss(proc.pid)
        for s in socks:
            s.close()
        time.sleep(3)
        memory.append((before, with_them, rss(proc.pid)))
        return statistics.median(times), times[int(len(times) * 0.99) - 1]
    finally:
        stop(proc)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients = int(arg("--clients", "10000"))
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub"], cwd=ROOT, check=True)
    binaries = {"wshub": os.path.join(ROOT, "target", "release", "wshub")}
    if "--baseline" in sys.argv:
        binaries["baseline"] = os.path.abspath(arg("--baseline", ""))
    print("| idle clients | server | scrape median ms | scrape p99 ms |")
    print("| --- | --- | --- | --- |")
    memory = {}
    for n in (0, clients):
        for name, binary in binaries.items():
            print(f"  {n} clients: {name}", file=sys.stderr)
            memory[name] = []
            median, p99 = measure(binary, n, memory[name])
            print(f"| {n} | {name} | {median:.2f} | {p99:.2f} |")
    mib = lambda b: f"{b / 1048576:.1f} MiB"
    print()
    print(f"| server | RSS before | with {clients} idle clients | 3 s after they left |")
    print("| --- | --- | --- | --- |")
    for name, samples in memory.items():
        before, with_them, after = samples[-1]
        print(f"| {name} | {mib(before)} | {mib(with_them)} | {mib(after)} |")


if __name__ == "__main__":
    main()
