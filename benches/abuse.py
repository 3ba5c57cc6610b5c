#!/usr/bin/env python3
"""wshub under attack, against a release build: memory and fairness.

    python3 benches/abuse.py [--baseline PATH]

1. Memory pressure: 200 clients (4 KiB receive buffers) each send
   106 x 65,000-byte messages to themselves and never read. Prints the
   server's RSS before, at its peak (sampled every 50 ms) and 5 s after
   every attacker is gone.
2. Fairness: a quiet pair exchanges 50 messages per second (client A to
   client B, its own topic) for 5 s, without and then with one flooder
   (64-byte messages and zero-length continuation frames, as fast as the hub
   reads them). Prints the quiet messages' p50/p99 latency.
3. A flood through Redis (when `redis-server` is installed): the hub with
   `--redis`, 1,000 subscribers of a topic (the load generator's sink mode,
   reading everything) and a backend PUBLISHing 16-byte messages to that
   topic's channel as fast as Redis takes them; the quiet pair as in 2.

`--baseline PATH` runs the same against another wshub binary (an older
build) in the same run. Loopback only; every process it starts is stopped
by PID; about 1.5 minutes per binary.
"""
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop, uncapped_env, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def masked(opcode_byte, payload, mask=b"\x11\x22\x33\x44"):
    n = len(payload)
    if n < 126:
        head = bytes([opcode_byte, 0x80 | n])
    elif n < 65536:
        head = bytes([opcode_byte, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([opcode_byte, 0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + body


def connect(port, path, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("upgrade refused")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head[:40]!r}")
    return s


def read_frame(s, buf):
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126 and len(buf) >= 4:
                n, off = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127 and len(buf) >= 10:
                n, off = struct.unpack(">Q", buf[2:10])[0], 10
            if n < 126 or off > 2:
                if len(buf) >= off + n:
                    frame = (buf[0] & 0x0F, bytes(buf[off:off + n]))
                    del buf[:off + n]
                    return frame
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start(binary, extra=()):
    port = free_port()
    # 200 attackers from one address: above the default per-address cap
    # (a build from before that flag does not know it).
    per_ip = [] if binary in BASELINES else ["--max-connections-per-ip", "1000"]
    proc = subprocess.Popen(["taskset", "-c", "0", binary, "--listen", f"127.0.0.1:{port}", *per_ip, *extra],
                            stderr=subprocess.DEVNULL, env=uncapped_env())
    wait_listening(proc, port, "wshub")
    return proc, port


def memory_pressure(binary):
    proc, port = start(binary)
    time.sleep(0.5)
    before = rss(proc.pid)
    frame = masked(0x82, bytes([0x42]) * 65000)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    socks = []

    def attack(i):
        try:
            s = connect(port, f"/ws?topic=self{i}", rcvbuf=4096)
        except (OSError, SystemExit):
            return
        socks.append(s)
        s.settimeout(10)
        try:
            for _ in range(106):
                s.sendall(frame)
        except OSError:
            pass

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)
    for s in socks:
        s.close()
    time.sleep(5)
    done.set()
    sampler.join()
    after = rss(proc.pid)
    stop(proc)
    return before, peak[0], after


def quiet_latencies(port, seconds=5.0):
    a = connect(port, "/ws?topic=quiet")
    b = connect(port, "/ws?topic=quiet")
    b.settimeout(10)
    buf = bytearray()
    lat = []
    end = time.time() + seconds
    while time.time() < end:
        sent = time.perf_counter()
        a.sendall(masked(0x82, struct.pack(">d", sent)))
        while True:
            frame = read_frame(b, buf)
            if frame is None:
                raise SystemExit("quiet client disconnected")
            if frame[0] == 2 and len(frame[1]) == 8 and struct.unpack(">d", frame[1])[0] == sent:
                break
        lat.append((time.perf_counter() - sent) * 1000)
        time.sleep(0.02)
    a.close()
    b.close()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def fairness(binary):
    # Without echo, so the flooder need not read (the quiet pair is A to B).
    proc, port = start(binary, ["--no-echo"])
    quiet = quiet_latencies(port)
    stop_flag = threading.Event()

    def flood():
        s = connect(port, "/ws?topic=flood")
        s.settimeout(5)
        small = b"".join(masked(0x82, bytes(64)) for _ in range(4096))
        conts = masked(0x01, b"x") + b"".join(masked(0x00, b"") for _ in range(20000)) + masked(0x80, b"")
        i = 0
        while not stop_flag.is_set():
            try:
                s.sendall(small if i % 2 == 0 else conts)
            except OSError:
                return
            i += 1

    flooded = while_flooding(port, flood, stop_flag)
    stop(proc)
    return quiet, flooded


def while_flooding(port, flood, stop_flag):
    """The quiet pair's latencies while `flood` runs on its own thread (it
    returns once `stop_flag` is set)."""
    flooder = threading.Thread(target=flood)
    flooder.start()
    time.sleep(1)
    flooded = quiet_latencies(port)
    stop_flag.set()
    flooder.join()
    return flooded


def redis_command(port, *args):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
    reply = s.recv(4096)
    s.close()
    return reply


def redis_flood(binary):
    redis_port = free_port()
    redis = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL)
    wait_listening(redis, redis_port, "redis-server")
    proc, port = start(binary, ["--no-echo", "--max-connections", "20000", "--redis",
                                f"redis://127.0.0.1:{redis_port}"])
    sink = subprocess.Popen(["taskset", "-c", "1", os.path.join(ROOT, "target", "release", "loadgen"), "--addr",
                             f"127.0.0.1:{port}", "--pid", str(proc.pid), "--clients", "1000", "--mode", "sink",
                             "--path", "/ws?topic=flood", "--warmup", "0", "--duration", "15"],
                            stdout=subprocess.PIPE, text=True)
    try:
        if "ready" not in sink.stdout.readline():
            raise SystemExit("the sink did not connect")
        deadline = time.time() + 10
        while not redis_command(redis_port, "PUBSUB", "NUMSUB", "wshub:flood").endswith(b":1\r\n"):
            if time.time() > deadline:
                raise SystemExit("the hub did not subscribe")
            time.sleep(0.05)
        quiet = quiet_latencies(port)
        stop_flag = threading.Event()

        def flood():
            s = socket.create_connection(("127.0.0.1", redis_port))
            s.sendall(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n")
            batch = b"*3\r\n$7\r\nPUBLISH\r\n$11\r\nwshub:flood\r\n$16\r\nsixteen bytes...\r\n" * 1000
            while not stop_flag.is_set():
                try:
                    s.sendall(batch)
                except OSError:
                    return

        flooded = while_flooding(port, flood, stop_flag)
    finally:
        sink.kill()
        sink.wait()
        stop(proc)
        stop(redis)
    return quiet, flooded


BASELINES = set()


def main():
    binaries = [("wshub", os.path.join(ROOT, "target", "release", "wshub"))]
    if "--baseline" in sys.argv:
        baseline = os.path.abspath(sys.argv[sys.argv.index("--baseline") + 1])
        BASELINES.add(baseline)
        binaries.append(("baseline", baseline))
    print("building (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wshub", "-p", "loadgen"], cwd=ROOT, check=True)
    mib = lambda b: f"{b / 1048576:.1f} MiB"
    print("| memory pressure (200 clients x 106 x 65,000 B, never reading) | RSS before | RSS peak | RSS 5 s after |")
    print("| --- | --- | --- | --- |")
    for name, path in binaries:
        print(f"  memory: {name}", file=sys.stderr)
        before, peak, after = memory_pressure(path)
        print(f"| {name} | {mib(before)} | {mib(peak)} | {mib(after)} |")
    quiet_table("quiet pair, 50 msg/s", "flooder", "fairness", fairness, binaries)
    if shutil.which("redis-server") is not None:
        quiet_table("quiet pair, 50 msg/s, 1,000 subscribers elsewhere", "a Redis flood", "redis flood", redis_flood,
                    binaries)


def quiet_table(title, what, label, scenario, binaries):
    """The quiet pair's latency without and with `what`, per binary."""
    print()
    print(f"| {title} | p50 ms | p99 ms | with {what} p50 ms | with {what} p99 ms | p99 ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, path in binaries:
        print(f"  {label}: {name}", file=sys.stderr)
        (q50, q99), (f50, f99) = scenario(path)
        print(f"| {name} | {q50:.2f} | {q99:.2f} | {f50:.2f} | {f99:.2f} | {f99 / q99:.1f}x |")

if __name__ == "__main__":
    main()
