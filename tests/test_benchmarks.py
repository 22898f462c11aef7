"""The benchmark harness runs end to end (tiny N, no timing asserts) and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_benchmark_writes_table_and_chart(tmp_path: Path) -> None:
    # hotpot_km 0.2.2 rows need a venv from PyPI; the full run (make bench) has them.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--skip-old",
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=840,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    table = (tmp_path / "results.md").read_text()
    assert "| scenario | system | p50 | p99 | ratio to cold (p50) | N |" in table
    for system in ("| cold |", "| hotpot_km (this project) |", "| hotpot_km, fork mode |",
                   "| Voila --preheat_kernel |"):
        assert system in table
    for scenario in ("papermill CLI", "nbclient loop of 2 notebooks: whole loop", "pytest --nbmake"):
        assert f"| {scenario}" in table
    assert "## Targets" in table
    assert "| Kernel Gateway, kernel launch +2 s: POST /api/sessions → 1+1 reply | cold |" in table
    assert "| error |" not in table, result.stdout[-4000:]
    png = (tmp_path / "handout.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
