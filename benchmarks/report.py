"""Turning samples into the results table, the target verdicts and the chart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Row order and labels of the systems, the baseline first.
SYSTEMS = {
    "cold": "cold",
    "old": "hotpot_km 0.2.2",
    "new": "hotpot_km (this project)",
    "fork": "hotpot_km, fork mode",
    "preheat": "Voila --preheat_kernel",
}
COLORS = {"cold": "#7f7f7f", "old": "#d62728", "new": "#1f77b4", "fork": "#9467bd",
          "preheat": "#2ca02c"}


@dataclass
class Row:
    """One system in one scenario: raw samples (seconds or bytes) or why there are none."""

    scenario: str
    system: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.samples)

    def p(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) if self.samples else math.nan


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "B":
        return f"{value / 2**20:.0f} MiB"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def ratio(row: Row, base: Row | None) -> str:
    """p50 over the cold p50 of the same scenario and run, with the speed-up spelled out."""
    if base is None or not base.ok or not row.ok or row is base:
        return "1 (baseline)" if row is base and row.ok else "—"
    r = row.p(50) / base.p(50)
    if row.unit == "B":
        return f"{r:.2f}x"
    return f"{r:.3g}x ({1 / r:.3g}x faster)" if r < 1 else f"{r:.3g}x ({r:.3g}x slower)"


def table(rows: Sequence[Row]) -> list[str]:
    lines = ["| scenario | system | p50 | p99 | ratio to cold (p50) | N |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for row in rows:
        base = next((r for r in rows if r.scenario == row.scenario and r.system == "cold"), None)
        p50, p99 = fmt(row.p(50), row.unit), fmt(row.p(99), row.unit)
        if not row.ok:
            p50 = p99 = row.note or "failed"
        label = SYSTEMS[row.system]
        lines.append(f"| {row.scenario} | {label} | {p50} | {p99} | {ratio(row, base)} "
                     f"| {len(row.samples)} |")
    return lines


@dataclass
class Target:
    """A goal for this project's rows, checked against what this run measured."""

    name: str
    measured: str
    passed: bool | None  # None: not measured in this run
    shown: bool = False  # a figure to show, with no target to meet

    @property
    def verdict(self) -> str:
        if self.shown and self.passed is not None:
            return "shown"
        return {True: "pass", False: "MISS", None: "not measured"}[self.passed]


def find(rows: Sequence[Row], scenario: str, system: str) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.system == system), None)


def targets(rows: Sequence[Row], names: dict[str, str]) -> list[Target]:
    """The targets for this project; ``names`` maps target keys to scenario names."""
    out = []

    def get(key: str, system: str = "new") -> Row | None:
        row = find(rows, names[key], system)
        return row if row is not None and row.ok else None

    def p50_at_most(key: str, name: str, limit: float, extra: str = "") -> None:
        row = get(key)
        out.append(Target(name, f"p50 {fmt(row.p(50), 's')}, p99 {fmt(row.p(99), 's')}{extra}"
                          if row else "—", row.p(50) <= limit if row else None))

    p50_at_most("start_only", "start_kernel() with cwd/env: p50 ≤ 5 ms", 0.005)
    p50_at_most("handout", "start → first kernel_info reply (cwd/env): p50 ≤ 10 ms", 0.010)
    row, cold = get("voila"), get("voila", "cold")
    speedup = cold.p(50) / row.p(50) if row and cold else math.nan
    goal = " (goal 0.15 s: met)" if row and row.p(50) <= 0.15 else " (goal 0.15 s: not met)"
    out.append(Target(
        "Voila page, seed voila.json: p50 ≤ 0.25 s and ≥ 8x faster than cold",
        f"p50 {fmt(row.p(50), 's')}, {speedup:.1f}x faster than cold{goal}"
        if row and cold else "—",
        row.p(50) <= 0.25 and speedup >= 8 if row and cold else None))
    p50_at_most("session", "jupyter_server: POST /api/sessions → first execute_reply: p50 ≤ 0.1 s",
                0.1)
    post = get("restart_post")
    p50_at_most("restart", "restart → first execute_reply with its output over the reconnected "
                "websocket: p50 ≤ 0.1 s", 0.1,
                f" (the POST alone: p50 {fmt(post.p(50), 's')})" if post else "")
    row, idle = get("voila_refill"), get("voila_paired")
    # each refill page against the idle-pool page of its own pair: a drift of the machine's
    # speed between pairs cancels out
    ratio = (statistics.median(r / i for r, i in zip(row.samples, idle.samples, strict=True))
             if row and idle else math.nan)
    out.append(Target(
        "Voila page with a refill under way ÷ with an idle pool, median of paired pages: ≤ 1.15",
        f"{ratio:.2f} (p50 {fmt(row.p(50), 's')} vs {fmt(idle.p(50), 's')})"
        if row and idle else "—",
        ratio <= 1.15 if row and idle else None))
    row, cold = get("burst"), get("burst", "cold")
    out.append(Target(
        "burst, until all starts are ready: ≤ 0.75 x cold",
        f"{row.p(50) / cold.p(50):.2f} x cold (p50 {fmt(row.p(50), 's')} vs "
        f"{fmt(cold.p(50), 's')})" if row and cold else "—",
        row.p(50) <= 0.75 * cold.p(50) if row and cold else None))
    for key, goal, what in (("papermill", 2, "papermill CLI on a heavy-import notebook, one run"),
                            ("runner_loop", 5, "nbclient loop, a new kernel per notebook"),
                            ("nbmake", 3, "pytest --nbmake, one run")):
        row, cold = get(key), get(key, "cold")
        speedup = cold.p(50) / row.p(50) if row and cold else math.nan
        out.append(Target(
            f"{what}: ≥ {goal}x faster than cold",
            f"{speedup:.1f}x (p50 {fmt(row.p(50), 's')} vs {fmt(cold.p(50), 's')})"
            if row and cold else "—",
            speedup >= goal if row and cold else None))
    row = get("event_loop")
    out.append(Target(
        "event loop while a pool of 4 heavy kernels fills: p99 ≤ 50 ms",
        f"p99 {fmt(row.p(99), 's')}" if row else "—",
        row.p(99) <= 0.050 if row else None))
    row, cold = get("gateway_slow"), get("gateway_slow", "cold")
    speedup = cold.p(50) / row.p(50) if row and cold else math.nan
    out.append(Target(
        "session through a gateway, slow kernel launch: ≥ 5x faster than cold (p50)",
        f"p50 {fmt(row.p(50), 's')}, {speedup:.1f}x faster than cold" if row and cold else "—",
        speedup >= 5 if row and cold else None))
    out += fork_targets(get, names)
    return out


def fork_targets(get: Callable[..., Row | None], names: dict[str, str]) -> list[Target]:
    """Fork mode against cold starts and against launch-based refills of the same pool."""
    out = []
    row, cold = get("burst", "fork"), get("burst", "cold")
    out.append(Target(
        "fork mode: burst, until all starts are ready: ≤ 0.25 x cold",
        f"{row.p(50) / cold.p(50):.2f} x cold (p50 {fmt(row.p(50), 's')} vs "
        f"{fmt(cold.p(50), 's')})" if row and cold else "—",
        row.p(50) <= 0.25 * cold.p(50) if row and cold else None))
    row, launched = get("refill", "fork"), get("refill", "new")
    against = f"; launch-based: p50 {fmt(launched.p(50), 's')}" if launched else ""
    out.append(Target(
        "fork mode: one heavy kernel refilled, request → ready in the pool: p50 ≤ 150 ms",
        f"p50 {fmt(row.p(50), 's')}, p99 {fmt(row.p(99), 's')}{against}" if row else "—",
        row.p(50) <= 0.150 if row else None))
    for key, text, shown in (
        ("pss_idle", "fork mode: PSS of a pool of heavy kernels, template included: "
         "≤ 0.5 x launch-based", False),
        ("pss_cell", "fork mode: the same after each kernel ran a typical cell "
         "(copy-on-write sharing left)", True),
    ):
        row, launched = get(key, "fork"), get(key, "new")
        ratio = row.p(50) / launched.p(50) if row and launched else math.nan
        out.append(Target(
            text,
            f"{ratio:.2f} x launch-based ({fmt(row.p(50), 'B')} vs {fmt(launched.p(50), 'B')})"
            if row and launched else "—",
            ratio <= 0.5 if row and launched else None,
            shown=shown))
    return out


def target_table(found: Sequence[Target]) -> list[str]:
    lines = ["| target (this project) | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {t.name} | {t.measured} | {t.verdict} |" for t in found]
    return lines


def chart(rows: Sequence[Row], scenarios: Sequence[str], path: Path,
          goals: dict[str, float] | None = None) -> None:
    """Distributions of the latency scenarios, log scale, one panel per scenario;
    ``goals`` (scenario → seconds) are drawn as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in scenarios if any(r.scenario == s and r.ok for r in rows)]
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, scenario in zip(axes.flat, panels, strict=False):
        present = [r for r in rows if r.scenario == scenario]
        for i, row in enumerate(present):
            if not row.ok:
                ax.text(i, 0.5, row.note or "failed", transform=ax.get_xaxis_transform(),
                        ha="center", va="center", rotation=90, color=COLORS[row.system])
                continue
            ms = np.asarray(row.samples) * 1000
            ax.boxplot([ms], positions=[i], widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(ms)), ms, s=10, alpha=0.6,
                       color=COLORS[row.system], zorder=3)
        ax.set_xticks(range(len(present)))
        ax.set_xticklabels([SYSTEMS[r.system].replace(" (", "\n(") for r in present],
                           fontsize=8)
        if goals and scenario in goals:
            ax.axhline(goals[scenario] * 1000, color=COLORS["new"], linestyle="--", linewidth=1,
                       label=f"target {fmt(goals[scenario], 's')}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale)")
        ax.set_title(scenario, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("hotpot_km benchmarks: time until the kernel is ready (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
