"""The demo behind ``make demo``: the same Voila dashboard, cold and with hotpot_km.

It starts Voila on ``examples/dashboard/dashboard.ipynb`` (numpy, scipy, matplotlib,
pandas) twice on 127.0.0.1: once with Voila's own kernel manager (every page
starts and imports a fresh kernel), once with the ``voila.json`` next to the
notebook, which is the configuration users write. It times page loads of both,
prints the comparison, and leaves the pooled Voila running for you to open.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent / "dashboard"
COLD_MANAGER = "jupyter_server.services.kernels.kernelmanager.AsyncMappingKernelManager"


def free_port() -> int:
    """A free port below the OS's ephemeral range: a port from ``bind(0)`` could be taken
    by a pooled kernel (kernels get theirs from that range) before the server listens."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def start_voila(port: int, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    """Voila in the dashboard directory, so it reads the voila.json there."""
    env = dict(os.environ)
    # kernel_pool_init_python3.py lives in a config directory of the example
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (str(HERE / "jupyter_config"), env.get("JUPYTER_CONFIG_PATH")) if p
    )
    argv = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        *extra,
        "dashboard.ipynb",
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"Voila exited early; its log:\n{log.read_text(errors='replace')[-4000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            sys.exit(f"Voila did not start in time; its log:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)


def page_times(port: int, count: int, pause: float) -> list[float]:
    """Seconds per full page load; each load runs the whole notebook in a new kernel."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=300) as response:
            body = response.read()
            if response.status != 200 or b"filtered" not in body:
                sys.exit(f"unexpected page (HTTP {response.status})")
        times.append(time.perf_counter() - start)
        time.sleep(pause)  # Voila shuts a page's kernel down in the background
    return times


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3, help="page loads per setup (default 3)")
    parser.add_argument("--no-serve", action="store_true", help="exit after measuring")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="hotpot_km_demo_"))

    print("Measuring cold Voila (a fresh kernel and fresh imports per page)...", flush=True)
    port = free_port()
    cold = start_voila(
        port,
        f"--VoilaConfiguration.multi_kernel_manager_class={COLD_MANAGER}",
        log=logs / "cold.log",
    )
    try:
        wait_listening(cold, port, logs / "cold.log")
        cold_times = page_times(port, args.loads, pause=1.0)
    finally:
        stop(cold)

    print(
        "Starting Voila with hotpot_km (examples/dashboard/voila.json); filling the pool...",
        flush=True,
    )
    port = free_port()
    pooled = start_voila(port, log=logs / "pooled.log")
    try:
        wait_listening(pooled, port, logs / "pooled.log")
        pooled_times = page_times(port, args.loads, pause=1.0)
        cold_p50, pooled_p50 = statistics.median(cold_times), statistics.median(pooled_times)
        print()
        print(f"{'':18}{'median':>10}{'all loads (s)':>32}")
        print(f"{'cold Voila':18}{cold_p50:>9.3f}s   {' '.join(f'{t:.3f}' for t in cold_times)}")
        print(
            f"{'Voila + hotpot_km':18}{pooled_p50:>9.3f}s   "
            f"{' '.join(f'{t:.3f}' for t in pooled_times)}"
        )
        print(f"\nWith the pool the page loads {cold_p50 / pooled_p50:.1f}x faster.")
        if args.no_serve:
            return
        print(
            f"\nThe pooled dashboard is at http://127.0.0.1:{port}/  (Ctrl-C to stop)", flush=True
        )
        try:
            pooled.wait()
        except KeyboardInterrupt:
            print("\nStopping Voila...")
    finally:
        stop(pooled)


if __name__ == "__main__":
    main()
