"""Shared fixtures: an isolated Jupyter environment per test, and process accounting."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

MARKER = "HOTPOT_KM_TEST_MARKER"


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh config/data/runtime dirs, and a marker env value every kernel inherits."""
    dirs = {name: tmp_path / name for name in ("config", "data", "runtime", "work")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "")
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.setenv(MARKER, uuid.uuid4().hex)
    monkeypatch.chdir(dirs["work"])
    return dirs


def marked_kernels(marker: str | None = None) -> list[psutil.Process]:
    """Live kernel processes carrying this test's marker in their environment."""
    marker = marker or os.environ[MARKER]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            env = proc.environ()
            if env.get(MARKER) == marker and "ipykernel" in " ".join(proc.cmdline()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kernel_children(pid: int | None = None) -> list[psutil.Process]:
    """Kernel processes that are children of ``pid`` (default: this process)."""
    parent = psutil.Process(pid or os.getpid())
    out = []
    for child in parent.children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out


@pytest.fixture
def no_leftover_kernels(jupyter_dirs: dict[str, Path]) -> Iterator[None]:
    """Fail the test if any kernel it started is still alive after it ended."""
    marker = os.environ[MARKER]
    yield
    deadline = 10.0
    import time

    start = time.monotonic()
    while marked_kernels(marker) and time.monotonic() - start < deadline:
        time.sleep(0.1)
    left = marked_kernels(marker)
    for proc in left:
        proc.kill()
    assert not left, f"kernel processes left behind: {[p.pid for p in left]}"
