"""Process helpers the benchmark scripts share: a free loopback port, waiting
until a server they started listens, stopping it by its PID, and the
environment that lifts wshub's per-address limits."""
import os
import signal
import socket
import subprocess
import time


def uncapped_env():
    """The environment for a wshub under load from a few loopback addresses:
    the per-address cap, the pending cap and the per-address connection rate
    lifted (by environment, which builds from before a flag simply ignore)."""
    return dict(os.environ, WSHUB_MAX_CONNECTIONS_PER_IP="20000", WSHUB_MAX_PENDING="20000",
                WSHUB_CONNECTION_RATE_PER_IP="0")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port, what, seconds=10):
    """Returns once 127.0.0.1:port accepts; kills `proc` if it does not in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{what} did not start")


def stop(proc):
    """SIGTERM (a graceful shutdown), then SIGKILL after 10 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
