#!/usr/bin/env python3
"""Upgrades per second with and without token verification, and over TLS.

    python3 benches/upgrades.py [--quick]

Runs the release wshub pinned to core 0, once per scenario: no keys (no
token), HS256, ES256 and EdDSA (keys and tokens from benches/tokens.py,
which uses the `openssl` command), and a full TLS handshake (a P-256
certificate from `openssl`, no session resumption) before the upgrade. Clients on core 1 open connections one
after another, upgrade with `?token=`, and reset the connection (SO_LINGER 0,
so no TIME_WAIT piles up). The figure that matters is the server's CPU per
upgrade, read from /proc; scenarios alternate within each repetition and
the table shows medians. About 1 minute (--quick: 20 s).
"""

import multiprocessing
import os
import re
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokens  # noqa: E402
from procs import free_port, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSHUB = os.path.join(ROOT, "target", "release", "wshub")
QUICK = "--quick" in sys.argv
REPEAT = 1 if QUICK else 3
DURATION = 2.0 if QUICK else 4.0
CLIENTS = 2


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(port, path, until, counter, tls):
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    done = 0
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    while time.time() < until:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if context:
            # A new handshake each time: no session is offered for resumption.
            s = context.wrap_socket(s, server_hostname="localhost")
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"upgrade refused: {head[:60]!r}")
        s.close()
        done += 1
    with counter.get_lock():
        counter.value += done


def run(args, path, tls=False):
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", WSHUB, "--listen", f"127.0.0.1:{port}", "--log-level", "warn"]
                              + args, stderr=subprocess.DEVNULL, env=uncapped_env())
    try:
        wait_listening(server, port, "wshub")
        counter = multiprocessing.Value("q", 0)
        cpu_before, wall_before = cpu_seconds(server.pid), time.time()
        until = wall_before + DURATION
        procs = [multiprocessing.Process(target=client, args=(port, path, until, counter, tls)) for _ in range(CLIENTS)]
        for p in procs:
            p.start()
            os.sched_setaffinity(p.pid, {1})
        for p in procs:
            p.join()
        cpu, wall = cpu_seconds(server.pid) - cpu_before, time.time() - wall_before
        return {"upgrades": counter.value, "per_s": counter.value / wall, "per_cpu_s": counter.value / max(cpu, 1e-9),
                "cpu_us": cpu / max(counter.value, 1) * 1e6}
    finally:
        server.terminate()
        server.wait()


def main():
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub"], cwd=ROOT, check=True)
    with open("/proc/cpuinfo") as f:
        cpu = (re.search(r"model name\s*:\s*(.*)", f.read()) or ["", "unknown"])[1]
    keys = tokens.make_keys(tempfile.mkdtemp(prefix="wshub-upgrades-"))
    claims = {"sub": "bench", "subscribe": ["*"], "publish": ["*"], "exp": int(time.time()) + 3600}
    scenarios = [
        ("no token (no keys)", [], "/ws"),
        ("HS256", ["--jwt-secret-file", keys["secret"]], "/ws?token=" + tokens.hs256(tokens.secret_of(keys), claims)),
        ("ES256", ["--jwt-public-key-file", keys["ec.pub.pem"]], "/ws?token=" + tokens.es256(keys["ec.pem"], claims)),
        ("EdDSA", ["--jwt-public-key-file", keys["ed.pub.pem"]], "/ws?token=" + tokens.eddsa(keys["ed.pem"], claims)),
    ]
    certs = tempfile.mkdtemp(prefix="wshub-upgrades-tls-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", f"{certs}/key.pem", "-out", f"{certs}/cert.pem"],
                   check=True, capture_output=True)
    tls_args = ["--tls-cert", f"{certs}/cert.pem", "--tls-key", f"{certs}/key.pem"]
    scenarios.append(("TLS 1.3 full handshake, no token", tls_args, "/ws"))
    runs = {name: [] for name, _, _ in scenarios}
    for _ in range(REPEAT):
        for name, args, path in scenarios:
            runs[name].append(run(args, path, tls=args is tls_args))
    print(f"machine: {os.cpu_count()} cores, {cpu}; wshub on core 0, {CLIENTS} Python clients on core 1; "
          f"{REPEAT} x {DURATION:.0f} s, medians\n")
    print("| token | upgrades/s (wall) | upgrades per server CPU-second | server CPU per upgrade |")
    print("|---|---:|---:|---:|")
    for name, _, _ in scenarios:
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        print(f"| {name} | {med['per_s']:,.0f} | {med['per_cpu_s']:,.0f} | {med['cpu_us']:.0f} µs |")


if __name__ == "__main__":
    main()
