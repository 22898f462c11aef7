"""Everything around the code under test: the 0.2.2 venv, isolated Jupyter dirs, processes.

Every system launches the same kernel (a ``python3`` kernelspec that points at the
project's interpreter), so rows differ only in the manager that starts and hands it out.
Every process a run starts carries ``MARKER_VAR`` in its environment; whatever still
carries it when a system is stopped is reported as left behind and killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from ports import free_port  # noqa: E402, F401  (shared with the tests; the benchmarks import it from here)

OLD_RELEASE = "hotpot_km==0.2.2"
#: Installed in the 0.2.2 venv at the exact versions the project's venv has.
PINNED = ("jupyter_client", "jupyter_server", "ipykernel", "voila",
          "jupyter_core", "traitlets", "pyzmq", "tornado")
MARKER_VAR = "HOTPOT_KM_BENCH_RUN"


def project_versions() -> dict[str, str]:
    return {name: version(name) for name in ("hotpot_km", *PINNED)}


def ensure_old_venv(work: Path, log: Callable[[str], None]) -> Path:
    """Create (or reuse) the venv with hotpot_km 0.2.2 and the project's Jupyter versions."""
    venv = work / "venv-022"
    python = venv / "bin" / "python"
    wanted = "\n".join([OLD_RELEASE, *(f"{n}=={version(n)}" for n in PINNED), "psutil"])
    stamp = venv / "bench-requirements.txt"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"setting up {venv} with {OLD_RELEASE} (one-off, about a minute)")
    if venv.exists():
        shutil.rmtree(venv)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *wanted.splitlines()],
        check=True,
    )
    found = subprocess.run(
        [str(python), "-c", "import hotpot_km; print(hotpot_km.__version__)"],
        check=True, capture_output=True, text=True, cwd=work,
    ).stdout.strip()
    if found != "0.2.2":
        raise RuntimeError(f"the 0.2.2 venv imports hotpot_km {found}")
    stamp.write_text(wanted)
    return python


def venv_versions(python: Path | str) -> dict[str, str]:
    """Package versions as seen by another interpreter."""
    code = (
        "import json, sys; from importlib.metadata import version as v\n"
        f"names = {['hotpot_km', *PINNED]!r}\n"
        "print(json.dumps({'python': sys.version.split()[0], **{n: v(n) for n in names}}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                         text=True, cwd=HERE).stdout
    return json.loads(out)


class JupyterDirs:
    """Fresh config/data/runtime dirs with the shared kernelspec, and the env that uses them."""

    def __init__(self, root: Path, name: str, init_code: str | None = None) -> None:
        self.base = root / name
        self.config = self.base / "config"
        self.data = self.base / "data"
        self.runtime = self.base / "runtime"
        self.work = self.base / "work"
        for path in (self.config, self.data, self.runtime, self.work):
            path.mkdir(parents=True, exist_ok=True)
        spec = self.data / "kernels" / "python3"
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }))
        if init_code:
            (self.config / "kernel_pool_init_python3.py").write_text(init_code + "\n")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "PYTHONPATH"):
            env.pop(name, None)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.config),
            JUPYTER_DATA_DIR=str(self.data),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_PLATFORM_DIRS="1",
            JUPYTER_PREFER_ENV_PATH="0",  # our kernelspec over the venv's own python3 spec
            PYTHONWARNINGS="ignore::DeprecationWarning",
        )
        return env


def shown(path: Path) -> str:
    """A path as written in the results: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


class Process:
    """A subprocess in its own session, logged to a file; stopping it never leaves it running."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path):
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(grace=1)
            raise

    def stop(self, grace: float = 30) -> int | None:
        """SIGTERM (servers shut their kernels down), then SIGKILL of the whole group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return None


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment carries this run's marker."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def sweep(marker: str, settle: float = 5.0) -> list[str]:
    """Kill what is left of a stopped system (after ``settle`` s); describe what was found."""
    deadline = time.monotonic() + settle
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = marked_processes(marker)
    described = []
    for proc in left:
        try:
            cmd = " ".join(proc.cmdline())
            described.append(f"pid {proc.pid}: {cmd[:100]}")
            proc.kill()
        except psutil.Error:
            continue
    return described
