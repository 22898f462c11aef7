"""Cold kernels vs hotpot_km 0.2.2 vs this project vs Voila's preheat, side by side in one run.

    python benchmarks/run.py            # full run, about 30 minutes; writes results.md + handout.png
    python benchmarks/run.py --quick --output /tmp/x   # smoke run with tiny N (the test suite's)

See benchmarks/README.md for what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import runner_bench
from environment import (
    HERE,
    MARKER_VAR,
    JupyterDirs,
    Process,
    ensure_old_venv,
    shown,
    sweep,
    venv_versions,
)
from gateway_bench import gateway_sessions
from report import SYSTEMS, Row, chart, table, target_table, targets
from server_bench import (
    Server,
    cold_fill,
    event_loop,
    notebook,
    restarts,
    sessions,
    voila_pages,
    voila_refill_pages,
)

HEAVY_CODE = "import numpy, scipy.signal, matplotlib.pyplot, pandas"
HEAVY_IMPORTS = "numpy,scipy.signal,matplotlib.pyplot,pandas"
LIGHT_CODE, LIGHT_IMPORTS = "import colorsys", "colorsys"
GROUPS = ("handout", "heavy", "burst", "server", "voila", "loop", "gateway", "runners", "fork")


@dataclass(frozen=True)
class Sizes:
    """Repetitions and pool sizes; the defaults make a full run of about 30 minutes on 2 cores."""

    handout_reps: int = 25  # each rep: one bare and one cwd/env handout
    heavy_reps: int = 10
    pool: int = 3
    burst_reps: int = 5
    burst: int = 12
    burst_pool: int = 4
    session_reps: int = 20
    restart_reps: int = 15
    server_pool: int = 2
    voila_reps: int = 8
    voila_pool: int = 3
    refill_reps: int = 16
    fill_pool: int = 4
    gateway_reps: int = 10
    gateway_slow_reps: int = 5
    gateway_slow: int = 10  # seconds the slow kernelspec's launch takes more
    gateway_pool: int = 1
    papermill_reps: int = 5
    runner_loop: int = 20  # notebooks in the nbclient loop (and its pool's size)
    runner_loop_reps: int = 3
    nbmake: int = 10  # notebooks in the pytest --nbmake run (and its pool's size)
    nbmake_reps: int = 3
    fork_refill_reps: int = 10
    mem_pool: int = 4


QUICK = Sizes(handout_reps=2, heavy_reps=1, pool=1, burst_reps=1, burst=3, burst_pool=1,
              session_reps=2, restart_reps=2, server_pool=1, voila_reps=1, voila_pool=1,
              fill_pool=1, gateway_reps=1, gateway_slow_reps=1, gateway_slow=2,
              papermill_reps=1, runner_loop=2, runner_loop_reps=1, nbmake=2, nbmake_reps=1,
              refill_reps=1, fork_refill_reps=1, mem_pool=1)

#: Where a pooled Voila page's time goes (phases.VOILA labels, summed per page).
BREAKDOWN = {
    "hand-out": "hand-out: start_kernel()",
    "readiness": "readiness: nbclient's client, until wait_for_ready() returns",
    "execution": "execution: the notebook's cells",
    "templates": "Jinja compiles the page templates",
}


class Names:
    """Scenario names as they appear in the table (some carry the run's sizes)."""

    def __init__(self, sizes: Sizes) -> None:
        self.bare = "handout: python3, no cwd/env"
        self.cwd_env = "handout: python3 with cwd + env"
        self.start_only = "handout with cwd + env: start_kernel() alone"
        self.heavy = "handout: heavy imports, until imports done"
        self.session = "jupyter_server: POST /api/sessions → 1+1 reply"
        self.voila = "Voila page (seed voila.json, notebook with heavy imports)"
        self.voila_refill = "Voila page while a refill warms up (heavy imports)"
        self.voila_paired = "Voila page, idle pool, paired with each refill page"
        self.page_parts = {
            "hand-out": "Voila page, where it goes: hand-out (start_kernel)",
            "readiness": "Voila page, where it goes: readiness (nbclient client ready)",
            "execution": "Voila page, where it goes: execution (the notebook's cells)",
            "rest": "Voila page, where it goes: rendering, HTTP and the rest",
            "templates": "Voila page, where it goes: of the rest, Jinja compiling templates",
        }
        self.burst = f"burst: {sizes.burst} starts on a pool of {sizes.burst_pool}, all ready"
        self.burst_each = f"burst: {sizes.burst} starts on a pool of {sizes.burst_pool}, each"
        self.restart = "jupyter_server restart → first execute_reply with its output (new websocket)"
        self.restart_post = "jupyter_server restart: POST alone"
        self.mem_bare = "memory: idle kernel RSS, bare"
        self.mem_heavy = "memory: idle kernel RSS, heavy imports"
        self.mem_pool = f"memory: whole pool RSS ({sizes.pool} heavy kernels)"
        self.loop = f"event loop: GET /api/status while {sizes.fill_pool} heavy kernels warm"
        self.gateway = "Kernel Gateway: POST /api/sessions → 1+1 reply"
        self.gateway_slow = (f"Kernel Gateway, kernel launch +{sizes.gateway_slow} s: "
                             "POST /api/sessions → 1+1 reply")
        self.papermill = "papermill CLI, heavy-import notebook: one run"
        self.runner_each = f"nbclient loop of {sizes.runner_loop} notebooks: each notebook"
        self.runner_loop = f"nbclient loop of {sizes.runner_loop} notebooks: whole loop"
        self.nbmake = f"pytest --nbmake on {sizes.nbmake} notebooks: one run"
        self.refill = "refill: one heavy kernel, handout → ready in the pool again"
        self.pss_idle = f"memory: PSS of {sizes.mem_pool} heavy kernels (+ template), idle"
        self.pss_cell = (f"memory: PSS of {sizes.mem_pool} heavy kernels (+ template), "
                         "after a typical cell in each")

    def order(self) -> list[str]:
        return [self.bare, self.cwd_env, self.start_only, self.heavy, self.session,
                self.voila, self.voila_paired, self.voila_refill, *self.page_parts.values(),
                self.burst, self.burst_each, self.restart, self.restart_post, self.gateway,
                self.gateway_slow, self.mem_bare, self.mem_heavy, self.mem_pool, self.loop,
                self.papermill, self.runner_each, self.runner_loop, self.nbmake, self.refill,
                self.pss_idle, self.pss_cell]

    def latency_panels(self) -> list[str]:
        return [self.start_only, self.cwd_env, self.heavy, self.voila, self.session,
                self.restart, self.gateway_slow, self.papermill, self.runner_each, self.refill]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    """One run: the interpreters per system, scratch dirs, collected rows and notes."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, pythons: dict[str, str]) -> None:
        self.args = args
        self.sizes = sizes
        self.names = Names(sizes)
        self.pythons = pythons
        self.marker = os.environ[MARKER_VAR]
        self.scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
        self.logs = self.scratch / "logs"
        self.logs.mkdir()
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.failed = False
        #: what a "heavy" kernel imports: ``--quick`` only checks that everything runs, and a
        #: small module does that without seconds of numpy, scipy, matplotlib and pandas
        self.code, self.imports = ((LIGHT_CODE, LIGHT_IMPORTS) if args.quick
                                   else (HEAVY_CODE, HEAVY_IMPORTS))

    def systems(self, *extra: str) -> list[str]:
        """cold, 0.2.2 (unless skipped), this project, and ``extra`` (``fork``, ``preheat``)."""
        return [s for s in ("cold", "old", "new", *extra) if s in self.pythons or s in extra]

    def python(self, system: str) -> str:
        return self.pythons["new" if system in ("cold", "preheat", "fork") else system]

    def attempt(self, what: str, system: str, body: Callable[[], list[Row]],
                names: list[str]) -> None:
        """Run one system of one scenario group; an error becomes a note, never an abort."""
        log(f"{what}: {SYSTEMS[system]}")
        started = time.monotonic()
        try:
            self.rows += body()
        except Exception as error:
            self.failed = True
            short = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            log(f"  failed: {short}\n{traceback.format_exc()}")
            self.notes.append(f"{what}, {SYSTEMS[system]}: failed ({short}); logs in "
                              f"{shown(self.logs)}")
            self.rows += [Row(n, system, note="error") for n in names]
        finally:
            left = sweep(self.marker)
            if left:
                self.notes.append(f"{what}, {SYSTEMS[system]}: {len(left)} process(es) still "
                                  f"running after shutdown, killed: {'; '.join(left[:3])}")
                log(f"  left behind: {left}")
            log(f"  done in {time.monotonic() - started:.0f} s")

    # -- manager-level scenarios -----------------------------------------------------------

    def kernel_bench(self, system: str, tag: str, dirs: JupyterDirs, *opts: str) -> dict:
        out = self.scratch / f"{tag}-{system}.json"
        kind = system if system in ("cold", "fork") else "pooled"
        argv = [self.python(system), str(HERE / "kernel_bench.py"), "--system", kind,
                "--workdir", str(dirs.work), "--out", str(out), *opts]
        proc = Process(argv, env=dirs.env(), cwd=dirs.work, log=self.logs / f"{tag}-{system}.log")
        try:
            code = proc.wait(timeout=1800)
        finally:
            proc.stop(grace=10)
        if code != 0:
            raise RuntimeError(f"kernel_bench exited with {code}:\n{proc.log()}")
        data = json.loads(out.read_text())
        self.warmup_failures(tag, system, data.get("warmup_failures", []))
        return data

    def warmup_failures(self, what: str, system: str, failures: list[str]) -> None:
        """Failed pool warm-ups (waited out, not measured) belong in the notes."""
        if failures:
            self.notes.append(f"{what}, {SYSTEMS[system]}: {len(failures)} pooled kernel(s) "
                              f"failed to warm up and were replaced ({failures[0][:120]})")

    def prime(self) -> None:
        """One unmeasured cold start with the heavy imports: page cache and font cache warm."""
        dirs = JupyterDirs(self.scratch, "prime")

        def body() -> list[Row]:
            self.kernel_bench("cold", "prime", dirs, "--scenario", "handout", "--reps", "1",
                              "--kinds", "bare", "--code", HEAVY_CODE)
            return []

        self.attempt("priming (not measured)", "cold", body, [])

    def handout(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        dirs = JupyterDirs(self.scratch, f"handout-{system}")
        data = self.kernel_bench(system, "handout", dirs, "--scenario", "handout",
                                 "--reps", str(s.handout_reps), "--pool", str(s.pool))
        mem = data["memory"]["kernel_rss"]
        return [Row(n.bare, system, data["samples"]["bare:kernel_info"]),
                Row(n.cwd_env, system, data["samples"]["cwd_env:kernel_info"]),
                Row(n.start_only, system, data["samples"]["cwd_env:start_kernel"]),
                Row(n.mem_bare, system, mem, unit="B")]

    def heavy(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        init = None if system == "cold" else self.code
        dirs = JupyterDirs(self.scratch, f"heavy-{system}", init_code=init)
        # fork mode: the template can only share imports it did itself (python_imports)
        imports = ["--imports", self.imports] if system == "fork" else []
        data = self.kernel_bench(system, "heavy", dirs, "--scenario", "handout", "--kinds",
                                 "bare", "--code", self.code, "--reps", str(s.heavy_reps),
                                 "--pool", str(s.pool), *imports)
        pool = data["memory"]["pool_rss"]
        return [Row(n.heavy, system, data["samples"]["bare:code_done"]),
                Row(n.mem_heavy, system, data["memory"]["kernel_rss"], unit="B"),
                Row(n.mem_pool, system, pool, unit="B", note="" if pool else "no pool")]

    def burst(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        dirs = JupyterDirs(self.scratch, f"burst-{system}")
        data = self.kernel_bench(system, "burst", dirs, "--scenario", "burst",
                                 "--reps", str(s.burst_reps), "--pool", str(s.burst_pool),
                                 "--burst", str(s.burst))
        return [Row(n.burst, system, data["samples"]["burst:all_ready"]),
                Row(n.burst_each, system, data["samples"]["burst:per_request"])]

    def fork(self, system: str) -> list[Row]:
        """Launch-based and forked refills of the same heavy pool, and their memory.

        ``--quick`` imports one small module instead: it only checks that this runs."""
        n, s = self.names, self.sizes
        code, imports = self.code, self.imports
        common = ["--code", code] if system == "cold" else ["--imports", imports]
        dirs = JupyterDirs(self.scratch, f"refill-{system}")
        refill = self.kernel_bench(system, "refill", dirs, "--scenario", "refill",
                                   "--reps", str(s.fork_refill_reps), "--pool", "1", *common)
        dirs = JupyterDirs(self.scratch, f"memory-{system}")
        cell = ["--cell", code] if self.args.quick else []  # quick: no pandas plot either
        memory = self.kernel_bench(system, "memory", dirs, "--scenario", "memory",
                                   "--pool", str(s.mem_pool), *common, *cell)
        mem = memory["samples"]
        if system == "fork" and not memory.get("template"):
            self.notes.append("memory, fork mode: no template process was found")
        self.notes.append(f"memory, {SYSTEMS[system]}: USS after the typical cell "
                          f"{mem['uss_cell'][0] / 2**20:.0f} MiB")
        return [Row(n.refill, system, refill["samples"]["refill"]),
                Row(n.pss_idle, system, mem["pss_idle"], unit="B"),
                Row(n.pss_cell, system, mem["pss_cell"], unit="B")]

    # -- server-level scenarios ------------------------------------------------------------

    def server_config(self, dirs: JupyterDirs, system: str, pool: int, wait: bool) -> None:
        if system == "cold":
            return
        app = {"kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"}
        if system == "new":  # the README's config, with its optional websocket class
            app["kernel_websocket_connection_class"] = (
                "hotpot_km.websocket.NoDelayWebsocketConnection")
        (dirs.config / "jupyter_server_config.json").write_text(json.dumps({
            "ServerApp": app,
            "PooledKernelManager": {"kernel_pools": {"python3": pool}, "_wait_at_startup": wait},
        }))

    def server(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        dirs = JupyterDirs(self.scratch, f"server-{system}")
        self.server_config(dirs, system, s.server_pool, wait=True)
        (dirs.work / "notebooks").mkdir()
        server = Server("server", self.python(system), dirs, [], cwd=dirs.work,
                        log=self.logs / f"server-{system}.log")
        try:
            server.wait_up()
            server.wait_pool()
            opened = sessions(server, s.session_reps)
            restarted = restarts(server, s.restart_reps)
        finally:
            server.stop()
            self.warmup_failures("server", system, server.warmup_failures)
        return [Row(n.session, system, opened), Row(n.restart, system, restarted["ready"]),
                Row(n.restart_post, system, restarted["post"])]

    def loop(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        init = None if system == "cold" else self.code
        dirs = JupyterDirs(self.scratch, f"loop-{system}", init_code=init)
        self.server_config(dirs, system, s.fill_pool, wait=False)
        server = Server("server", self.python(system), dirs, [], cwd=dirs.work,
                        log=self.logs / f"loop-{system}.log")
        try:
            up = server.wait_up()
            if system == "cold":
                latencies, took, failed = event_loop(server, up, lambda: cold_fill(
                    server, s.fill_pool, self.code))
            else:
                latencies, took, failed = event_loop(server, up,
                                                     lambda: server.wait_pool(settle=0))
        finally:
            server.stop()
            self.warmup_failures("loop", system, server.warmup_failures)
        note = f"event loop, {SYSTEMS[system]}: {s.fill_pool} heavy kernels ready {took:.1f} s " \
               "after the server first answered"
        if failed:
            note += (f"; {len(failed)} of {len(latencies)} GET /api/status answered HTTP "
                     f"{', '.join(map(str, sorted(set(failed))))} (timed all the same; see "
                     "README, Findings)")
        self.notes.append(note)
        return [Row(n.loop, system, latencies)]

    def gateway(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        samples = gateway_sessions(self.python(system), self.scratch, self.logs, system=system,
                                   reps=s.gateway_reps, slow_reps=s.gateway_slow_reps,
                                   slow=s.gateway_slow, pool=s.gateway_pool)
        return [Row(n.gateway, system, samples["python3"]),
                Row(n.gateway_slow, system, samples["python3-slow"])]

    def voila(self, system: str) -> list[Row]:
        n, s = self.names, self.sizes
        init = self.code if system in ("old", "new") else None
        dirs = JupyterDirs(self.scratch, f"voila-{system}", init_code=init)
        app = dirs.work / "app"
        notebook(app / "dashboard.ipynb", self.code, 'print("BENCH_OK", 1 + 1)')
        args = ["dashboard.ipynb"]
        if system in ("old", "new"):
            (app / "voila.json").write_text(json.dumps({
                "VoilaConfiguration": {
                    "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
                "PooledKernelManager": {"kernel_pools": {"python3": s.voila_pool},
                                        "_wait_at_startup": True},
            }, indent=2))
        if system == "preheat":
            args = ["--preheat_kernel=True", f"--pool_size={s.voila_pool}", *args]
        # this project's server also times the phases of each page (microseconds of cost)
        timed = system == "new"
        server = Server("voila", self.python(system), dirs, args, cwd=app, token=False,
                        log=self.logs / f"voila-{system}.log",
                        env={"HOTPOT_BENCH_PHASES": "voila"} if timed else None)
        paired: list[float] = []
        refill: list[float] = []
        try:
            server.wait_up(timeout=600)
            samples, failures, phases = voila_pages(server, s.voila_reps, expect="BENCH_OK 2",
                                                    phases=timed)
            if timed and not failures:
                paired, refill = voila_refill_pages(server, s.refill_reps, s.voila_pool,
                                                    expect="BENCH_OK 2")
        finally:
            server.stop()
            self.warmup_failures("voila", system, server.warmup_failures)
        if not failures:
            rows = [Row(n.voila, system, samples)]
            if timed:
                rows.append(Row(n.voila_paired, system, paired))
                rows.append(Row(n.voila_refill, system, refill))
                rows += self.page_breakdown(system, phases)
            return rows
        kinds = ", ".join(sorted(set(failures)))
        note = f"{kinds} ({len(failures)} of {len(failures) + len(samples)})"
        worked = (f"; the {len(samples)} that worked took {statistics.median(samples):.2f} s "
                  "(median)" if samples else "")
        self.notes.append(f"Voila page, {SYSTEMS[system]}: {len(failures)} of "
                          f"{len(failures) + len(samples)} requests failed ({kinds}){worked}")
        return [Row(n.voila, system, [], note=note)]

    # -- notebook runners through the pool service ----------------------------------------

    def runners(self, system: str) -> list[Row]:
        """papermill, an nbclient loop and pytest --nbmake, each a real command; "this
        project" is the installed kernelspec with ``hotpot-km serve`` running."""
        n, s = self.names, self.sizes
        rows = []
        heavy = self.code
        plan = [("papermill", heavy, 2), ("loop", None, s.runner_loop),
                ("nbmake", None, s.nbmake)]
        for what, init, pool in plan:
            dirs = JupyterDirs(self.scratch, f"runners-{what}-{system}",
                               init_code=init if system == "new" else None)
            log = self.logs / f"runners-{what}-{system}.log"
            service = None
            if system == "new":
                runner_bench.install_kernelspec(dirs)
                service = runner_bench.RunnerService(
                    dirs, pool, self.logs / f"runners-{what}-{system}-service.log")
            try:
                if what == "papermill":
                    rows.append(Row(n.papermill, system, runner_bench.papermill_runs(
                        dirs, s.papermill_reps, log, service, heavy)))
                elif what == "loop":
                    each, totals = runner_bench.nbclient_loop(
                        dirs, s.runner_loop, s.runner_loop_reps, log, service)
                    rows += [Row(n.runner_each, system, each),
                             Row(n.runner_loop, system, totals)]
                else:
                    rows.append(Row(n.nbmake, system, runner_bench.nbmake_runs(
                        dirs, s.nbmake, s.nbmake_reps, log, service)))
            finally:
                if service is not None:
                    service.stop()
        return rows
    def page_breakdown(self, system: str, pages: list[dict[str, list[float]]]) -> list[Row]:
        """Per page: hand-out, readiness, execution, and the rest of the page's time."""
        parts: dict[str, list[float]] = {key: [] for key in self.names.page_parts}
        for page in pages:
            spent = {key: sum(page.get(label, [])) for key, label in BREAKDOWN.items()}
            for key in ("hand-out", "readiness", "execution", "templates"):
                parts[key].append(spent[key])
            parts["rest"].append(page["page"][0] - spent["hand-out"] - spent["readiness"]
                                 - spent["execution"])
        return [Row(self.names.page_parts[key], system, values) for key, values in parts.items()]

    # -- the whole run ---------------------------------------------------------------------

    def run(self, groups: list[str]) -> None:
        if not self.args.quick:
            self.prime()
        n = self.names
        plan: dict[str, tuple[Callable[[str], list[Row]], list[str], list[str]]] = {
            "handout": (self.handout, self.systems(), [n.bare, n.cwd_env, n.start_only,
                                                       n.mem_bare]),
            "heavy": (self.heavy, self.systems("fork"), [n.heavy, n.mem_heavy, n.mem_pool]),
            "burst": (self.burst, self.systems("fork"), [n.burst, n.burst_each]),
            "server": (self.server, self.systems(), [n.session, n.restart, n.restart_post]),
            "voila": (self.voila, self.systems("preheat"),
                      [n.voila, n.voila_paired, n.voila_refill, *n.page_parts.values()]),
            "loop": (self.loop, self.systems(), [n.loop]),
            "gateway": (self.gateway, [s for s in self.systems() if s != "old"],
                        [n.gateway, n.gateway_slow]),
            # hotpot_km 0.2.2 has no pool service
            "runners": (self.runners, [x for x in self.systems() if x != "old"],
                        [n.papermill, n.runner_each, n.runner_loop, n.nbmake]),
            "fork": (self.fork, ["cold", "new", "fork"], [n.refill, n.pss_idle, n.pss_cell]),
        }
        for group in groups:
            body, systems, names = plan[group]
            for system in systems:
                self.attempt(group, system, lambda b=body, s=system: b(s), names)

    def sorted_rows(self) -> list[Row]:
        order = {name: i for i, name in enumerate(self.names.order())}
        ranks = {s: i for i, s in enumerate(SYSTEMS)}
        return sorted(self.rows, key=lambda r: (order.get(r.scenario, 99), ranks[r.system]))


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hotpot_km"], cwd=HERE.parent,
                               text=True, capture_output=True, check=True).stdout.strip()
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


def write_results(bench: Bench, output: Path, argv: list[str], started: float) -> Path:
    rows = bench.sorted_rows()
    names = bench.names
    found = targets(rows, {"start_only": names.start_only, "handout": names.cwd_env,
                           "voila": names.voila, "voila_refill": names.voila_refill,
                           "voila_paired": names.voila_paired,
                           "session": names.session, "burst": names.burst,
                           "restart": names.restart, "restart_post": names.restart_post,
                           "event_loop": names.loop, "gateway_slow": names.gateway_slow,
                           "papermill": names.papermill, "runner_loop": names.runner_loop,
                           "nbmake": names.nbmake, "refill": names.refill,
                           "pss_idle": names.pss_idle, "pss_cell": names.pss_cell})
    png = output / "handout.png"
    chart(rows, names.latency_panels(), png,
          goals={names.start_only: 0.005, names.cwd_env: 0.010, names.voila: 0.25,
                 names.session: 0.1, names.restart: 0.1, names.refill: 0.15})
    versions = {s: venv_versions(bench.pythons[s]) for s in ("old", "new") if s in bench.pythons}
    packages = ["python", "hotpot_km", "jupyter_client", "jupyter_server", "ipykernel", "voila",
                "pyzmq", "tornado"]
    sizes = ", ".join(f"{f.name}={getattr(bench.sizes, f.name)}" for f in fields(bench.sizes))
    lines = [
        "# hotpot_km benchmarks",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- command: `{' '.join(['python benchmarks/run.py', *argv])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; other work may have run at the same time",
        f"- this project: git {git_revision()}",
        f"- sizes: {sizes}",
        f"- run time: {(time.monotonic() - started) / 60:.1f} min",
        "- other languages (R, bash, xeus-python, Octave): [languages.md](languages.md), "
        "written by `languages_bench.py`, which `make bench` runs after this",
        "- traffic, measured on its own: [soak.md](soak.md) (a stream of visitors to the seed's "
        "Voila dashboard, `make soak`), [trace.md](trace.md) (a class arriving together)",
        "",
        "Versions (every system launches the same kernel: ipykernel from the project's venv):",
        "",
        "| venv: systems | " + " | ".join(packages) + " |",
        "| --- |" + " --- |" * len(packages),
    ]
    venvs = {"old": "`benchmarks/.work/venv-022`: hotpot_km 0.2.2",
             "new": "`.venv`: cold, this project, Voila preheat"}
    for system, found_versions in versions.items():
        lines.append(f"| {venvs[system]} | "
                     + " | ".join(found_versions.get(p, "—") for p in packages) + " |")
    lines += ["", "## Results", "",
              "Latencies are wall-clock seconds from the request to a kernel that answers; "
              "p99 of small N is close to the maximum. The ratio compares each p50 with the "
              "cold p50 of the same scenario in this run.", "", *table(rows), "",
              "## Targets", "", *target_table(found), "", "## Notes", ""]
    lines += [f"- {note}" for note in bench.notes] or ["- none"]
    lines += ["", f"![handout latency distributions]({png.name})", ""]
    path = output / "results.md"
    path.write_text("\n".join(lines))
    print("\n".join([*table(rows), "", *target_table(found)]), flush=True)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny N and pools of 1: checks that everything runs, nothing more")
    parser.add_argument("--output", type=Path, default=HERE,
                        help="where results.md and handout.png go (default: benchmarks/)")
    parser.add_argument("--work", type=Path, default=HERE / ".work",
                        help="the 0.2.2 venv and scratch dirs (default: benchmarks/.work)")
    parser.add_argument("--skip-old", action="store_true",
                        help="no hotpot_km 0.2.2 rows (no venv to set up)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated scenario groups out of {','.join(GROUPS)}")
    parser.add_argument("--keep", action="store_true", help="keep scratch dirs and logs")
    for f in fields(Sizes):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None,
                            help=f"override (full default {f.default})")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(GROUPS)
    if unknown:
        parser.error(f"unknown scenario groups: {', '.join(sorted(unknown))}")
    args.work, args.output = args.work.resolve(), args.output.resolve()
    return args


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    # Stopped by SIGTERM or SIGINT (even when started in the background, where SIGINT is
    # ignored), the run still stops its servers and kernels.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    started = time.monotonic()
    sizes = QUICK if args.quick else Sizes()
    sizes = replace(sizes, **{f.name: getattr(args, f.name) for f in fields(Sizes)
                              if getattr(args, f.name) is not None})
    args.work.mkdir(parents=True, exist_ok=True)
    args.output.mkdir(parents=True, exist_ok=True)
    os.environ[MARKER_VAR] = uuid.uuid4().hex
    pythons = {"cold": sys.executable, "new": sys.executable}
    if not args.skip_old:
        pythons["old"] = str(ensure_old_venv(args.work, log))
    bench = Bench(args, sizes, pythons)
    try:
        bench.run([g for g in GROUPS if g in args.only.split(",")])
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        left = sweep(bench.marker, settle=0)
        if left:
            log(f"killed leftover processes: {left}")
        if args.keep or bench.failed:
            log(f"scratch dirs and logs kept in {bench.scratch}")
        else:
            shutil.rmtree(bench.scratch, ignore_errors=True)
    path = write_results(bench, args.output, argv, started)
    log(f"wrote {path} and {args.output / 'handout.png'} in "
        f"{(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
