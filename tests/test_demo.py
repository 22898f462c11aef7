"""`make demo` end to end: the example dashboard, cold and pooled, in real Voila processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import marked_kernels

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftover_kernels")
def test_demo_measures_cold_and_pooled_pages(jupyter_dirs):
    result = subprocess.run(
        [sys.executable, str(DEMO), "--loads", "1", "--no-serve"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"cold Voila\s+\d+\.\d+s", result.stdout)
    assert re.search(r"Voila \+ hotpot_km\s+\d+\.\d+s", result.stdout)
    assert re.search(r"loads \d+\.\dx faster", result.stdout)
    for part in ("hand-out", "readiness", "execution", "rendering"):
        assert re.search(rf"{part}.*\s\d+\.\d+\s+\d+\.\d+$", result.stdout, re.M), part
    assert not marked_kernels()
