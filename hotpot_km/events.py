"""What the pool engine reports while it works, and the always-on listeners to it.

The engine (:mod:`hotpot_km.pool`, :mod:`hotpot_km.provisioner`) calls a
:class:`PoolObserver` at the few points an operator cares about: a start got a
pooled kernel or went cold (and why), a start was refused, a warm-up finished
or failed (and in which step), a request waited for a warming kernel, a pooled
kernel died. Listeners turn that into numbers (:class:`PoolStats`, for the
status document; :mod:`hotpot_km.metrics`, for Prometheus) or log lines
(:class:`PoolLog`). The engine itself imports no metrics library.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .request import ColdReason

#: Warm-up steps, in order: the ``step`` label of warm-up failures.
WARMUP_STEPS = ("kernel_start", "bootstrap", "python_imports", "initialization_code", "init_file")

#: How many recent warm-up errors a pool remembers for its status.
RECENT_ERRORS = 20


class PoolObserver:
    """Receives the engine's reports. Every method is a no-op here; override what you need.

    Called on the event loop, from the engine's own code paths: implementations
    must be quick and must not block. An exception is logged and otherwise ignored.
    """

    def kernel_started(
        self,
        kernel_name: str,
        *,
        pooled: bool,
        reason: ColdReason | None,
        restart: bool,
        seconds: float,
    ) -> None:
        """A start (or restart) got a pooled kernel, or goes cold for ``reason``.

        ``seconds``: for a pooled kernel, the whole handout (including any wait
        for a warming kernel); for a cold start, the time until that was decided.
        """

    def start_refused(self, kernel_name: str, limit: str = "max_kernels") -> None:
        """A start was refused because a limit is reached: ``max_kernels`` processes run
        already, or available memory is below ``memory_floor``."""

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        """A pooled kernel became ready ``seconds`` after its launch began."""

    def warmup_failed(self, kernel_name: str, step: str, message: str) -> None:
        """A warm-up failed in ``step`` (one of :data:`WARMUP_STEPS`)."""

    def waited_for_warmup(self, kernel_name: str, seconds: float) -> None:
        """A request waited ``seconds`` for the warming kernel it had claimed."""

    def pooled_kernel_died(self, kernel_name: str) -> None:
        """A pooled kernel was found dead (waiting in the pool, or at handout)."""


class Observers(PoolObserver):
    """Forwards every report to each of its observers; one failing does not stop the rest."""

    def __init__(self, observers: Iterable[PoolObserver], log: Callable[[], Any]) -> None:
        self._observers = list(observers)
        self._log = log

    def add(self, observer: PoolObserver) -> None:
        self._observers.append(observer)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args, **kwargs)
            except Exception:
                self._log().warning("hotpot_km: pool observer %r failed", observer, exc_info=True)

    def kernel_started(
        self,
        kernel_name: str,
        *,
        pooled: bool,
        reason: ColdReason | None,
        restart: bool,
        seconds: float,
    ) -> None:
        self._each(
            "kernel_started",
            kernel_name,
            pooled=pooled,
            reason=reason,
            restart=restart,
            seconds=seconds,
        )

    def start_refused(self, kernel_name: str, limit: str = "max_kernels") -> None:
        self._each("start_refused", kernel_name, limit)

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        self._each("warmup_succeeded", kernel_name, seconds)

    def warmup_failed(self, kernel_name: str, step: str, message: str) -> None:
        self._each("warmup_failed", kernel_name, step, message)

    def waited_for_warmup(self, kernel_name: str, seconds: float) -> None:
        self._each("waited_for_warmup", kernel_name, seconds)

    def pooled_kernel_died(self, kernel_name: str) -> None:
        self._each("pooled_kernel_died", kernel_name)


class Durations:
    """Count, total and the most recent samples of a duration, for summaries in the status."""

    def __init__(self, keep: int = 200) -> None:
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.recent.append(seconds)

    def summary(self) -> dict[str, Any]:
        """``count`` and ``mean`` of all; ``last``, ``median``, ``p95``, ``max`` of recent ones."""
        recent = sorted(self.recent)
        if not recent:
            return {"count": 0}
        p95 = recent[min(len(recent) - 1, round(0.95 * (len(recent) - 1)))]
        return {
            "count": self.count,
            "mean": self.total / self.count,
            "last": self.recent[-1],
            "median": statistics.median(recent),
            "p95": p95,
            "max": recent[-1],
        }


@dataclass(frozen=True)
class WarmupFailure:
    """One failed warm-up, as the status shows it."""

    kernel_name: str
    step: str
    message: str
    time: float  # seconds since the epoch


class PoolStats(PoolObserver):
    """Per-manager counts since the manager started: what the status document reports.

    (Prometheus counts per process instead; see :mod:`hotpot_km.metrics`.)
    """

    def __init__(self) -> None:
        self.starts: Counter[tuple[str, str, str]] = Counter()  # (name, result, reason)
        self.restarts: Counter[tuple[str, str, str]] = Counter()
        self.warmup_failures: Counter[tuple[str, str]] = Counter()  # (name, step)
        self.deaths: Counter[str] = Counter()
        self.warmups: dict[str, Durations] = {}
        self.handouts: dict[str, Durations] = {}
        self.waits: dict[str, Durations] = {}
        self.recent_errors: deque[WarmupFailure] = deque(maxlen=RECENT_ERRORS)

    def kernel_started(
        self,
        kernel_name: str,
        *,
        pooled: bool,
        reason: ColdReason | None,
        restart: bool,
        seconds: float,
    ) -> None:
        counter = self.restarts if restart else self.starts
        counter[kernel_name, "pooled" if pooled else "cold", str(reason or "")] += 1
        if pooled:
            self.handouts.setdefault(kernel_name, Durations()).add(seconds)

    def start_refused(self, kernel_name: str, limit: str = "max_kernels") -> None:
        self.starts[kernel_name, "refused", limit] += 1

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        self.warmups.setdefault(kernel_name, Durations()).add(seconds)

    def warmup_failed(self, kernel_name: str, step: str, message: str) -> None:
        self.warmup_failures[kernel_name, step] += 1
        self.recent_errors.append(WarmupFailure(kernel_name, step, message, time.time()))

    def waited_for_warmup(self, kernel_name: str, seconds: float) -> None:
        self.waits.setdefault(kernel_name, Durations()).add(seconds)

    def pooled_kernel_died(self, kernel_name: str) -> None:
        self.deaths[kernel_name] += 1

    def names(self) -> set[str]:
        """Every kernel name something was recorded for."""
        found = {key[0] for key in (*self.starts, *self.restarts, *self.warmup_failures)}
        return found | set(self.deaths) | set(self.warmups) | set(self.handouts) | set(self.waits)

    def for_name(self, kernel_name: str) -> dict[str, Any]:
        """The counts of one kernel name, JSON-ready."""

        def by_result(counter: Counter[tuple[str, str, str]]) -> dict[str, Any]:
            out: dict[str, Any] = {"pooled": 0, "cold": 0, "cold_reasons": {}}
            for (name, result, reason), count in sorted(counter.items()):
                if name != kernel_name:
                    continue
                out[result] = out.get(result, 0) + count
                if result == "cold":
                    out["cold_reasons"][reason] = count
            return out

        def summary(durations: dict[str, Durations]) -> dict[str, Any]:
            found = durations.get(kernel_name)
            return found.summary() if found else {"count": 0}

        return {
            "starts": by_result(self.starts),
            "restarts": by_result(self.restarts),
            "warmup_failures": {
                step: count
                for (name, step), count in sorted(self.warmup_failures.items())
                if name == kernel_name
            },
            "pooled_kernels_died": self.deaths.get(kernel_name, 0),
            "warmup_seconds": summary(self.warmups),
            "handout_seconds": summary(self.handouts),
            "wait_seconds": summary(self.waits),
        }


class PoolLog(PoolObserver):
    """One INFO line when a pool becomes full, runs dry, or is full again; nothing per handout.

    A pool "runs dry" when a request finds no ready kernel in it (it waits for a
    warming one, or starts cold because the pool is empty); it is "full again"
    once it holds its size in ready kernels after that. The first fill is logged
    once. In between, handouts and refills are normal operation and log nothing.
    """

    def __init__(self, log: Callable[[], Any], fill: Callable[[str], tuple[int, int]]) -> None:
        self._log = log
        self._fill = fill  # kernel name -> (ready kernels, pool size)
        self._filled: set[str] = set()  # full at least once
        self._dry: dict[str, int] = {}  # dry pools -> requests that found no ready kernel
        self._unservable: set[tuple[str, ColdReason]] = set()  # already logged

    def _ran_dry(self, kernel_name: str) -> None:
        ready, size = self._fill(kernel_name)
        if size <= 0:
            return
        if kernel_name not in self._dry:
            self._dry[kernel_name] = 0
            self._log().info(
                "hotpot_km: the %r pool ran dry (%d of %d ready): requests wait for warming "
                "kernels or start cold until it refills",
                kernel_name,
                ready,
                size,
            )
        self._dry[kernel_name] += 1

    def kernel_started(
        self,
        kernel_name: str,
        *,
        pooled: bool,
        reason: ColdReason | None,
        restart: bool,
        seconds: float,
    ) -> None:
        if reason is ColdReason.POOL_EMPTY:
            self._ran_dry(kernel_name)
        elif reason in _UNSERVABLE and (kernel_name, reason) not in self._unservable:
            _, size = self._fill(kernel_name)
            if size > 0:
                self._unservable.add((kernel_name, reason))
                self._log().warning(
                    "hotpot_km: a %r kernel start went cold (%s): %s; such starts never get a "
                    "pooled kernel (logged once per kernel name and reason)",
                    kernel_name,
                    reason,
                    _UNSERVABLE[reason],
                )

    def waited_for_warmup(self, kernel_name: str, seconds: float) -> None:
        self._ran_dry(kernel_name)

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        ready, size = self._fill(kernel_name)
        if size <= 0 or ready < size:
            return
        if kernel_name not in self._filled:
            self._filled.add(kernel_name)
            self._dry.pop(kernel_name, None)
            self._log().info("hotpot_km: the %r pool is full (%d ready)", kernel_name, ready)
        elif kernel_name in self._dry:
            missed = self._dry.pop(kernel_name)
            self._log().info(
                "hotpot_km: the %r pool is full again (%d ready); %d request(s) found it dry",
                kernel_name,
                ready,
                missed,
            )


#: Cold starts that come from the request itself, not from the pool's state: the pool can
#: never serve such a start, so the log says it (once), with what to change.
_UNSERVABLE = {
    ColdReason.START_ARGUMENTS: "its start arguments other than cwd/env (e.g. stdout, stderr, "
    "extra_arguments) or its transport encryption differ from PooledKernelManager.pool_kwargs",
    ColdReason.STARTUP_ENV: "it sets an environment variable a process reads only at startup "
    "(e.g. PYTHONPATH) to another value than the pooled kernels have",
    ColdReason.LANGUAGE: "the pool can't apply its cwd/env to kernels of this language",
}
