"""A class arriving together: static pools of 3 and 10 against one that follows demand.

    python benchmarks/trace_bench.py                    # about 13 minutes; writes trace.md
    python benchmarks/trace_bench.py --quiet-after 60 --output trace-out

The trace (issue 18, Deliver 6): a quiet period, a class of 30 visitors arriving at random
within 60 s (the same seeded times for every system), each keeping its kernel for
``--session`` seconds, then a quiet period. Each system is a plain ``PooledKernelManager``
in its own process and Jupyter dirs, with a ``kernel_pool_init_python3.py`` that imports
numpy and pandas (the warm-up a dashboard needs) and the defaults otherwise
(``max_warming`` None: CPUs - 1, CPUs + 1 while visits overlap; ``fill_delay`` 1 s).

Time-compressed: the issue's quiet tail is 10 minutes and ``scale_down_after`` defaults to
120 s; here the tail is ``--quiet-after`` s (default 150) and the demand-based pool runs
with ``scale_down_after`` = ``--scale-down-after`` s (default 60), the same ratio of tail to
hold-time as 10 min to 4 min. Idle kernel-seconds of a static pool grow with the tail's
length; the adaptive pool's only until it scaled down.

Per system: warm % (starts served by a ready pooled kernel; one that waited for a warming
kernel it claimed is not counted as warm), p50/p95 of start_kernel() until the
kernel answers ``kernel_info``, idle kernel-seconds (pooled kernels, ready or warming,
integrated over the trace: processes that serve nobody), peak RSS of all kernel processes,
and the pool's kernels at the end (at night).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from environment import MARKER_VAR, JupyterDirs, shown, sweep  # noqa: E402

INIT = "import numpy, pandas"
SYSTEMS = {
    "static pool of 3": 3,
    "static pool of 10": 10,
    'pool {"min": 1, "max": 10}': {"min": 1, "max": 10},
}


# -- one system, in its own process ------------------------------------------------------------


async def run_system(args: argparse.Namespace) -> dict[str, Any]:
    from kernel_bench import kernel_processes, probe, rss

    from hotpot_km import PooledKernelManager

    pools = json.loads(args.child)
    km = PooledKernelManager(
        kernel_pools={"python3": pools}, scale_down_after=args.scale_down_after
    )
    pool = km.kernel_pool
    await km.wait_for_pool()
    idle_seconds = 0.0
    peak_rss = 0
    samples: list[tuple[float, int, int]] = []  # (t, pooled kernels, target)
    began = time.perf_counter()
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal idle_seconds, peak_rss
        last = time.perf_counter()
        tick = 0
        while not stop.is_set():
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            view = pool.snapshot().pools[0]
            held = view.count("ready") + view.count("warming")
            idle_seconds += held * (now - last)
            last = now
            samples.append((round(now - began, 2), held, view.target))
            tick += 1
            if tick % 4 == 0:  # RSS once a second: reading it costs CPU too
                pids = [p.pid for p in kernel_processes()]
                peak_rss = max(peak_rss, sum(await asyncio.to_thread(rss, pids)))

    sampler = asyncio.create_task(sample())
    latencies: list[float] = []

    async def visit(at: float) -> None:
        await asyncio.sleep(max(at - (time.perf_counter() - began), 0))
        started = time.perf_counter()
        kid = await km.start_kernel()
        answered, _ = await probe(km, kid, None)
        latencies.append(answered - started)
        await asyncio.sleep(args.session)
        await km.shutdown_kernel(kid, now=True)

    rng = random.Random(args.seed)
    arrivals = sorted(args.quiet_before + rng.uniform(0, args.window) for _ in range(args.visitors))
    await asyncio.gather(*(visit(at) for at in arrivals))
    await asyncio.sleep(args.quiet_after)
    stop.set()
    await sampler
    view = pool.snapshot().pools[0]
    stats = pool.stats.for_name("python3")
    starts = stats["starts"]
    await km.shutdown_all(now=True)
    latencies.sort()
    return {
        "pooled": starts.get("pooled", 0),
        "cold": starts.get("cold", 0),
        "waited": stats["wait_seconds"].get("count", 0),  # pooled, but for a warming kernel
        "p50": statistics.median(latencies),
        "p95": latencies[max(round(0.95 * len(latencies)) - 1, 0)],
        "idle_kernel_seconds": idle_seconds,
        "peak_rss": peak_rss,
        "at_night": view.count("ready") + view.count("warming"),
        "peak_pool": max(s[1] for s in samples),
        "seconds": time.perf_counter() - began,
        "samples": samples,
    }


# -- the comparison ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        result = asyncio.run(run_system(args))
        Path(args.json).write_text(json.dumps(result))
        return 0
    work = args.work / f"trace-{os.getpid()}"
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    started = time.time()
    for system, pools in SYSTEMS.items():
        dirs = JupyterDirs(work, system.split(" ")[-1].strip('{}":, ') or "pool", INIT)
        marker = f"trace-{os.getpid()}-{len(rows)}"
        env = dict(dirs.env(), **{MARKER_VAR: marker, "PYTHONPATH": str(HERE)})
        out = dirs.base / "result.json"
        argv_child = [
            sys.executable, __file__, "--child", json.dumps(pools), "--json", str(out),
            *[f"--{k.replace('_', '-')}={getattr(args, k)}" for k in TUNABLES],
        ]
        print(f"[trace] {system} ...", flush=True)
        with open(dirs.base / "log.txt", "wb") as log:
            subprocess.run(argv_child, env=env, cwd=dirs.work, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        rows[system] = json.loads(out.read_text())
        left = sweep(marker)
        if left:
            notes.append(f"{system}: left behind and killed: {left}")
    write(args, rows, notes, time.time() - started)
    return 0


TUNABLES = ("visitors", "window", "session", "quiet_before", "quiet_after",
            "scale_down_after", "seed")


def write(args: argparse.Namespace, rows: dict[str, dict[str, Any]], notes: list[str],
          took: float) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    static10 = rows.get("static pool of 10")
    lines = [
        "# A class arriving together (trace benchmark)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `{' '.join(['python', 'benchmarks/trace_bench.py', *shown_args()])}`",
        f"- machine: {os.cpu_count()} CPUs; other work may have run at the same time",
        f"- trace: quiet {args.quiet_before:g} s, {args.visitors} visitors within "
        f"{args.window:g} s (seed {args.seed}), each keeping its kernel {args.session:g} s, "
        f"quiet {args.quiet_after:g} s; the demand-based pool with scale_down_after "
        f"{args.scale_down_after:g} s (time-compressed: see the script's docstring)",
        f"- warm-up: `{INIT}` in kernel_pool_init_python3.py; run time {took / 60:.1f} min",
        "",
        "| scenario | system | warm % | p50 | p95 | idle kernel-seconds | peak kernel RSS "
        "| pool at the end | vs static 10 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for system, r in rows.items():
        warm = warm_share(r)
        versus = "—"
        if static10 is not None and r is not static10:
            warm10 = warm_share(static10)
            share = r["idle_kernel_seconds"] / max(static10["idle_kernel_seconds"], 1e-9)
            versus = f"warm {warm - warm10:+.0f} points, idle {100 * share:.0f} %"
        lines.append(
            f"| class of {args.visitors} in {args.window:g} s | {system} | {warm:.0f} % "
            f"| {r['p50']:.2f} s | {r['p95']:.2f} s | {r['idle_kernel_seconds']:.0f} "
            f"| {r['peak_rss'] / 2**20:.0f} MiB | {r['at_night']} | {versus} |"
        )
    lines += ["", "Target (issue 18): the adaptive pool's warm % within 5 points of static 10 "
              "with <= 50 % of its idle kernel-seconds."]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    path = args.output / "trace.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"[trace] wrote {shown(path)}")


def shown_args() -> list[str]:
    """The command line without where the output and scratch dirs went (machine paths)."""
    shown: list[str] = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--output", "--work"):
            skip = True
            continue
        if not arg.startswith(("--output=", "--work=")):
            shown.append(arg)
    return shown


def warm_share(r: dict[str, Any]) -> float:
    """Percent of starts served by a ready pooled kernel."""
    return 100 * (r["pooled"] - r["waited"]) / max(r["pooled"] + r["cold"], 1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=30)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the class arrives in")
    parser.add_argument("--session", type=float, default=20.0,
                        help="seconds each visitor keeps its kernel")
    parser.add_argument("--quiet-before", type=float, default=30.0)
    parser.add_argument("--quiet-after", type=float, default=150.0)
    parser.add_argument("--scale-down-after", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--output", type=Path, default=HERE)
    parser.add_argument("--work", type=Path, default=HERE / ".work")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
