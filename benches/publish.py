#!/usr/bin/env python3
"""What an HTTP publish costs the hub: on a new connection each time, and
on one persistent (keep-alive) connection.

    python3 benches/publish.py [--baseline PATH] [--count N]

Starts a release wshub (and `--baseline`, an older build, alternating) with
one WebSocket subscriber that reads everything, then sends N (default
5,000) `POST /publish/t` one after another, each waiting for its answer:
first each on its own connection (`Connection: close`), then all on one
connection. Prints the hub's CPU time per publish (from /proc) and the
publisher's round-trip time. A build that closes after every answer gets
the second run on new connections too. Loopback only; every process it
starts is stopped by its PID; about half a minute.
"""
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
TICK = os.sysconf("SC_CLK_TCK")


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def subscriber(port, stop_flag):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ws?topic=t HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.settimeout(0.2)
    while not stop_flag.is_set():
        try:
            if not s.recv(65536):
                return
        except socket.timeout:
            pass


def read_answer(s, pending):
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in pending[:end].split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(pending) >= end + 4 + length:
                answer = bytes(pending[:end + 4 + length])
                del pending[:end + 4 + length]
                return answer
        chunk = s.recv(65536)
        if not chunk:
            return None
        pending += chunk


def publishes(port, count, keep_alive):
    """Round trips of `count` publishes; reconnects whenever the hub closes."""
    body = b"x" * 64
    close = b"" if keep_alive else b"Connection: close\r\n"
    request = (b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\n" + close +
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    times = []
    s, pending = None, bytearray()
    for _ in range(count):
        start = time.perf_counter()
        if s is None:
            s, pending = socket.create_connection(("127.0.0.1", port)), bytearray()
        s.sendall(request)
        answer = read_answer(s, pending)
        if answer is None or not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"publish failed: {answer!r}")
        if not keep_alive or b"Connection: close" in answer:
            s.close()
            s = None
        times.append((time.perf_counter() - start) * 1e6)
    if s is not None:
        s.close()
    return times


def measure(binary, count):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", binary, "--listen", f"127.0.0.1:{port}", "--log-level", "warn"],
                            stderr=subprocess.DEVNULL, env=uncapped_env())
    stop_flag = threading.Event()
    try:
        wait_listening(proc, port, binary)
        reader = threading.Thread(target=subscriber, args=(port, stop_flag))
        reader.start()
        time.sleep(0.5)
        rows = []
        for keep_alive in (False, True):
            before = cpu_seconds(proc.pid)
            times = publishes(port, count, keep_alive)
            cpu = cpu_seconds(proc.pid) - before
            rows.append((keep_alive, cpu / count * 1e6, statistics.median(times)))
        stop_flag.set()
        reader.join()
        return rows
    finally:
        stop(proc)


def main():
    count = int(arg("--count", "5000"))
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub"], cwd=ROOT, check=True)
    binaries = {"wshub": os.path.join(ROOT, "target", "release", "wshub")}
    if "--baseline" in sys.argv:
        binaries["baseline"] = os.path.abspath(arg("--baseline", ""))
    print("| server | publishes | hub CPU per publish (µs) | round trip median (µs) |")
    print("| --- | --- | --- | --- |")
    for name, binary in binaries.items():
        print(f"  {name}", file=sys.stderr)
        for keep_alive, cpu_us, rtt_us in measure(binary, count):
            how = "one connection (keep-alive)" if keep_alive else "a new connection each"
            print(f"| {name} | {how} | {cpu_us:.1f} | {rtt_us:.0f} |")


if __name__ == "__main__":
    main()
