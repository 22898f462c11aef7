"""Notebook runners end to end: papermill, an nbclient loop and ``pytest --nbmake``.

Every run is a real CLI (or a real nbclient process) against the same ``python3``
kernelspec. "cold" is that kernelspec as it is; "this project" is the same kernelspec
after ``hotpot-km kernelspec install``, with ``hotpot-km serve`` running and full before
every measured run. Times are wall clock from starting the command to its exit.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from environment import JupyterDirs, Process
from server_bench import notebook

from hotpot_km.service.client import ServiceUnavailable, call
from hotpot_km.service.paths import ServicePaths

BIN = Path(sys.executable).parent
SETTLE = 0.3

#: One process, a new kernel per notebook, as a script looping over notebooks would.
NBCLIENT_LOOP = """
import json, sys, time, nbformat
from nbclient import NotebookClient
times = []
for path in sys.argv[2:]:
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3").execute()
    assert "BENCH_OK" in nb.cells[-1].outputs[0]["text"]
    times.append(time.perf_counter() - t0)
json.dump(times, open(sys.argv[1], "w"))
"""


class RunnerService:
    """``hotpot-km serve`` for one scenario, in that scenario's Jupyter dirs."""

    def __init__(self, dirs: JupyterDirs, pools: int, log: Path, *args: str) -> None:
        self.dirs = dirs
        self.socket = ServicePaths(str(dirs.runtime)).socket
        argv = [str(BIN / "hotpot-km"), "serve",
                f'--PooledKernelManager.kernel_pools={{"python3": {pools}}}', *args]
        self.process = Process(argv, env=dirs.env(), cwd=dirs.work, log=log)

    def status(self) -> dict[str, Any] | None:
        try:
            return asyncio.run(call(self.socket, "status"))["status"]
        except ServiceUnavailable:
            return None

    def wait_full(self, timeout: float = 600) -> None:
        """Every pool full and nothing leased (the previous run's kernel is gone)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.proc.poll() is not None:
                raise RuntimeError(f"hotpot-km serve exited:\n{self.process.log()}")
            doc = self.status()
            if doc and not doc["leases"] and all(
                    p["ready"] >= p["size"] for p in doc["pools"].values()):
                time.sleep(SETTLE)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool did not fill: {doc}\n{self.process.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()


def install_kernelspec(dirs: JupyterDirs) -> None:
    subprocess.run([str(BIN / "hotpot-km"), "kernelspec", "install"], env=dirs.env(),
                   check=True, capture_output=True)


def timed(argv: list[str], dirs: JupyterDirs, cwd: Path, log: Path) -> float:
    """Run a command to completion; its wall time."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        code = subprocess.run(argv, env=dirs.env(), cwd=cwd, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1800).returncode
    took = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"{argv[:3]} exited with {code}; see {log}")
    return took


def papermill_runs(dirs: JupyterDirs, reps: int, log: Path,
                   service: RunnerService | None, heavy: str) -> list[float]:
    nb = dirs.work / "heavy.ipynb"
    notebook(nb, heavy, 'print("BENCH_OK", 1 + 1)')
    samples = []
    for rep in range(reps):
        if service is not None:
            service.wait_full()
        samples.append(timed([str(BIN / "papermill"), str(nb), str(dirs.work / f"out-{rep}.ipynb")],
                             dirs, dirs.work, log))
        out = json.loads((dirs.work / f"out-{rep}.ipynb").read_text())
        if "BENCH_OK 2" not in "".join(out["cells"][-1]["outputs"][0]["text"]):
            raise RuntimeError("the papermill run did not print its marker")
    return samples


def nbclient_loop(dirs: JupyterDirs, count: int, reps: int, log: Path,
                  service: RunnerService | None) -> tuple[list[float], list[float]]:
    """Per-notebook times of every repetition, and each repetition's whole loop time (a
    process runs the loop; with the service, each repetition starts on full pools)."""
    paths = []
    for i in range(count):
        path = dirs.work / "loop" / f"nb{i}.ipynb"
        notebook(path, f'print("BENCH_OK", {i})')
        paths.append(str(path))
    out = dirs.work / "loop-times.json"
    each: list[float] = []
    totals: list[float] = []
    for _ in range(reps):
        if service is not None:
            service.wait_full()
        argv = [sys.executable, "-c", NBCLIENT_LOOP, str(out), *paths]
        totals.append(timed(argv, dirs, dirs.work, log))
        each += json.loads(out.read_text())
    return each, totals


def nbmake_runs(dirs: JupyterDirs, count: int, reps: int, log: Path,
                service: RunnerService | None) -> list[float]:
    suite = dirs.work / "suite"
    for i in range(count):
        notebook(suite / f"test_{i}.ipynb", f"assert {i} + 1 == {i + 1}", 'print("BENCH_OK")')
    samples = []
    for _ in range(reps):
        if service is not None:
            service.wait_full()
        samples.append(timed([sys.executable, "-m", "pytest", "--nbmake", "-q",
                              "-p", "no:cacheprovider", str(suite)], dirs, suite, log))
    return samples
