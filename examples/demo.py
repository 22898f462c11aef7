"""The demo behind ``make demo``: the same Voila dashboard, cold and with hotpot_km.

It starts Voila on ``examples/dashboard/dashboard.ipynb`` (numpy, scipy, matplotlib,
pandas) twice on 127.0.0.1: once with Voila's own kernel manager (every page starts a
fresh kernel and imports everything), once with the ``voila.json`` next to the notebook,
the configuration users write (a pool of 3, and ``jupyter_config/kernel_pool_init_python3.py``
pre-imports what the dashboard imports). Pages are loaded the way visitors load them:
one after the other, a few seconds apart (``--gap``), and each visitor leaves, which
shuts its kernel down as the page's unload handler does. It prints both page times and
where a page's time goes, then leaves the pooled Voila running for you to open.

Voila runs through ``benchmarks/apps.py``, which only adds a timing endpoint: wrappers
around Voila's own steps (a few microseconds each) say how long the hand-out, the
kernel client's readiness, the cells' execution and everything else took.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "examples" / "dashboard"
APPS = ROOT / "benchmarks" / "apps.py"
COLD_MANAGER = "jupyter_server.services.kernels.kernelmanager.AsyncMappingKernelManager"
KERNEL_ID = re.compile(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"')
#: phases.VOILA labels, summed per page.
PARTS = {
    "hand-out (start_kernel)": "hand-out: start_kernel()",
    "readiness (client ready)": "readiness: nbclient's client, until wait_for_ready() returns",
    "execution (the cells)": "execution: the notebook's cells",
}


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
    env = dict(os.environ, HOTPOT_BENCH_PHASES="voila")
    # kernel_pool_init_python3.py lives in a config directory of the example
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (str(HERE / "jupyter_config"), env.get("JUPYTER_CONFIG_PATH")) if p
    )
    argv = [
        sys.executable,
        str(APPS),
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
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 300
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


class Visitor:
    """Loads the page like a browser (whole body), and leaves it (its kernel shut down)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = urllib.request.build_opener()

    def phases(self) -> dict[str, list[float]]:
        with self.http.open(f"{self.url}/bench/phases", timeout=60) as response:
            return json.loads(response.read())

    def load(self) -> tuple[float, str | None]:
        start = time.perf_counter()
        with self.http.open(f"{self.url}/", timeout=300) as response:
            body = response.read().decode()
        took = time.perf_counter() - start
        if response.status != 200 or "filtered" not in body:
            sys.exit(f"unexpected page (HTTP {response.status})")
        match = KERNEL_ID.search(body)
        return took, match.group(1) if match else None

    def leave(self, kernel_id: str | None) -> None:
        if kernel_id is None:
            return
        xsrf = uuid.uuid4().hex  # tornado compares the header with the cookie, as sent
        request = urllib.request.Request(
            f"{self.url}/voila/api/shutdown/{kernel_id}",
            method="POST",
            headers={"X-XSRFToken": xsrf, "Cookie": f"_xsrf={xsrf}"},
        )
        with self.http.open(request, timeout=60):
            pass


def visits(port: int, count: int, gap: float) -> list[dict[str, float]]:
    """``count`` visitors, ``gap`` seconds apart: each page's time and where it went."""
    visitor = Visitor(port)
    visitor.phases()  # start counting from here
    pages = []
    for i in range(count):
        if i:
            time.sleep(gap)
        took, kernel_id = visitor.load()
        spent = visitor.phases()
        parts = {name: sum(spent.get(label, [])) for name, label in PARTS.items()}
        parts["rendering, HTTP, the rest"] = took - sum(parts.values())
        pages.append({"page": took, **parts})
        visitor.leave(kernel_id)
    return pages


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(cold: list[dict[str, float]], pooled: list[dict[str, float]], gap: float) -> None:
    def median(pages: list[dict[str, float]], key: str) -> float:
        return statistics.median(p[key] for p in pages)

    print(f"\n{len(cold)} visitors per setup, one every {gap:g} s after the previous page")
    print(f"{'':18}{'median':>10}   all loads (s)")
    for name, pages in (("cold Voila", cold), ("Voila + hotpot_km", pooled)):
        loads = " ".join(f"{p['page']:.3f}" for p in pages)
        print(f"{name:18}{median(pages, 'page'):>9.3f}s   {loads}")
    print(f"\nWhere a page's time goes (median seconds){'cold':>12}{'pooled':>10}")
    for key in [*PARTS, "rendering, HTTP, the rest"]:
        print(f"  {key:40}{median(cold, key):>10.3f}{median(pooled, key):>10.3f}")
    speedup = median(cold, "page") / median(pooled, "page")
    print(f"\nWith the pool the page loads {speedup:.1f}x faster.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="visitors per setup (default 5)")
    parser.add_argument(
        "--gap", type=float, default=3.0, help="seconds between two visitors (default 3)"
    )
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
        cold_pages = visits(port, args.loads, args.gap)
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
        pooled_pages = visits(port, args.loads, args.gap)
        report(cold_pages, pooled_pages, args.gap)
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
