"""Where the time of a handout goes, phase by phase (see phases.py), for this project.

    python benchmarks/breakdown.py handout [--reps 30] [--pyinstrument FILE] [--experiment ...]
    python benchmarks/breakdown.py server  [--reps 15] [--cold]
    python benchmarks/breakdown.py voila   [--reps 8]  [--cold] [--experiment fast_ready,template_cache]

``handout`` runs the pool in this process; ``server`` and ``voila`` run the real
servers with timers inside (``HOTPOT_BENCH_PHASES``). Each prints a table of the
mean and median milliseconds per repetition spent in each phase; indented phases
are part of the one above. Run it on a quiet machine: nothing else is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import phases
from environment import HERE, MARKER_VAR, JupyterDirs, sweep
from server_bench import KernelSocket, Server, new_session, notebook

HEAVY_CODE = "import numpy, scipy.signal, matplotlib.pyplot, pandas"


def summary(per_rep: list[dict[str, list[float]]], order: list[str]) -> list[str]:
    """Markdown table: per phase, calls and time per repetition (mean, median)."""
    labels = [label for label in order if any(label in rep for rep in per_rep)]
    labels += sorted({k for rep in per_rep for k in rep} - set(labels))
    lines = ["| phase | calls per rep | mean ms | median ms |", "| --- | ---: | ---: | ---: |"]
    for label in labels:
        totals = [sum(rep.get(label, [])) * 1000 for rep in per_rep]
        calls = statistics.mean(len(rep.get(label, [])) for rep in per_rep)
        lines.append(f"| {label.replace(' ', '&nbsp;', len(label) - len(label.lstrip()))} "
                     f"| {calls:.1f} | {statistics.mean(totals):.2f} "
                     f"| {statistics.median(totals):.2f} |")
    return lines


async def handout(args: argparse.Namespace, dirs: JupyterDirs) -> list[str]:
    os.environ.update(dirs.env())
    os.chdir(dirs.work)  # a plain manager writes connection files to the current directory
    import kernel_bench as kb

    if args.experiment:
        import experiments

        experiments.apply(args.experiment.split(","))
    missing = phases.install(phases.HANDOUT)
    km = kb.new_manager("pooled", 2)
    profiler = None
    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="enabled")
    per_rep = []
    try:
        for rep in range(args.reps):
            await kb.wait_ready(km)
            phases.take()
            if profiler:
                profiler.start()
            t0 = time.perf_counter()
            kid = await km.start_kernel(kernel_name="python3",
                                        **kb.launch_kwargs("cwd_env", str(dirs.work), rep))
            started = time.perf_counter()
            kc = km.get_kernel(kid).client()
            kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
            client = time.perf_counter()
            await kb.request(kc, "kernel_info_request", {}, timeout=60)
            ready = time.perf_counter()
            if profiler:
                profiler.stop()
            t = time.perf_counter()
            await kb.request(kc, "execute_request", {"code": "pass", "silent": True,
                                                     "store_history": False}, timeout=60)
            reference = time.perf_counter() - t
            kc.stop_channels()
            await km.shutdown_kernel(kid, now=True)
            found = phases.take()
            found["handout, start_kernel() to kernel_info reply"] = [ready - t0]
            found["probe: a new client for the kernel"] = [client - started]
            found["probe: kernel_info round trip"] = [ready - client]
            found["reference: round trip of a silent `pass`"] = [reference]
            per_rep.append(found)
    finally:
        await km.shutdown_all(now=True)
    order = ["handout, start_kernel() to kernel_info reply",
             *(label for _, label in phases.HANDOUT),
             "probe: a new client for the kernel", "probe: kernel_info round trip",
             "reference: round trip of a silent `pass`"]
    lines = summary(per_rep, order)
    if missing:
        lines.append(f"\nphases not found in this version: {', '.join(missing)}")
    if profiler:
        tree = profiler.output_text(unicode=True, show_all=True)
        await asyncio.to_thread(Path(args.pyinstrument).write_text, tree)
        lines.append(f"\npyinstrument tree written to {args.pyinstrument}")
    return lines


def server(args: argparse.Namespace, dirs: JupyterDirs) -> list[str]:
    if not args.cold:
        (dirs.config / "jupyter_server_config.json").write_text(json.dumps({
            "ServerApp": {"kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
            "PooledKernelManager": {"kernel_pools": {"python3": 2}, "_wait_at_startup": True}}))
    (dirs.work / "notebooks").mkdir()
    os.environ["HOTPOT_BENCH_PHASES"] = "server"
    srv = Server("server", sys.executable, dirs, [], cwd=dirs.work, log=dirs.base / "server.log")
    per_rep = []
    try:
        srv.wait_up()
        for rep in range(args.reps):
            srv.wait_pool()
            srv.api("GET", "/bench/phases")
            t0 = time.perf_counter()
            session_id, kernel_id = new_session(srv, f"notebooks/profile-{rep}.ipynb")
            posted = time.perf_counter()
            sock = KernelSocket(srv, kernel_id)
            opened = time.perf_counter()
            sock.execute("1+1")
            done = time.perf_counter()
            srv.wait_pool()
            t1 = time.perf_counter()
            srv.api("POST", f"/api/kernels/{kernel_id}/restart")
            restarted = time.perf_counter()
            sock.close()
            sock = KernelSocket(srv, kernel_id)
            reopened = time.perf_counter()
            sock.request("kernel_info_request", {})
            ready = time.perf_counter()
            sock.close()
            found = srv.api("GET", "/bench/phases").json()
            found.update({
                "client: session to 1+1 reply": [done - t0],
                "client:   POST /api/sessions": [posted - t0],
                "client:   websocket open": [opened - posted],
                "client:   1+1 round trip": [done - opened],
                "client: restart to kernel_info reply": [ready - t1],
                "client:   POST restart": [restarted - t1],
                "client:   websocket open after restart": [reopened - restarted],
                "client:   kernel_info round trip": [ready - reopened],
            })
            per_rep.append(found)
            srv.api("DELETE", f"/api/sessions/{session_id}")
    finally:
        srv.stop()
    clients = [k for k in per_rep[0] if k.startswith("client:")]
    return summary(per_rep, [*clients, *(label for _, label in phases.SERVER)])


def voila(args: argparse.Namespace, dirs: JupyterDirs) -> list[str]:
    app = dirs.work / "app"
    notebook(app / "dashboard.ipynb", HEAVY_CODE, 'print("BENCH_OK", 1 + 1)')
    if not args.cold:
        (dirs.config / "kernel_pool_init_python3.py").write_text(HEAVY_CODE + "\n")
        (app / "voila.json").write_text(json.dumps({
            "VoilaConfiguration": {
                "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
            "PooledKernelManager": {"kernel_pools": {"python3": 2}, "_wait_at_startup": True}}))
    os.environ["HOTPOT_BENCH_PHASES"] = "voila"
    os.environ["HOTPOT_BENCH_EXPERIMENTS"] = args.experiment
    srv = Server("voila", sys.executable, dirs, ["dashboard.ipynb"], cwd=app, token=False,
                 log=dirs.base / "voila.log")
    per_rep = []
    try:
        srv.wait_up(timeout=600)
        for _ in range(args.reps):
            srv.wait_pool()
            srv.api("GET", "/bench/phases")
            t0 = time.perf_counter()
            page = srv.http.get(srv.url + "/", timeout=300)
            took = time.perf_counter() - t0
            if page.status_code != 200 or "BENCH_OK 2" not in page.text:
                raise RuntimeError(f"page failed: HTTP {page.status_code}")
            found = srv.api("GET", "/bench/phases").json()
            found["client: GET page"] = [took]
            per_rep.append(found)
    finally:
        srv.stop()
    return summary(per_rep, ["client: GET page", *(label for _, label in phases.VOILA)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["handout", "server", "voila"])
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--cold", action="store_true", help="a plain server, no pool")
    parser.add_argument("--experiment", default="", help="comma-separated, see experiments.py")
    parser.add_argument("--pyinstrument", default="", help="handout: also write a tree here")
    args = parser.parse_args()
    args.reps = args.reps or {"handout": 30, "server": 15, "voila": 8}[args.what]
    work = HERE / ".work"
    work.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    os.environ[MARKER_VAR] = marker = uuid.uuid4().hex
    dirs = JupyterDirs(scratch, args.what)
    try:
        if args.what == "handout":
            lines = asyncio.run(handout(args, dirs))
        else:
            lines = {"server": server, "voila": voila}[args.what](args, dirs)
    finally:
        left = sweep(marker, settle=2)
        if left:
            print(f"killed leftover processes: {left}", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
