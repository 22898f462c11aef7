"""Start -> first reply per language, pooled vs cold (``python benchmarks/languages_bench.py``).

Each rep starts a kernel with a request's own cwd and env (as jupyter_server does for a
session) and times until the reply to its first cell, which is the init file's code: a
cold kernel does the work then, a pooled one did it while waiting (its init file). A
pooled rep waits until the pool refilled first, so it measures a handout, not a refill.
Prints a markdown table; not part of ``make bench`` (it needs R and Octave, which
``make test`` installs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.multikernelmanager import AsyncMultiKernelManager

#: kernel name -> (init file extension, realistic init code)
LANGUAGES = {
    "ir": (".R", "library(stats); library(methods); library(tools); library(grid)"),
    "bash": (".sh", "shopt -s extglob; export LC_COLLATE=C; true"),
    "xpython": (".py", "import json, decimal, fractions, numpy, pandas"),
    "octave": (".m", "pkg load; x = magic(4); clear x"),
}


async def first_reply(km: AsyncMultiKernelManager, name: str, code: str, cwd: str) -> float:
    """Seconds from ``start_kernel`` to the reply of the first cell."""
    env = dict(os.environ, BENCH_SESSION=f"{time.time()}")
    start = time.perf_counter()
    kid = await km.start_kernel(kernel_name=name, cwd=cwd, env=env)
    kc = km.get_kernel(kid).client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        reply = await kc.execute_interactive(code, timeout=120, output_hook=lambda msg: None)
        elapsed = time.perf_counter() - start
        assert reply["content"]["status"] == "ok", reply["content"]
        return elapsed
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(kid, now=True)


async def measure(name: str, system: str, reps: int, cwd: str) -> list[float]:
    code = LANGUAGES[name][1]
    km: Any
    if system == "cold":
        km = AsyncMultiKernelManager()
    else:
        from hotpot_km import PooledKernelManager

        km = PooledKernelManager(kernel_pools={name: 1}, fill_delay=0)
    samples = []
    try:
        for _ in range(reps):
            if system == "pooled":
                await km.wait_for_pool()
                await asyncio.sleep(0.3)
            samples.append(await first_reply(km, name, code, cwd))
    finally:
        await km.shutdown_all()
    return samples


async def table(languages: list[str], reps: int, cwd: str) -> None:
    print("| kernel | first cell (= init file) | cold p50 | pooled p50 | ratio | N |")
    print("|---|---|---|---|---|---|")
    for name in languages:
        cold = await measure(name, "cold", reps, cwd)
        pooled = await measure(name, "pooled", reps, cwd)
        c, p = statistics.median(cold), statistics.median(pooled)
        print(
            f"| {name} | `{LANGUAGES[name][1]}` | {c * 1000:.0f} ms | {p * 1000:.0f} ms "
            f"| {c / p:.1f}x | {reps} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("languages", nargs="*", default=list(LANGUAGES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "config")
        config.mkdir()
        os.environ["JUPYTER_CONFIG_DIR"] = str(config)
        for name in args.languages:
            ext, code = LANGUAGES[name]
            (config / f"kernel_pool_init_{name}{ext}").write_text(code + "\n")
        asyncio.run(table(args.languages, args.reps, tmp))


if __name__ == "__main__":
    sys.exit(main())
