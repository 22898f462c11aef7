"""The suite's one rerun (``tests/port_race.py``): only a test that failed while a kernel
lost a port to another process runs again, and every rerun is listed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = """\
import sys
from pathlib import Path

FLAG = Path(__file__).with_name("raced")


def test_raced_once():
    if not FLAG.exists():
        FLAG.write_text("")
        print("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')",
              file=sys.stderr)
        raise AssertionError("the kernel did not answer")


def test_raced_every_time():
    print("zmq.error.ZMQError: Address already in use", file=sys.stderr)
    raise AssertionError("the kernel did not answer")


def test_fails_for_another_reason():
    raise AssertionError("a real failure")


def test_passes():
    pass
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_only_a_port_race_failure_runs_again_and_is_listed(tmp_path: Path, workers: str) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(TESTS)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "port_race", "-p", "no:cacheprovider",
         "-n", workers, "-q", "-rf", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "2 failed, 2 passed" in out, out
    failed = {line.split()[1] for line in out.splitlines() if line.startswith("FAILED ")}
    assert {f.split("::")[1] for f in failed} == {
        "test_raced_every_time", "test_fails_for_another_reason"
    }, out
    reruns = sorted(line for line in out.splitlines() if line.startswith("RERUN "))
    assert [line.split("::")[1].split(":")[0] for line in reruns] == [
        "test_raced_every_time", "test_raced_once"
    ], out
    # where the first run failed: the innermost line of the test's own file
    line = TESTS.splitlines().index('        raise AssertionError("the kernel did not answer")') + 1
    first = "passed on rerun; first run: AssertionError: the kernel did not answer at "
    assert f"{first}tests/test_sample.py:{line}" in out, out
