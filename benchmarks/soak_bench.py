"""Traffic soak: a stream of browser-like visits to the seed's Voila dashboard, pooled vs cold.

    python benchmarks/soak_bench.py                   # 300 pooled / 60 cold visits at 3 and 8
    python benchmarks/soak_bench.py --visits 40 --cold-visits 15 --output /tmp/soak
    python benchmarks/soak_bench.py --config '{"PooledKernelManager":
        {"fork_from_template": {"python3": true}}}' --systems pooled

Issue 18, Deliver 6 (the soak). Each row is one real Voila server on 127.0.0.1, started as
a user starts it (``voila --no-browser dashboard.ipynb``) with the seed's files verbatim:
``examples/dashboard/dashboard.ipynb`` and ``voila.json`` in the directory it starts from,
and ``kernel_pool_init_python3.py`` in its Jupyter config dir. "cold" is the same Voila in
a directory without the ``voila.json`` (Voila's own kernel manager). ``--config`` adds a
config (JSON) to the pooled server's config dir, as a user would add settings; without it
the pool runs with whatever its defaults are.

A visit is what a browser's visit costs the server: GET the page (Voila streams it; the
body is read to its end and must hold the notebook's output), then the beacon the page's
``beforeunload`` handler sends: ``POST /voila/api/shutdown/<kernel id>`` as multipart form
data whose ``_xsrf`` field is the ``_xsrf`` cookie's value ("" without one), with the
cookies the page set. ``--concurrency`` visitors run at once, each starting its next visit
when the previous one ended (a closed loop), until ``--visits`` pages were served.

Without hotpot_km Voila sets no ``_xsrf`` cookie, so a browser's beacon gets 403
(voila#1458) and every visit would leave its kernel running; in a cold row the harness
then ends the kernel itself (the same POST with a cookie and header of its own), so that the
cold server's throughput is not that of a machine filling up. The table counts those 403s.

Measured per row: pages/s (visits / wall time from the first request to the last beacon's
answer), the ratio to the cold row of the same concurrency, warm % (page starts served by
a ready pooled kernel, from the pool's own counts in ``/api/hotpot_km/status``; a start
that waited for a warming kernel is not warm), p50/p95 of the page (GET until its last
byte), errors, the server's kernel processes (its descendants in ``/proc``, fork templates
counted apart) and their RSS before the visits, at their peak and ``--settle`` s after the
last one, and the server's own RSS and open fds before and after. "Before" is after
``--warmup-visits`` visits that are not measured (the server's first pages compile Jinja
templates and fill caches; its RSS before any page is given too) and the pool full again.
Results go to ``soak.md`` next to the script (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from environment import MARKER_VAR, JupyterDirs, Process, free_port, shown, sweep  # noqa: E402

EXAMPLE = HERE.parent / "examples" / "dashboard"
NOTEBOOK = "dashboard.ipynb"
INIT_FILE = "kernel_pool_init_python3.py"
#: In the page only once the notebook ran (Voila 0.5 embeds the outputs as JSON): the plot,
#: and the text form of the summary table of the last cell.
EXPECT = ("image/png", "count  2000.000")
KERNEL_ID = re.compile(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"')
#: A fork template's command line (hotpot_km.fork); its children are kernels.
TEMPLATE_MARK = "hotpot_km/fork/template.py"
#: The pool's status in a Voila without authentication (its default): the harness reads the
#: pool's counts from it. It adds two routes and changes nothing else.
STATUS_CONFIG = {"HotpotKMStatus": {"allow_unauthenticated": True}}
PAGE = os.sysconf("SC_PAGE_SIZE")

TARGET_SPEEDUP = 5.0  # seed config at concurrency 3: pages/s >= 5x cold
TARGET_WARM = 90.0  # ... with >= 90 % warm
TARGET_RSS_GROWTH = 10.0  # server RSS growth over the visits, %


# -- processes, from /proc -----------------------------------------------------------------------


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Live children of ``pid`` (of any of its threads); zombies are not counted."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        for child in read_text(f"/proc/{pid}/task/{task}/children").split():
            stat = read_text(f"/proc/{child}/stat")
            if stat and stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X"):
                found.append(int(child))
    return found


def descendants(pid: int) -> tuple[list[int], list[int]]:
    """The server's kernel processes (every descendant but fork templates) and templates."""
    kernels: list[int] = []
    templates: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        cmdline = read_text(f"/proc/{child}/cmdline").replace("\0", " ")
        (templates if TEMPLATE_MARK in cmdline else kernels).append(child)
        todo += children(child)
    return kernels, templates


def rss(pid: int) -> int:
    """Resident set size in bytes (0 once the process is gone)."""
    fields = read_text(f"/proc/{pid}/statm").split()
    return int(fields[1]) * PAGE if len(fields) > 1 else 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Census:
    """The server's kernel processes at one moment."""

    kernels: int
    kernel_rss: int
    templates: int
    template_rss: int

    @classmethod
    def of(cls, server_pid: int) -> Census:
        kernels, templates = descendants(server_pid)
        return cls(len(kernels), sum(map(rss, kernels)), len(templates),
                   sum(map(rss, templates)))


class Sampler(threading.Thread):
    """Samples the server's kernel processes every ``interval`` s; keeps the peaks."""

    def __init__(self, server_pid: int, done: Callable[[], int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.done, self.interval = server_pid, done, interval
        self.peak = Census(0, 0, 0, 0)
        self.load: list[float] = []
        self.server_rss: list[tuple[int, int]] = []  # (visits done, the server's RSS)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.load.append(os.getloadavg()[0])
            self.server_rss.append((self.done(), rss(self.server_pid)))
            now = Census.of(self.server_pid)
            self.peak = Census(max(self.peak.kernels, now.kernels),
                               max(self.peak.kernel_rss, now.kernel_rss),
                               max(self.peak.templates, now.templates),
                               max(self.peak.template_rss, now.template_rss))

    def stop(self) -> Census:
        self.halt.set()
        self.join()
        return self.peak


# -- the server ------------------------------------------------------------------------------------


class Voila:
    """``voila --no-browser dashboard.ipynb`` in its own directory and Jupyter dirs."""

    def __init__(self, work: Path, name: str, *, pooled: bool, extra: dict[str, Any],
                 marker: str) -> None:
        self.dirs = JupyterDirs(work, name)
        self.app = self.dirs.base / "app"
        self.app.mkdir()
        shutil.copy(EXAMPLE / NOTEBOOK, self.app / NOTEBOOK)
        shutil.copy(EXAMPLE / "jupyter_config" / INIT_FILE, self.dirs.config / INIT_FILE)
        if pooled:
            shutil.copy(EXAMPLE / "voila.json", self.app / "voila.json")
            config = merge(STATUS_CONFIG, extra)
            (self.dirs.config / "voila.json").write_text(json.dumps(config, indent=1))
        self.pooled = pooled
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dirs.base / "voila.log"
        argv = [sys.executable, "-m", "voila", "--no-browser", f"--port={self.port}",
                "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", NOTEBOOK]
        env = dict(self.dirs.env(), **{MARKER_VAR: marker})
        self.process = Process(argv, env=env, cwd=self.app, log=self.log)
        self.pid = self.process.proc.pid

    def wait_up(self, timeout: float = 600) -> None:
        """Until Voila answers HTTP (with ``_wait_at_startup`` the pool is full by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.proc.poll() is not None:
                raise RuntimeError(f"Voila exited early:\n{self.process.log()}")
            try:
                requests.get(f"{self.url}/voila/static/", timeout=5)
                return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Voila not up in {timeout} s:\n{self.process.log()}")
            time.sleep(0.2)

    def status(self) -> dict[str, Any] | None:
        """The python3 pool of the status document (None for a cold server)."""
        if not self.pooled:
            return None
        response = requests.get(f"{self.url}/api/hotpot_km/status", timeout=60)
        response.raise_for_status()
        document = response.json()
        pool = document["pools"].get("python3", {})
        return {**pool, "in_use": document["processes"]["in_use"]}

    def wait_full(self, timeout: float = 600) -> None:
        """Until the pool holds its target in ready kernels, then 2 s of quiet."""
        deadline = time.monotonic() + timeout
        while self.pooled:
            pool = self.status() or {}
            if pool.get("full") and not pool.get("warming"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool did not fill in {timeout} s: {pool}")
            time.sleep(0.5)
        time.sleep(2)

    def stop(self) -> None:
        self.process.stop()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s sections merged in, trait by trait."""
    out = {name: dict(traits) for name, traits in base.items()}
    for name, traits in extra.items():
        out.setdefault(name, {}).update(traits)
    return out


# -- a visit ---------------------------------------------------------------------------------------


@dataclass
class Visit:
    page: float  # seconds, GET until the body's last byte
    error: str | None = None  # the page failed (HTTP status, no output, an exception)
    beacon: int | None = None  # the beacon's HTTP status
    cleaned: bool = False  # the beacon was refused and the harness ended the kernel


def visit(url: str, *, cold: bool) -> Visit:
    """One visitor, with a browser's cookie jar: the page, then the page's beacon."""
    with requests.Session() as http:
        started = time.perf_counter()
        try:
            response = http.get(url + "/", timeout=600)
            body = response.text
        except requests.RequestException as error:
            return Visit(time.perf_counter() - started, f"{type(error).__name__}")
        took = time.perf_counter() - started
        match = KERNEL_ID.search(body)
        result = Visit(took)
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}"
        elif not all(marker in body for marker in EXPECT):
            result.error = "page without the notebook's output"
        if match is None:
            return result
        kernel_id = match.group(1)
        shutdown = f"{url}/voila/api/shutdown/{kernel_id}"
        xsrf = http.cookies.get("_xsrf", "")
        try:
            result.beacon = http.post(shutdown, files={"_xsrf": (None, xsrf)}, timeout=120
                                      ).status_code
        except requests.RequestException:
            result.beacon = -1
        if cold and result.beacon != 204:
            # Voila alone sets no _xsrf cookie: end the kernel as the beacon would have
            token = uuid.uuid4().hex
            answer = requests.post(shutdown, headers={"X-XSRFToken": token},
                                   cookies={"_xsrf": token}, timeout=120)
            result.cleaned = answer.status_code == 204
        return result


# -- one row ---------------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    concurrency: int
    visits: int
    seconds: float = 0.0
    pages: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    beacons_refused: int = 0
    cleaned: int = 0
    pooled: int = 0
    cold_starts: int = 0
    waited: int = 0
    refused: int = 0
    cold_reasons: dict[str, int] = field(default_factory=dict)
    before: Census | None = None
    peak: Census | None = None
    after: Census | None = None
    in_use_after: int | None = None
    server_rss_start: int = 0
    server_rss_path: list[int] = field(default_factory=list)  # after 1/4, 1/2, 3/4, all visits
    server_rss: tuple[int, int] = (0, 0)
    server_fds: tuple[int, int] = (0, 0)
    load: list[float] = field(default_factory=list)  # 1-minute load average, every 0.5 s
    notes: list[str] = field(default_factory=list)

    @property
    def pages_per_second(self) -> float:
        return self.visits / self.seconds if self.seconds else 0.0

    @property
    def warm(self) -> float | None:
        starts = self.pooled + self.cold_starts
        return 100 * (self.pooled - self.waited) / starts if starts else None


def counts(pool: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(pooled, cold, waited, refused) starts in the pool's counts so far."""
    if pool is None:
        return 0, 0, 0, 0
    starts = pool.get("starts", {})
    waited = pool.get("wait_seconds", {}).get("count", 0)
    return starts.get("pooled", 0), starts.get("cold", 0), waited, starts.get("refused", 0)


def cold_reasons(first: dict[str, Any] | None, last: dict[str, Any] | None) -> dict[str, int]:
    """Why page starts went cold between two status documents (the pool's own words)."""
    if first is None or last is None:
        return {}
    before = first.get("starts", {}).get("cold_reasons", {})
    after = last.get("starts", {}).get("cold_reasons", {})
    return {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}


def run_row(args: argparse.Namespace, work: Path, system: str, concurrency: int,
            extra: dict[str, Any]) -> Row:
    cold = system == "cold"
    visits = args.cold_visits if cold else args.visits
    row = Row(system, concurrency, visits)
    marker = f"soak-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log(f"{system}, concurrency {concurrency}: starting Voila")
    server = Voila(work, f"{system.replace(' ', '-')}-c{concurrency}", pooled=not cold,
                   extra=extra, marker=marker)
    try:
        server.wait_up()
        server.wait_full()
        row.server_rss_start = rss(server.pid)
        for _ in range(args.warmup_visits):
            warm_up = visit(server.url, cold=cold)
            if warm_up.error:
                raise RuntimeError(f"warm-up visit failed ({warm_up.error}):\n"
                                   f"{server.process.log()}")
        server.wait_full()
        row.before = Census.of(server.pid)
        row.server_rss = (rss(server.pid), 0)
        row.server_fds = (open_fds(server.pid), 0)
        first_status = server.status()
        first = counts(first_status)
        left = iter(range(visits))
        lock = threading.Lock()
        results: list[Visit] = []
        sampler = Sampler(server.pid, lambda: len(results))
        sampler.start()
        log(f"{system}, concurrency {concurrency}: {visits} visits")

        def visitor() -> None:
            while True:
                with lock:
                    if next(left, None) is None:
                        return
                outcome = visit(server.url, cold=cold)
                with lock:
                    results.append(outcome)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(visitor) for _ in range(concurrency)]:
                future.result()
        row.seconds = time.perf_counter() - started
        row.load = list(sampler.load)
        last_status = server.status()
        last = counts(last_status)
        row.pooled, row.cold_starts, row.waited, row.refused = (
            b - a for a, b in zip(first, last, strict=True))
        row.cold_reasons = cold_reasons(first_status, last_status)
        row.pages = sorted(v.page for v in results if v.error is None)
        for v in results:
            if v.error:
                row.errors[v.error] = row.errors.get(v.error, 0) + 1
            if v.beacon != 204:
                row.beacons_refused += 1
            row.cleaned += v.cleaned
        log(f"{system}, concurrency {concurrency}: {row.pages_per_second:.2f} pages/s; "
            f"waiting {args.settle:g} s")
        time.sleep(args.settle)
        row.peak = sampler.stop()
        row.server_rss_path = [
            next((r for done, r in sampler.server_rss if done >= visits * q // 4 and r), 0)
            for q in (1, 2, 3, 4)
        ]
        row.after = Census.of(server.pid)
        row.server_rss = (row.server_rss[0], rss(server.pid))
        row.server_fds = (row.server_fds[0], open_fds(server.pid))
        status = server.status()
        row.in_use_after = None if status is None else status["in_use"]
        failures = [line for line in server.log.read_text(errors="replace").splitlines()
                    if "Traceback" in line or " ERROR " in line or "[E " in line]
        if failures:
            row.notes.append(f"{len(failures)} error/traceback line(s) in the server log "
                             f"(kept: {shown(server.log)})")
            args.keep = True
    finally:
        server.stop()
        gone = sweep(marker)
        if gone:
            row.notes.append(f"left running after the server stopped, killed: {gone}")
        if not args.keep:
            shutil.rmtree(server.dirs.base, ignore_errors=True)
    return row


# -- the report ------------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def percentile(values: list[float], share: float) -> float:
    return values[max(round(share * len(values)) - 1, 0)] if values else float("nan")


def growth(pair: tuple[int, int]) -> float:
    return 100 * (pair[1] - pair[0]) / pair[0] if pair[0] else float("nan")


def left_per_visit(row: Row) -> float:
    """Kernels left per visit: processes above those before the visits, or, if more (a pool
    not refilled yet would hide one), kernels the pool says are still handed out."""
    assert row.before is not None and row.after is not None
    left = max(row.after.kernels - row.before.kernels, row.in_use_after or 0, 0)
    return left / row.visits


def verdicts(row: Row, cold: Row | None) -> list[str]:
    """The issue's targets that apply to a pooled row, met or missed."""
    out = []
    if row.concurrency == 3 and cold is not None and cold.pages_per_second:
        ratio = row.pages_per_second / cold.pages_per_second
        warm = row.warm or 0.0
        ok = ratio >= TARGET_SPEEDUP and warm >= TARGET_WARM
        out.append(f">= {TARGET_SPEEDUP:g}x cold with >= {TARGET_WARM:g} % warm: "
                   f"{ratio:.1f}x, {warm:.0f} % ({'met' if ok else 'missed'})")
    left = left_per_visit(row)
    out.append(f"0 kernels left per visit: {left:+.2f} ({'met' if left <= 0 else 'missed'})")
    grew = growth(row.server_rss)
    out.append(f"server RSS growth <= {TARGET_RSS_GROWTH:g} %: {grew:+.1f} % "
               f"({'met' if grew <= TARGET_RSS_GROWTH else 'missed'})")
    return out


def census(row: Row, what: str) -> str:
    parts = [getattr(row, moment) for moment in ("before", "peak", "after")]
    if what == "kernels":
        return " / ".join(str(c.kernels) for c in parts)
    if what == "kernel_rss":
        return " / ".join(mib(c.kernel_rss) for c in parts)
    if not any(c.templates for c in parts):
        return "—"
    return " / ".join(f"{c.templates} ({mib(c.template_rss)} MiB)" for c in parts)


def write(args: argparse.Namespace, rows: list[Row], extra: dict[str, Any], took: float) -> Path:
    colds = {r.concurrency: r for r in rows if r.system == "cold"}
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        git = "unknown"
    versions = ", ".join(f"{n} {version(n)}" for n in
                         ("hotpot_km", "voila", "jupyter_server", "jupyter_client", "ipykernel"))
    lines = [
        "# Traffic soak: browser-like visits to the seed's Voila dashboard",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `{' '.join(['python', 'benchmarks/soak_bench.py', *shown_args()])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {memory_gib():.0f} GiB, "
        f"Linux {platform.release()}; load average {args.load_before} before the run; "
        "other work may have run at the same time",
        f"- git {git}; Python {platform.python_version()}, {versions}",
        f"- sizes: {args.visits} visits per pooled row, {args.cold_visits} per cold row, "
        f"concurrency {', '.join(map(str, args.concurrency))}; {args.warmup_visits} "
        f"unmeasured warm-up visits per server; kernels counted {args.settle:g} s after the "
        f"last visit; run time {took / 60:.1f} min",
        "- pooled: examples/dashboard's voila.json, kernel_pool_init_python3.py and "
        "dashboard.ipynb, verbatim"
        + (f", plus `{json.dumps(extra)}`" if extra else "")
        + "; cold: the same Voila without the voila.json (no hotpot_km)",
        "",
        "| system | concurrency | N | pages/s | ratio to cold | warm % | p50 page | p95 page "
        "| errors | kernel processes before / peak / after | their RSS MiB before / peak / "
        "after | fork templates before / peak / after | server RSS MiB before → after "
        "| server fds before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for row in rows:
        cold = colds.get(row.concurrency)
        ratio = ("1 (baseline)" if row is cold else
                 f"{row.pages_per_second / cold.pages_per_second:.1f}x"
                 if cold and cold.pages_per_second else "—")
        warm = "—" if row.warm is None else f"{row.warm:.0f} %"
        errors = [f"{n} {what}" for what, n in row.errors.items()]
        if row.beacons_refused:
            errors.append(f"{row.beacons_refused} beacons refused"
                          + (f" (harness ended {row.cleaned} kernels)" if row.cleaned else ""))
        if row.refused:
            errors.append(f"{row.refused} starts refused")
        lines.append(
            f"| {row.system} | {row.concurrency} | {row.visits} | {row.pages_per_second:.2f} "
            f"| {ratio} | {warm} | {percentile(row.pages, 0.5):.2f} s "
            f"| {percentile(row.pages, 0.95):.2f} s | {', '.join(errors) or '0'} "
            f"| {census(row, 'kernels')} | {census(row, 'kernel_rss')} "
            f"| {census(row, 'templates')} "
            f"| {mib(row.server_rss[0])} → {mib(row.server_rss[1])} "
            f"({growth(row.server_rss):+.1f} %) "
            f"| {row.server_fds[0]} → {row.server_fds[1]} ({growth(row.server_fds):+.1f} %) |"
        )
    lines += ["", "## Targets (issue 18)", ""]
    for row in rows:
        if row.system != "cold":
            cold = colds.get(row.concurrency)
            lines.append(f"- {row.system}, concurrency {row.concurrency}: "
                         + "; ".join(verdicts(row, cold)))
    lines += [
        "",
        "Warm: page starts served by a ready pooled kernel (the pool's counts; a start that "
        "waited for a warming kernel is not warm). Kernel processes: the server's "
        "descendants in /proc (fork templates apart), before the visits (pool full), at "
        "their peak, and after. Server RSS and fds: before the visits (after the warm-up "
        "visits, pool full) and after.",
    ]
    notes = [f"{row.system}, concurrency {row.concurrency}: {note}"
             for row in rows for note in row.notes]
    notes += [f"{row.system}, concurrency {row.concurrency}: page starts: {row.pooled} pooled "
              f"({row.waited} of them waited for a warming kernel), {row.cold_starts} cold"
              + (" (" + ", ".join(f"{why or 'no reason given'}: {n}"
                                  for why, n in row.cold_reasons.items()) + ")"
                 if row.cold_reasons else "")
              for row in rows if row.system != "cold"]
    notes += [f"{row.system}, concurrency {row.concurrency}: load average (1 min) during the "
              f"visits {min(row.load):.1f}-{max(row.load):.1f}, median "
              f"{statistics.median(row.load):.1f}" for row in rows if row.load]
    notes += [f"{row.system}, concurrency {row.concurrency}: server RSS MiB before any page "
              f"{mib(row.server_rss_start)}, after the warm-up visits {mib(row.server_rss[0])}, "
              "after 1/4, 1/2, 3/4 and all of the visits "
              f"{', '.join(mib(r) for r in row.server_rss_path)}" for row in rows]
    notes += [f"{row.system}, concurrency {row.concurrency}: {row.in_use_after} kernels "
              "in use after" for row in rows if row.in_use_after]
    lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "soak.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def cpu_model() -> str:
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def memory_gib() -> float:
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def shown_args() -> list[str]:
    """The command line without where the output and scratch dirs went (machine paths)."""
    out: list[str] = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--output", "--work"):
            skip = True
        elif not arg.startswith(("--output=", "--work=")):
            out.append(f"'{arg}'" if " " in arg or "{" in arg else arg)
    return out


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visits", type=int, default=300, help="visits per pooled row")
    parser.add_argument("--cold-visits", type=int, default=60,
                        help="visits per cold row (its rate does not change with N)")
    parser.add_argument("--concurrency", default="3,8",
                        help="visitors at once, one row each (comma-separated)")
    parser.add_argument("--systems", default="cold,pooled",
                        help="rows to run: cold, pooled or both")
    parser.add_argument("--config", default="{}",
                        help="JSON config added to the pooled server's (e.g. "
                        '\'{"PooledKernelManager": {"fork_from_template": {"python3": true}}}\')')
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds after the last visit until kernels are counted")
    parser.add_argument("--warmup-visits", type=int, default=3,
                        help="unmeasured visits before each server's measurement")
    parser.add_argument("--output", type=Path, default=HERE, help="where soak.md goes")
    parser.add_argument("--work", type=Path, default=HERE / ".work",
                        help="scratch dirs (removed unless --keep or a failure)")
    parser.add_argument("--keep", action="store_true", help="keep scratch dirs and logs")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.systems = [s.strip() for s in args.systems.split(",")]
    if not set(args.systems) <= {"cold", "pooled"}:
        parser.error("--systems: cold, pooled")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    extra = json.loads(args.config)
    args.load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    work = args.work / f"soak-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: list[Row] = []
    for concurrency in args.concurrency:
        for system in ("cold", "pooled"):
            if system in args.systems:
                rows.append(run_row(args, work, system, concurrency, extra))
    path = write(args, rows, extra, time.time() - started)
    log(f"wrote {shown(path)}" + (f"; logs kept in {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
