"""Process helpers the benchmark scripts share: a free loopback port, waiting
until a server they started listens, stopping it by its PID, and the
environment that lifts wshub's per-address limits."""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
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


def start_pinned(cmd, what="wshub"):
    """Starts `cmd` (a server taking --listen) on a free loopback port,
    pinned to core 0, with the per-address limits lifted; returns (process,
    port) once it listens."""
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0"] + list(cmd) + ["--listen", f"127.0.0.1:{port}"],
                            stderr=subprocess.DEVNULL, env=uncapped_env())
    wait_listening(proc, port, what)
    return proc, port


def run_loadgen(loadgen, port, pid, args):
    """Runs the load generator (pinned to core 1) against 127.0.0.1:port,
    reading the server's figures from `pid`; its JSON result. Its warnings
    (a saturated load generator) go to stderr."""
    out = subprocess.run(["taskset", "-c", "1", loadgen, "--addr", f"127.0.0.1:{port}", "--pid", str(pid)] + args,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr}")
    if out.stderr.strip():
        print(f"  {out.stderr.strip()}", file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(runs):
    """The median of every number the runs report; losses summed, and
    whether any run saturated the load generator."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    result = {k: statistics.median(r[k] for r in runs) for k in keys}
    result["lost"] = sum(r.get("lost", 0) for r in runs)
    result["saturated"] = any(r.get("loadgen_saturated") for r in runs)
    return result
