"""The benchmark harness runs end to end (tiny N, no timing asserts) and cleans up after itself."""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: Every scenario group of ``run.py``, in three runs that go side by side when the suite
#: runs in parallel, each with the rows its table must show.
PARTS = {
    "handout,heavy,burst,server,fork": ["| hotpot_km, fork mode |"],
    "voila,loop": ["| Voila --preheat_kernel |"],
    "gateway,runners": [
        "| papermill CLI",
        "| nbclient loop of 2 notebooks: whole loop",
        "| pytest --nbmake",
        "| Kernel Gateway, kernel launch +2 s: POST /api/sessions → 1+1 reply | cold |",
    ],
}


def test_the_parts_cover_every_scenario_group() -> None:
    tree = ast.parse((BENCHMARKS / "run.py").read_text())
    groups = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "GROUPS"
    )
    assert sorted(g for part in PARTS for g in part.split(",")) == sorted(groups)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("groups", list(PARTS))
def test_quick_benchmark_writes_table_and_chart(tmp_path: Path, groups: str) -> None:
    # hotpot_km 0.2.2 rows need a venv from PyPI; the full run (make bench) has them.
    # Scratch dirs not in the checkout (CI's user may not write there), under a short path
    # (a service's socket path in them must fit in a sockaddr_un).
    with tempfile.TemporaryDirectory(prefix="hotpot-bench-") as work:
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--skip-old",
             "--only", groups, "--output", str(tmp_path), "--work", work],
            capture_output=True, text=True, timeout=840,
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    table = (tmp_path / "results.md").read_text()
    assert "| scenario | system | p50 | p99 | ratio to cold (p50) | N |" in table
    for row in ("| cold |", "| hotpot_km (this project) |", *PARTS[groups]):
        assert row in table
    assert "## Targets" in table
    assert "| error |" not in table, result.stdout[-4000:]
    png = (tmp_path / "handout.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.timeout(600)
def test_languages_benchmark_writes_its_page(tmp_path: Path) -> None:
    """``make bench``'s second step, with one rep of one language: the page names where it
    ran and has the table row with its verdict."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "languages_bench.py"), "--reps", "1",
         "--output", str(tmp_path), "bash"],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    page = (tmp_path / "languages.md").read_text()
    for line in ("- machine: ", "- this project: git ", "- kernels: bash_kernel ",
                 "| kernel | cold p50 | cold p95 | pooled p50 | pooled p95 | ratio | target | N |"):
        assert line in page
    row = next(line for line in page.splitlines() if line.startswith("| bash |"))
    assert row.endswith(("| met | 1 |", "| missed | 1 |")), row
    assert str(tmp_path) not in page  # no machine path in a page meant to be committed
