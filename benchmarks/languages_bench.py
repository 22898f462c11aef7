"""Start -> first reply per language, pooled vs cold; writes ``languages.md``.

    python benchmarks/languages_bench.py                  # every language, 10 reps; ~10 min
    python benchmarks/languages_bench.py --reps 3 ir      # one language
    python benchmarks/languages_bench.py --output /tmp/x  # languages.md elsewhere

Each rep starts a kernel with a request's own cwd and env (as jupyter_server does for a
session) and times until the reply to the user's first cell. That cell needs what the
language's init file sets up (libraries, data): a pooled kernel did that while it waited
(``kernel_pool_init_<name>.<ext>``), so its first cell is the cell alone; a cold kernel
has no init file, so its first cell is the init code followed by the cell. A pooled rep
waits until the pool refilled first, so it measures a handout, not a refill. ``make
bench`` runs it after ``run.py``; it needs R and Octave (``make test`` installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from jupyter_client.multikernelmanager import AsyncMultiKernelManager

HERE = Path(__file__).resolve().parent

#: The target of issue 19: a pooled first reply at least this many times faster than cold.
TARGET = 5.0

#: kernel name -> (init file extension, init code, the user's first cell). The R init loads
#: the packages Debian's r-base-core ships and the tidyverse building blocks Debian ships
#: with IRkernel; Octave's does real work without packages.
LANGUAGES = {
    "ir": (
        ".R",
        "library(stats); library(methods); library(utils); library(tools); "
        "library(parallel); library(splines); library(stats4); library(grid); "
        "library(compiler); library(jsonlite); library(cli); library(rlang); "
        "library(vctrs); library(pillar); library(glue); library(htmltools)",
        "fit <- lm(mpg ~ wt, data = mtcars); cat(round(coef(fit), 3))",
    ),
    "bash": (
        ".sh",
        "shopt -s extglob globstar; set -o pipefail; export LC_COLLATE=C; declare -A TOOLS; "
        'for t in python3 git R octave; do TOOLS[$t]=$(command -v "$t" || echo none); done',
        'echo "${TOOLS[python3]}" | wc -c',
    ),
    "xpython": (
        ".py",
        "import json, decimal, fractions, numpy, pandas",
        'print(pandas.DataFrame({"a": numpy.arange(1000)}).a.sum())',
    ),
    "octave": (
        ".m",
        "A = rand (400); [Q, R] = qr (A); s = svd (A); f = @(x) Q * (R \\ x);",
        "disp (norm (f (ones (400, 1))) > 0)",
    ),
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
    _, init, cell = LANGUAGES[name]
    km: Any
    if system == "cold":
        km = AsyncMultiKernelManager()
        code = f"{init}\n{cell}"
    else:
        from hotpot_km import PooledKernelManager

        km = PooledKernelManager(kernel_pools={name: 1}, fill_delay=0)
        code = cell
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


def p95(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def row(name: str, cold: list[float], pooled: list[float]) -> str:
    c, p = statistics.median(cold), statistics.median(pooled)
    ratio = c / p
    met = "met" if ratio >= TARGET else "missed"
    return (
        f"| {name} | {c * 1000:.0f} ms | {p95(cold) * 1000:.0f} ms | {p * 1000:.0f} ms "
        f"| {p95(pooled) * 1000:.0f} ms | {ratio:.1f}x | {met} | {len(cold)} |"
    )


def kernel_versions() -> list[str]:
    """What each language's kernel and runtime are, as installed."""
    found = []
    for package in ("bash_kernel", "xeus-python", "octave_kernel", "metakernel"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    for label, argv in {
        "R": ["R", "--version"],
        "IRkernel": ["R", "--slave", "-e", 'cat(format(packageVersion("IRkernel")))'],
        "Octave": ["octave", "--version"],
        "bash": ["bash", "--version"],
    }.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        words = out.split("\n", 1)[0].split()
        shown = next((w for w in words if w[:1].isdigit()), words[-1] if words else "missing")
        found.append(f"{label} {shown}")
    return found


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hotpot_km"],
                               cwd=HERE.parent, text=True, capture_output=True,
                               check=True).stdout.strip()
        return rev + (" with uncommitted changes in hotpot_km/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def shown_args(argv: list[str]) -> list[str]:
    """The command line without where the output went (a machine path)."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--output":
            skip = True
        elif not arg.startswith("--output="):
            shown.append(arg)
    return shown


async def run(languages: list[str], reps: int, cwd: str) -> list[str]:
    rows = []
    for name in languages:
        cold = await measure(name, "cold", reps, cwd)
        pooled = await measure(name, "pooled", reps, cwd)
        rows.append(row(name, cold, pooled))
        print(rows[-1], flush=True)
    return rows


def page(rows: list[str], languages: list[str], argv: list[str], took: float, rev: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Other languages: start -> first reply, pooled vs cold",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{' '.join(['python benchmarks/languages_bench.py', *shown_args(argv)])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; shared: other work may have run at the same time (load "
        f"average at the end {load})",
        f"- this project: git {rev}",
        f"- kernels: {', '.join(kernel_versions())}",
        f"- run time: {took / 60:.1f} min",
        "",
        "Each rep starts a kernel with its own cwd and env, as a jupyter_server session does, "
        "and times `start_kernel()` until the reply to the user's first cell. The cell needs "
        "what the init file sets up: the pooled kernel ran the init file while it waited, "
        "the cold one runs the init code and the cell as its first cell. A pooled rep waits "
        "for the pool to refill first (a handout, not a refill). The ratio is cold p50 / "
        f"pooled p50; target (issue 19): >= {TARGET:g}x for each language.",
        "",
        "| kernel | cold p50 | cold p95 | pooled p50 | pooled p95 | ratio | target | N |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        *rows,
        "",
        "Init files (`kernel_pool_init_<name>.<ext>`) and first cells:",
        "",
        "| kernel | init file | first cell |",
        "| --- | --- | --- |",
    ]
    for name in languages:
        ext, init, cell = (part.replace("|", "\\|") for part in LANGUAGES[name])
        lines.append(f"| {name} (`{ext}`) | `{init}` | `{cell}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--output", type=Path, default=HERE,
                        help="where languages.md goes (default: benchmarks/)")
    parser.add_argument("languages", nargs="*", default=list(LANGUAGES))
    args = parser.parse_args(argv)
    missing = [n for n in args.languages if n not in LANGUAGES]
    if missing:
        parser.error(f"unknown kernels: {', '.join(missing)} (known: {', '.join(LANGUAGES)})")
    started = time.monotonic()
    rev = git_revision()  # the code this run imports, whatever changes while it runs
    tmp = tempfile.mkdtemp(prefix="hotpot-langs-")
    try:
        config = Path(tmp, "config")
        config.mkdir()
        os.environ["JUPYTER_CONFIG_DIR"] = str(config)
        for name in args.languages:
            ext, init, _ = LANGUAGES[name]
            (config / f"kernel_pool_init_{name}{ext}").write_text(init + "\n")
        rows = asyncio.run(run(args.languages, args.reps, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "languages.md"
    path.write_text(page(rows, args.languages, argv, time.monotonic() - started, rev))
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
