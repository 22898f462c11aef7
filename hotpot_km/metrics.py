"""Prometheus metrics of the kernel pools in this process.

Counters and histograms are ordinary ``prometheus_client`` metrics, created
once per process in its default registry: every manager's pool reports into
the same series, labelled by kernel name, so several managers in one process
never clash and the counts stay monotonic when managers come and go (as
jupyter_server's own kernel metrics do). Gauges of current state (pool size,
kernels per state, processes against ``max_kernels``) are read from the live
pools at scrape time by :class:`PoolCollector` and summed over them.

jupyter_server (and JupyterLab, Notebook 7, Voila on jupyter_server) serve the
default registry on ``/metrics``; standalone Voila gets the same handler from
:mod:`hotpot_km.server_extension`; other processes call :func:`start_metrics_server`.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from .events import PoolObserver
from .request import ColdReason
from .snapshot import KERNEL_STATES

if TYPE_CHECKING:
    from .pool import KernelPool

__all__ = ["PoolCollector", "PrometheusObserver", "start_metrics_server", "watch"]

_HANDOUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WARMUP_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)

STARTS = Counter(
    "hotpot_km_kernel_starts",
    "Kernel start requests by result: pooled (a warm kernel was handed out), cold (with the "
    "reason the pool could not serve it), refused (with the limit reached: max_kernels or "
    "memory_floor).",
    ["kernel_name", "result", "reason"],
)
RESTARTS = Counter(
    "hotpot_km_kernel_restarts",
    "Kernel restarts by result: pooled (replaced by a ready pooled kernel) or cold (with reason).",
    ["kernel_name", "result", "reason"],
)
WARMUP_FAILURES = Counter(
    "hotpot_km_warmup_failures",
    "Failed warm-ups of pooled kernels, by the step that failed.",
    ["kernel_name", "step"],
)
DEATHS = Counter(
    "hotpot_km_pooled_kernel_deaths",
    "Pooled kernels found dead while waiting in the pool or at handout.",
    ["kernel_name"],
)
HANDOUT_SECONDS = Histogram(
    "hotpot_km_handout_duration_seconds",
    "Time to hand out a pooled kernel, from the launch step's start to the process handed over "
    "(includes any wait for a warming kernel).",
    ["kernel_name"],
    buckets=_HANDOUT_BUCKETS,
)
WARMUP_SECONDS = Histogram(
    "hotpot_km_warmup_duration_seconds",
    "Time from a pooled kernel's launch to ready (start, imports, init code), for warm-ups "
    "that succeeded.",
    ["kernel_name"],
    buckets=_WARMUP_BUCKETS,
)
WAIT_SECONDS = Histogram(
    "hotpot_km_warmup_wait_duration_seconds",
    "Time a start request waited for the warming kernel it claimed to become ready.",
    ["kernel_name"],
    buckets=_WAIT_BUCKETS,
)


class PrometheusObserver(PoolObserver):
    """Feeds one pool's reports into the process-wide metrics above."""

    def __init__(self, kernel_names: Iterable[str] = ()) -> None:
        for name in kernel_names:  # the series of configured pools exist from the start
            self.known(name)

    @staticmethod
    def known(kernel_name: str) -> None:
        STARTS.labels(kernel_name, "pooled", "")
        RESTARTS.labels(kernel_name, "pooled", "")
        DEATHS.labels(kernel_name)
        HANDOUT_SECONDS.labels(kernel_name)
        WARMUP_SECONDS.labels(kernel_name)
        WAIT_SECONDS.labels(kernel_name)

    def kernel_started(
        self,
        kernel_name: str,
        *,
        pooled: bool,
        reason: ColdReason | None,
        restart: bool,
        seconds: float,
    ) -> None:
        counter = RESTARTS if restart else STARTS
        counter.labels(kernel_name, "pooled" if pooled else "cold", str(reason or "")).inc()
        if pooled:
            HANDOUT_SECONDS.labels(kernel_name).observe(seconds)

    def start_refused(self, kernel_name: str, limit: str = "max_kernels") -> None:
        STARTS.labels(kernel_name, "refused", limit).inc()

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        WARMUP_SECONDS.labels(kernel_name).observe(seconds)

    def warmup_failed(self, kernel_name: str, step: str, message: str) -> None:
        WARMUP_FAILURES.labels(kernel_name, step).inc()

    def waited_for_warmup(self, kernel_name: str, seconds: float) -> None:
        WAIT_SECONDS.labels(kernel_name).observe(seconds)

    def pooled_kernel_died(self, kernel_name: str) -> None:
        DEATHS.labels(kernel_name).inc()


class PoolCollector:
    """Gauges of the live pools' current state, read at scrape time, summed over managers."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[KernelPool] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, pool: KernelPool) -> None:
        with self._lock:
            self._pools.add(pool)

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            "size": GaugeMetricFamily(
                "hotpot_km_pool_size",
                "Configured number of ready kernels to keep (kernel_pools; a pool that follows "
                "demand: its max).",
                labels=["kernel_name"],
            ),
            "target": GaugeMetricFamily(
                "hotpot_km_pool_target_size",
                "Ready kernels the pool keeps now: its size, or for a pool that follows demand "
                "{min, max} what the arrival rate asks for; capped by max_kernels and "
                "memory_floor.",
                labels=["kernel_name"],
            ),
            "reason": GaugeMetricFamily(
                "hotpot_km_pool_target_reason",
                "Why the pool has its target size (1 for the current reason: static, min, "
                "demand, burst, scale_down_pending, max, max_kernels, memory_floor).",
                labels=["kernel_name", "reason"],
            ),
            "memory": GaugeMetricFamily(
                "hotpot_km_available_memory_bytes",
                "Memory a new kernel could use (MemAvailable, or the cgroup's memory.max left).",
            ),
            "floor": GaugeMetricFamily(
                "hotpot_km_memory_floor_bytes",
                "memory_floor: below this much available memory no pool grows (0: no floor).",
            ),
            "kernels": GaugeMetricFamily(
                "hotpot_km_pool_kernels",
                "Kernel processes owned by the pool, by state: warming, ready, or claimed by a "
                "request that has not got it yet.",
                labels=["kernel_name", "state"],
            ),
            "failing": GaugeMetricFamily(
                "hotpot_km_warmup_consecutive_failures",
                "Warm-ups that failed in a row since the last success (0: warm-ups work).",
                labels=["kernel_name"],
            ),
            "processes": GaugeMetricFamily(
                "hotpot_km_kernel_processes",
                "Kernel processes holding a max_kernels slot: pooled, handed out, starting and "
                "retiring ones.",
            ),
            "limit": GaugeMetricFamily(
                "hotpot_km_kernel_processes_limit",
                "max_kernels (summed over managers; 0: some manager has no limit).",
            ),
            "managers": GaugeMetricFamily(
                "hotpot_km_managers",
                "Live hotpot_km kernel managers in this process (the gauges are their sums).",
            ),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            pools = [p for p in list(self._pools) if not p.closed]
        snapshots = [pool.snapshot() for pool in pools]
        families = self._families()
        sizes: dict[str, int] = defaultdict(int)
        kernels: dict[tuple[str, str], int] = defaultdict(int)
        failing: dict[str, int] = defaultdict(int)
        targets: dict[str, int] = defaultdict(int)
        reasons: dict[tuple[str, str], int] = defaultdict(int)
        for snap in snapshots:
            for view in snap.pools:
                sizes[view.kernel_name] += view.size
                targets[view.kernel_name] += view.target
                reasons[view.kernel_name, view.target_reason] += 1
                failing[view.kernel_name] += view.consecutive_failures
                for state in KERNEL_STATES:
                    kernels[view.kernel_name, state] += view.count(state)
        for name, size in sizes.items():
            families["size"].add_metric([name], size)
            families["failing"].add_metric([name], failing[name])
        for name, target in targets.items():
            families["target"].add_metric([name], target)
        for (name, reason), count in reasons.items():
            families["reason"].add_metric([name, reason], count)
        memory = [s.available_memory for s in snapshots if s.available_memory is not None]
        if memory:
            families["memory"].add_metric([], min(memory))
        floors = [s.settings.memory_floor for s in snapshots]
        families["floor"].add_metric([], max(floors) if floors else 0)
        for (name, state), count in kernels.items():
            families["kernels"].add_metric([name, state], count)
        families["processes"].add_metric([], sum(s.processes for s in snapshots))
        limits = [s.max_kernels for s in snapshots]
        families["limit"].add_metric([], sum(limits) if limits and min(limits) > 0 else 0)
        families["managers"].add_metric([], len(snapshots))
        return list(families.values())


COLLECTOR = PoolCollector()
REGISTRY.register(COLLECTOR)


def watch(pool: KernelPool) -> None:
    """Report ``pool`` in this process's metrics (its counts, and its state at each scrape)."""
    pool.observer.add(PrometheusObserver(pool.snapshot().settings.sizes))
    COLLECTOR.add(pool)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> tuple[object, threading.Thread]:
    """Serve this process's metrics (the default registry) on ``http://addr:port/metrics``.

    For hosts without a web server of their own; a daemon thread, like
    ``prometheus_client.start_http_server``, which it calls. Returns ``(server, thread)``;
    ``server.shutdown()`` stops it.
    """
    return start_http_server(port, addr=addr)
