"""Regenerate docs/hotpot-km-status.png: `hotpot-km status` of a pool with some history.

Run from the repository root with the test environment (`make .venv/.test-installed`):
``.venv/bin/python docs/status_screenshot.py``. Needs ``rsvg-convert`` (Debian: librsvg2-bin).
It starts real kernels in a throw-away Jupyter environment.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).parent
REPORTS_INIT = "import sqlite3\nsqlite3.connect('file:/srv/reports.db?mode=ro', uri=True)\n"


async def full(km, name: str = "python3") -> None:
    """Until the pool of ``name`` holds its size in ready kernels."""
    while True:
        pool = next(p for p in km.kernel_pool.snapshot().pools if p.kernel_name == name)
        if pool.count("ready") >= pool.size:
            return
        await asyncio.sleep(0.1)


async def history(km) -> None:
    await full(km)
    for _ in range(7):
        await km.start_kernel()
        await asyncio.sleep(0.3)
    await km.start_kernel(env={**os.environ, "PYTHONPATH": "/srv/lib"})  # cold: startup_env
    await km.start_kernel(kernel_name="reports")  # cold: its warm-ups fail
    kernel_id = await km.start_kernel()
    await full(km)
    await km.restart_kernel(kernel_id)
    await asyncio.sleep(1.5)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config", "data", "runtime"):
            os.environ[f"JUPYTER_{name.upper()}_DIR"] = str(Path(tmp) / name)
        os.environ["JUPYTER_PATH"] = ""
        spec = Path(tmp) / "data" / "kernels" / "reports"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "reports", "language": "python"})
        )
        os.chdir(tmp)

        from hotpot_km.mapping import PooledMappingKernelManager
        from hotpot_km.status import manager_status
        from hotpot_km.status_client import render_status

        async def run() -> dict:
            km = PooledMappingKernelManager(
                kernel_pools={"python3": 3, "reports": 1},
                python_imports=["numpy", "pandas"],
                initialization_code={"reports": REPORTS_INIT},
                fill_delay=0.2,
                max_kernels=16,
                max_retry_delay=2.0,
            )
            await asyncio.wait_for(history(km), 300)
            doc = manager_status(km)
            await km.shutdown_all()
            return doc

        doc = asyncio.run(run())
    console = Console(record=True, width=96, file=io.StringIO())
    console.print("$ hotpot-km status --url http://127.0.0.1:8888/", style="bold")
    console.print(render_status(doc))
    svg = HERE / "hotpot-km-status.svg"
    # keep the spaces at the start of styled segments (rsvg-convert collapses them otherwise)
    svg.write_text(
        console.export_svg(title="hotpot-km status").replace(
            "<svg ", '<svg xml:space="preserve" ', 1
        )
    )
    png = HERE / "hotpot-km-status.png"
    subprocess.run(["rsvg-convert", "-z", "1.5", "-o", str(png), str(svg)], check=True)
    svg.unlink()
    print(png)


if __name__ == "__main__":
    main()
