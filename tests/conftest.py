"""Shared fixtures: an isolated Jupyter environment per test, and process accounting."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import prefer_environment_over_user

from hotpot_km import PooledKernelManager

sys.path.insert(0, str(Path(__file__).parent))

# A test that failed while a kernel lost a port to another process runs once more.
from port_race import (  # noqa: F401
    pytest_runtest_logreport,
    pytest_runtest_protocol,
    pytest_terminal_summary,
)

# A shell without job control starts background commands with SIGINT ignored, and an
# ignored signal stays ignored in every child: the servers these tests stop with SIGINT
# would never see it. Run them as a terminal or a service manager would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

MARKER = "HOTPOT_KM_TEST_MARKER"

#: Fork mode is on by default for every kernel name with a pool (``fork_from_template``);
#: ``HOTPOT_KM_TEST_FORK=0`` runs the tests with it off for every name (``{"*": false}``):
#: in-process managers get that from :func:`pooled_manager`, servers from the config files
#: :func:`isolate_jupyter` writes, as users would configure it.
LAUNCH = os.environ.get("HOTPOT_KM_TEST_FORK", "") == "0"
#: In a template's command line (a forked kernel shows its own, ipykernel's).
TEMPLATE_MARK = "hotpot_km/fork/template.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (the order is otherwise kept): run in parallel (``make test``), the
    longest ones start at once instead of keeping one worker busy after the others are done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def fork_config() -> dict[str, bool]:
    """``fork_from_template`` for this run: fork mode off in a launch run, else the default."""
    return {"*": False} if LAUNCH else {}


def pooled_manager(**traits: Any) -> PooledKernelManager:
    """A ``PooledKernelManager`` with ``traits``, in launch mode when the run asks for it."""
    if LAUNCH:
        traits.setdefault("fork_from_template", fork_config())
    return PooledKernelManager(**traits)


def isolate_jupyter(base: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point Jupyter at fresh config/data/runtime dirs under ``base``, set a new marker
    value every kernel inherits, and work in ``base/work``."""
    dirs = {name: base / name for name in ("config", "data", "runtime", "work")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    # jupyter_core's own path order, as in a user's shell: in the suite's venv, its
    # share/jupyter (ipykernel's python3) comes before JUPYTER_DATA_DIR
    monkeypatch.delenv("JUPYTER_PREFER_ENV_PATH", raising=False)
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "")
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    _MARKED[marker] = base
    monkeypatch.chdir(dirs["work"])
    if LAUNCH:  # what a user writes to turn fork mode off, for every server the test starts
        config = json.dumps({"PooledKernelManager": {"fork_from_template": fork_config()}})
        (dirs["config"] / "jupyter_config.json").write_text(config)  # jupyter_server, KG
        (dirs["config"] / "voila.json").write_text(config)  # Voila reads its own name
    return dirs


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh config/data/runtime dirs, and a marker env value every kernel inherits."""
    return isolate_jupyter(tmp_path, monkeypatch)


#: The test directory of each marker (see :func:`isolate_jupyter`).
_MARKED: dict[str, Path] = {}


def _marked(proc: psutil.Process, marker: str) -> bool:
    """Whether ``proc`` belongs to the test of ``marker``: the marker is in its process
    env (a cold start's), or, for a pooled kernel or template (launched with only what
    must be fixed at process start, see hotpot_km.request.launch_env), its connection
    file or working directory is in the test's directory."""
    if proc.environ().get(MARKER) == marker:
        return True
    base = _MARKED.get(marker)
    if base is None:
        return False
    inside = str(base) + os.sep
    if any(arg.startswith(inside) for arg in proc.cmdline()):
        return True
    try:
        return (proc.cwd() + os.sep).startswith(inside)
    except (psutil.AccessDenied, FileNotFoundError):
        return False


def marked_kernels(marker: str | None = None) -> list[psutil.Process]:
    """Live kernel processes of this test (see :func:`_marked`)."""
    marker = marker or os.environ[MARKER]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            if "ipykernel" in " ".join(proc.cmdline()) and _marked(proc, marker):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _live(proc: psutil.Process, needle: str) -> bool:
    try:
        return needle in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def templates(pid: int | None = None) -> list[psutil.Process]:
    """Fork templates that are children of ``pid`` (default: this process)."""
    try:
        children = psutil.Process(pid or os.getpid()).children()
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if _live(child, TEMPLATE_MARK)]


def kernel_children(pid: int | None = None) -> list[psutil.Process]:
    """Kernel processes that are children of ``pid`` (default: this process), or children
    of its fork templates (a forked kernel's parent is the template).

    Direct children only: managers launch their kernels themselves, and a kernel's own
    short-lived subprocess (ipykernel runs ``uname -p`` when it shuts down) carries the
    kernel's command line until it execs, so it must not count as one more kernel.
    """
    try:
        children = psutil.Process(pid or os.getpid()).children()
    except psutil.NoSuchProcess:
        return []
    for template in templates(pid):
        try:
            children += template.children()
        except psutil.NoSuchProcess:
            continue
    return [child for child in children if _live(child, "ipykernel")]


def describe(procs: list[psutil.Process]) -> list[str]:
    """pid, parent and command line of each process, for failure messages."""
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[-100:]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


#: Jupyter directories of module-scoped fixtures (see :func:`isolate_jupyter`): the processes
#: they start outlive a test, and each such fixture checks its own when it ends.
SHARED: set[Path] = set()


def _left_behind(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs and belongs to no module-scoped fixture."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        places = [*proc.cmdline(), proc.cwd()]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return not any(
        (place + os.sep).startswith(str(base) + os.sep) for base in SHARED for place in places
    )


@pytest.fixture(autouse=True)
def children_end_with_their_test() -> Iterator[None]:
    """Every test: the processes it started itself (kernels, templates, servers, CLIs) have
    ended when it ends (within 10 s), or the test fails and they are killed. Without this, a
    process left behind is found by a later test of the same worker, which then fails for
    something it did not do."""
    me = psutil.Process()
    before = {proc.pid for proc in me.children()}
    yield
    start = time.monotonic()
    while True:
        left = [p for p in me.children() if p.pid not in before and _left_behind(p)]
        if not left or time.monotonic() - start > 10:
            break
        time.sleep(0.1)
    shown = describe(left)
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes this test started are still running: {shown}"


@pytest.fixture
def no_leftover_kernels(jupyter_dirs: dict[str, Path]) -> Iterator[None]:
    """Fail the test if any kernel it started is still alive after it ended."""
    marker = os.environ[MARKER]
    yield
    deadline = 10.0
    start = time.monotonic()
    while (
        marked_kernels(marker) or marked_processes(TEMPLATE_MARK, marker)
    ) and time.monotonic() - start < deadline:
        time.sleep(0.1)
    left = marked_kernels(marker) + marked_processes(TEMPLATE_MARK, marker)
    for proc in left:
        proc.kill()
    assert not left, f"kernel processes left behind: {describe(left)}"


def marked_processes(needle: str, marker: str | None = None) -> list[psutil.Process]:
    """Live processes of this test (see :func:`_marked`) whose command line contains ``needle``
    (for kernels that are not ipykernel, e.g. a broken kernelspec's program)."""
    marker = marker or os.environ[MARKER]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            if needle in " ".join(proc.cmdline()) and _marked(proc, marker):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def winning_kernels_dir(jupyter_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``kernels`` dir whose specs win over the venv's own (``python3``) with jupyter_core's
    default path order: the user's data dir if that comes first (``JUPYTER_PREFER_ENV_PATH=0``),
    else a dir put first in ``JUPYTER_PATH``."""
    if prefer_environment_over_user():
        first = jupyter_dirs["data"].parent / "path"
        monkeypatch.setenv("JUPYTER_PATH", str(first))
    else:
        first = jupyter_dirs["data"]
    return first / "kernels"


@pytest.fixture
def unwatched_kernels(jupyter_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``python3`` kernelspec whose kernels do not exit when their parent dies.

    ipykernel normally polls its parent and exits about a second after it is gone,
    which would hide any kernel a server leaves behind; most other kernels don't.
    It is written where it wins over the venv's own ``python3``: in the user's data dir if
    that comes first (``JUPYTER_PREFER_ENV_PATH=0``), else first in ``JUPYTER_PATH``.
    """
    path = winning_kernels_dir(jupyter_dirs, monkeypatch) / "python3"
    path.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.parent_handle=0"],
        "display_name": "Python 3 (unwatched)",
        "language": "python",
    }
    (path / "kernel.json").write_text(json.dumps(spec))
    found = KernelSpecManager().find_kernel_specs()["python3"]
    assert found == str(path), f"{found} wins over the unwatched spec at {path}"
