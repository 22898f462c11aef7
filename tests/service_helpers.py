"""The pool service for tests: the real ``hotpot-km`` CLI in subprocesses, in isolated
Jupyter dirs, and notebooks that report which kernel ran them and what it saw."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import kernel_children, templates
from servers import write_notebook

from hotpot_km.service.client import ServiceUnavailable, call
from hotpot_km.service.paths import ServicePaths

BIN = Path(sys.executable).parent


def kernel_parents(pid: int) -> set[int]:
    """``pid`` and its fork templates: the parents a kernel of the host ``pid`` can have."""
    return {pid, *(template.pid for template in templates(pid))}

HOTPOT_KM = str(BIN / "hotpot-km")

#: A cell that writes what its kernel sees to $PROBE_DIR/probe-<pid>.json (and prints it).
PROBE_CELL = (
    "import json, os, sys\n"
    "probe = {'pid': os.getpid(), 'ppid': os.getppid(), 'cwd': os.getcwd(),\n"
    "         'preimported': 'colorsys' in sys.modules,\n"
    "         'runner_only': os.environ.get('RUNNER_ONLY'),\n"
    "         'service_only': os.environ.get('SERVICE_ONLY')}\n"
    "with open(os.path.join(os.environ['PROBE_DIR'], f'probe-{os.getpid()}.json'), 'w') as f:\n"
    "    json.dump(probe, f)\n"
    "print(json.dumps(probe))"
)


def runner_env(**extra: str) -> dict[str, str]:
    """The environment of a runner: this test's (isolated dirs), plus a variable only it has."""
    env = dict(os.environ, RUNNER_ONLY="from-the-runner", **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SERVICE_ONLY", None)
    return env


def hotpot_km(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
              python: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``hotpot-km`` command; with ``python``, that interpreter's (``python -m hotpot_km``)."""
    argv = [str(python), "-m", "hotpot_km"] if python else [HOTPOT_KM]
    return subprocess.run([*argv, *args], env=env or runner_env(), capture_output=True,
                          text=True, timeout=timeout)


def virtual_env(path: Path) -> Path:
    """A real virtual environment at ``path`` (own prefix, ``pyvenv.cfg``) that sees the
    suite's packages, with the ``python3`` kernelspec pip put in the suite's venv: what a
    user's venv with hotpot_km and ipykernel installed looks like, without touching the
    suite's own. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    python = path / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_path("purelib")  # the suite's, with its .pth (the editable install)
    Path(site_dir, "suite_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    spec = Path(sys.prefix, "share", "jupyter", "kernels", "python3")
    target = path / "share" / "jupyter" / "kernels" / "python3"
    target.parent.mkdir(parents=True)
    shutil.copytree(spec, target)
    return python


def install_kernelspec(*args: str) -> None:
    """``hotpot-km kernelspec install``, never into the suite's own venv (the install goes
    where the spec wins, which in a venv is the venv: a test in this process's env sets
    ``JUPYTER_PREFER_ENV_PATH=0``, one as a user's venv has it uses :func:`virtual_env`)."""
    done = hotpot_km("kernelspec", "install", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f" in {sys.prefix}{os.sep}" not in done.stdout, done.stdout


def status(timeout: float = 30) -> dict[str, Any] | None:
    """The running service's status document (through the real socket), or None."""
    path = ServicePaths.default().socket

    def ask() -> dict[str, Any] | None:
        try:
            return asyncio.run(call(path, "status", timeout=timeout))["status"]
        except ServiceUnavailable:
            return None

    with ThreadPoolExecutor(1) as pool:  # usable from async tests too
        return pool.submit(ask).result()


def probes(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("probe-*.json"))]


def probe_notebook(path: Path, *more_cells: str) -> Path:
    write_notebook(path, PROBE_CELL, *more_cells)
    return path


class Service:
    """A ``hotpot-km serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log_path = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kernel_pids(self) -> set[int]:
        """Kernel processes the service runs (pooled and leased): its children, or its fork
        templates' (see ``conftest.kernel_children``)."""
        return {p.pid for p in kernel_children(self.pid)}

    def parents(self) -> set[int]:
        """What a kernel of the service has as its parent: the service, or (fork mode, the
        default) one of its templates."""
        return kernel_parents(self.pid)

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        """Until every pool holds its size in ready kernels."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"the service exited:\n{self.log()[-3000:]}"
            doc = status()
            if doc and all(p["ready"] >= p["size"] for p in doc["pools"].values()):
                return doc
            assert time.monotonic() < deadline, f"pools not ready: {doc}\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the service did not stop on {sig}:\n{self.log()[-3000:]}") from None


@contextmanager
def service(
    log: Path,
    *args: str,
    pools: int = 1,
    wait: bool = True,
    kernel_pools: dict | None = None,
    python: Path | None = None,
) -> Iterator[Service]:
    """``hotpot-km serve`` with a python3 pool (or ``kernel_pools``), ``SERVICE_ONLY`` set in
    its env only; with ``python``, that interpreter's."""
    env = runner_env(SERVICE_ONLY="from-the-service")
    env.pop("RUNNER_ONLY")
    sizes = json.dumps(kernel_pools or {"python3": pools})
    command = [str(python), "-m", "hotpot_km"] if python else [HOTPOT_KM]
    argv = [*command, "serve", f"--PooledKernelManager.kernel_pools={sizes}",
            "--PooledKernelManager.fill_delay=0", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    running = Service(proc, log)
    try:
        if wait:
            running.wait_ready()
        yield running
    finally:
        running.stop()
