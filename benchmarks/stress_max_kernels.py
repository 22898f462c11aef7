"""Stress ``max_kernels``: the 100-concurrent-starts scenario, many times, counted from outside.

    .venv/bin/python benchmarks/stress_max_kernels.py              # 30 runs, about 30 minutes
    .venv/bin/python benchmarks/stress_max_kernels.py --runs 3     # a quick look

Not part of the test suite (``tests/test_concurrency.py`` runs the scenario once). Each run
starts a fresh host process holding a ``PooledKernelManager`` (pool of 4, ``max_kernels``
20) that fills its pool, takes 100 concurrent ``start_kernel`` calls, runs a cell in every
kernel it got, shuts them all down at once, waits for the refill, takes ``limit + 5``
concurrent starts and shuts everything down. Meanwhile this process reads the host's live
children from ``/proc/<host>/task/*/children`` about every millisecond: every child
counts (a forked child that has not exec'd its kernel yet carries the host's command
line), zombies do not. The report gives, per run and overall, the most live children seen
against the limit, and what they were at that moment. Exit status 1 if any run exceeded it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from environment import MARKER_VAR, JupyterDirs, Process, sweep

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from children import ChildSampler


async def scenario(pool: int, limit: int, starts: int) -> dict[str, object]:
    """The host side of one run; returns what the manager said (started, refused, errors)."""
    from hotpot_km import MaximumKernelsException, PooledKernelManager, WarmupError

    km = PooledKernelManager(
        kernel_pools={"python3": pool}, max_kernels=limit, fill_delay=0, max_warming=2
    )
    summary: dict[str, object] = {}

    async def burst(n: int, key: str) -> list[str]:
        results = await asyncio.gather(
            *(km.start_kernel() for _ in range(n)), return_exceptions=True
        )
        started = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, MaximumKernelsException)]
        others = [repr(r) for r in results if not isinstance(r, (str, MaximumKernelsException))]
        summary[key] = {"started": len(started), "refused": len(refused), "errors": others[:3]}
        return started

    async def run_cell(kernel_id: str) -> str:
        client = km.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=120)
            reply = await client.execute_interactive("import os; os.getpid()", timeout=120)
            return str(reply["content"]["status"])
        except RuntimeError:  # e.g. a port taken meanwhile by another process on a busy machine
            return "kernel died"
        finally:
            client.stop_channels()

    async def fill() -> None:
        while True:
            try:
                return await km.wait_for_pool()
            except WarmupError:  # a port race on a busy machine: the pool replaces the kernel
                summary["warm-up failures"] = int(summary.get("warm-up failures", 0)) + 1

    try:
        await fill()
        started = await burst(starts, "first burst")
        cells = await asyncio.gather(*(run_cell(k) for k in started))
        summary["cells"] = {status: cells.count(status) for status in sorted(set(cells))}
        await asyncio.gather(*(km.shutdown_kernel(k) for k in started))
        await fill()
        await asyncio.sleep(1)
        started = await burst(limit + 5, "second burst")
        await asyncio.gather(*(km.shutdown_kernel(k) for k in started))
    finally:
        await km.shutdown_all()
    return summary


def host_main(args: argparse.Namespace) -> None:
    summary = asyncio.run(scenario(args.pool, args.limit, args.starts))
    print("SUMMARY " + json.dumps(summary), flush=True)


def one_run(index: int, args: argparse.Namespace, root: Path) -> dict[str, object]:
    dirs = JupyterDirs(root, f"run{index}")
    marker = uuid.uuid4().hex
    env = dict(dirs.env(), **{MARKER_VAR: marker})
    argv = [sys.executable, __file__, "--host", f"--pool={args.pool}",
            f"--limit={args.limit}", f"--starts={args.starts}"]
    log = dirs.base / "host.log"
    began = time.monotonic()
    host = Process(argv, env=env, cwd=dirs.work, log=log)
    with ChildSampler(host.proc.pid, interval=args.interval) as sampler:
        try:
            status = host.wait(args.timeout)
        except Exception:
            status = None
    left = sweep(marker)
    text = log.read_text(errors="replace")
    summary = next((json.loads(line[8:]) for line in text.splitlines()
                    if line.startswith("SUMMARY ")), None)
    return {
        "run": index,
        "max": sampler.max,
        "limit": args.limit,
        "samples": sampler.samples,
        "seconds": round(time.monotonic() - began, 1),
        "status": status,
        "summary": summary,
        "at_max": sampler.at_max,
        "left_behind": left,
        "log_tail": None if status == 0 and summary else text[-3000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.001,
                        help="seconds between two samples of the host's children")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--json", type=Path, help="also write every run's record here")
    parser.add_argument("--host", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host:
        host_main(args)
        return 0

    records = []
    with tempfile.TemporaryDirectory(prefix="hotpot-stress-") as tmp:
        for index in range(1, args.runs + 1):
            record = one_run(index, args, Path(tmp))
            records.append(record)
            flag = "OVER THE LIMIT" if record["max"] > args.limit else "ok"
            print(f"run {index:2d}/{args.runs}: max {record['max']:2d} live children "
                  f"(limit {args.limit}), {record['samples']} samples in {record['seconds']} s, "
                  f"exit {record['status']}, {flag}", flush=True)
            if record["summary"]:
                print(f"        {json.dumps(record['summary'])}", flush=True)
            if record["max"] > args.limit:
                print("        at the maximum: " + "; ".join(record["at_max"]), flush=True)
            if record["left_behind"] or record["log_tail"]:
                print(f"        left behind: {record['left_behind']}\n{record['log_tail']}",
                      flush=True)
    worst = max(r["max"] for r in records)
    failed = [r["run"] for r in records if r["status"] != 0 or not r["summary"]]
    over = [r["run"] for r in records if r["max"] > args.limit]
    print(f"\n{len(records)} runs: at most {worst} live children against a limit of "
          f"{args.limit}; runs over the limit: {over or 'none'}; runs that failed: "
          f"{failed or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 1 if over or failed else 0


if __name__ == "__main__":
    sys.exit(main())
