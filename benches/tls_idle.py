#!/usr/bin/env python3
"""Memory per idle connection, plain and over TLS.

    python3 benches/tls_idle.py [N]        # default N = 10000

Starts the release wshub (pinned to core 0) once plain and once with a
P-256 certificate, opens N WebSocket clients from Python (TLS 1.3 handshake
first for the TLS run), leaves them idle, and reads the hub's RSS from
/proc before and after: (after - before) / N is what an idle client costs.
Loopback only; the hub is stopped by its PID. About 1 minute for N = 10000.
"""

import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSHUB = os.path.join(ROOT, "target", "release", "wshub")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
REQUEST = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(extra, tls):
    port = free_port()
    env = uncapped_env()
    server = subprocess.Popen(["taskset", "-c", "0", WSHUB, "--listen", f"127.0.0.1:{port}", "--log-level", "warn",
                               "--max-connections", "20000"] + extra, env=env, stderr=subprocess.DEVNULL)
    clients = []
    try:
        wait_listening(server, port, "wshub")
        time.sleep(0.5)
        before = rss_kib(server.pid)
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        for _ in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            if context:
                s = context.wrap_socket(s, server_hostname="localhost")
            s.sendall(REQUEST)
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head[:40]
            clients.append(s)
        time.sleep(1.0)
        after = rss_kib(server.pid)
        return before, after
    finally:
        for s in clients:
            s.close()
        server.terminate()
        server.wait()


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (N + 1000, N + 1000))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub"], cwd=ROOT, check=True)
    certs = tempfile.mkdtemp(prefix="wshub-tls-idle-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", f"{certs}/key.pem", "-out", f"{certs}/cert.pem"],
                   check=True, capture_output=True)
    print(f"| {N} idle clients | RSS before | RSS after | bytes per connection |")
    print("| --- | ---: | ---: | ---: |")
    for name, extra, tls in [("plain ws://", [], False),
                             ("TLS wss://", ["--tls-cert", f"{certs}/cert.pem", "--tls-key", f"{certs}/key.pem"], True)]:
        before, after = run(extra, tls)
        print(f"| {name} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {(after - before) * 1024 / N:,.0f} |")


if __name__ == "__main__":
    main()
