"""The core of the test suite on every supported Python: ``make test-pythons`` (or ``nox``).

The core is the pool engine, the in-process managers and the real jupyter_server and
Voila tests, installed with only the ``test-core`` extra. Interpreters are taken from
PATH (``python3.10``, ...) or, failing that, from pyenv's versions; none is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

#: The oldest and the newest Python the package supports (``requires-python``).
PYTHONS = ["3.10", "3.13"]

CORE_TESTS = ["tests/test_pooled.py", "tests/test_limited.py", "tests/test_servers.py"]

nox.options.error_on_missing_interpreters = True
nox.options.default_venv_backend = "venv"


def _runs(executable: str) -> bool:
    """Whether ``executable`` starts (a pyenv shim of an inactive version does not)."""
    try:
        return subprocess.run([executable, "-c", ""], capture_output=True).returncode == 0
    except OSError:
        return False


def _pyenv_versions() -> Path | None:
    """pyenv's versions directory: ``$PYENV_ROOT``, ``pyenv root``, or pyenv's default."""
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        root = found.stdout.strip() if found.returncode == 0 else None
    versions = Path(root or Path.home() / ".pyenv", "versions")
    return versions if versions.is_dir() else None


def _patch_level(path: Path) -> tuple[int, ...]:
    """(3, 10, 13) for ``.../versions/3.10.13/bin/python3.10``; () if not a plain release."""
    release = path.parent.parent.name
    parts = release.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def _expose(version: str) -> None:
    """Put a working ``python<version>`` first on PATH, where nox looks for it."""
    found = shutil.which(f"python{version}")
    if found and _runs(found):
        return
    versions = _pyenv_versions()
    if versions is None:
        return  # nox reports the interpreter as missing
    candidates = [
        p
        for p in versions.glob(f"{version}.*/bin/python{version}")
        if _patch_level(p) and _runs(str(p))
    ]
    if candidates:
        best = max(candidates, key=_patch_level)
        os.environ["PATH"] = os.pathsep.join([str(best.parent), os.environ.get("PATH", "")])


for _version in PYTHONS:
    _expose(_version)


@nox.session(python=PYTHONS, download_python="never")
def core(session: nox.Session) -> None:
    """Engine, in-process managers, jupyter_server and Voila tests on this Python."""
    session.install("-e", ".[test-core]")
    # arguments after `--` are added to the core's, and replace its tests if they name any
    names_tests = any(
        not arg.startswith("-") and Path(arg.split("::")[0]).exists() for arg in session.posargs
    )
    tests = [] if names_tests else CORE_TESTS
    # in parallel as `make test` runs them (the Makefile passes its PYTEST_WORKERS)
    workers = os.environ.get("PYTEST_WORKERS", "0")
    xdist = ["-n", workers, "--dist", "load", "--maxschedchunk", "1"] if workers != "0" else []
    session.run("python", "-m", "pytest", *tests, *xdist, *session.posargs)
