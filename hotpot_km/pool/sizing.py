"""How many ready kernels each pool keeps: one object decides, every part of the engine asks.

A ``kernel_pools`` value is either an int (a static pool: that many, always) or
``{"min": m, "max": M}`` (a pool that follows demand). The target of a demand-based pool is
Little's law with headroom: kernels in the pool = arrival rate x the time a replacement takes
to warm up, x :data:`HEADROOM`, and at least enough that requests arriving at random find a
ready kernel :data:`COVERAGE` of the time. It grows at once under a burst (requests arriving
faster than ``max_warming`` warm-ups can replace them: then only stock serves them, and the
pool goes to ``max``), and comes down again only after ``scale_down_after`` seconds without
that much demand. Every pool, static or not, stays within ``max_kernels`` and does not grow
while the machine's (or its cgroup's) available memory is below ``memory_floor``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .model import PoolSettings

#: Why a pool has its target size (the ``reason`` of the status document and ``/metrics``).
REASONS = (
    "static",  # an int in kernel_pools
    "min",  # demand-based, no demand to speak of
    "demand",  # arrival rate x warm-up time x headroom
    "burst",  # arrivals outrun the refills: max
    "scale_down_pending",  # demand went down less than scale_down_after seconds ago
    "max",  # demand-based, demand above max
    "max_kernels",  # capped by max_kernels
    "memory_floor",  # available memory below memory_floor: the pool does not grow
)

#: Arrivals older than this (seconds) don't count toward the rate.
RATE_WINDOW = 60.0
#: The short window (seconds, at least) in which a burst is seen.
BURST_WINDOW = 10.0
#: Requests within BURST_WINDOW that can make a burst (one or two close together are chance).
BURST_SEEN = 3
#: Kernels kept per kernel expected to be taken during one warm-up.
HEADROOM = 1.5
#: Share of requests a demand-based pool is sized to serve warm: requests arrive at random
#: (Poisson), so the mean taken during one warm-up is not enough when it is small (a mean
#: of 0.3 with one kernel ready leaves 26 % of the requests without one).
COVERAGE = 0.95
#: Warm-up seconds assumed until the pool has measured one.
DEFAULT_WARMUP = 3.0
#: Weight of the newest warm-up in the running estimate.
WARMUP_WEIGHT = 0.3
#: Seconds an available-memory reading is reused (reads are a few small /proc files).
MEMORY_READ_EVERY = 1.0


class Sizing:
    """Owns the pools' sizes: :meth:`target_size` is the one answer to "how many kernels
    should this pool hold now", and :meth:`reason` says why."""

    def __init__(
        self,
        settings: Callable[[], PoolSettings],
        *,
        max_kernels: Callable[[], int],
        held: Callable[[str], int],
        log: Callable[[], logging.Logger | logging.LoggerAdapter[Any]],
        clock: Callable[[], float] = time.monotonic,
        memory: Callable[[], int | None] | None = None,
    ) -> None:
        self._settings = settings
        self._max_kernels = max_kernels
        self._held = held  # kernels a pool holds now (see Filling._held)
        self._log = log
        self.clock = clock
        self._memory = memory if memory is not None else AvailableMemory(clock).read
        self._lock = threading.Lock()  # snapshots are taken from a metrics thread too
        self._arrivals: dict[str, deque[float]] = {}
        self._warmup: dict[str, float] = {}  # running estimate of warm-up seconds
        self._peak: dict[str, tuple[int, float]] = {}  # highest recent target, since when
        self._reasons: dict[str, str] = {}
        self._low_memory: int | None = None  # available bytes while below the floor

    # -- what is configured --------------------------------------------------------------

    def names(self) -> list[str]:
        """The configured pools' kernel names."""
        return list(self._settings().sizes)

    def pooled(self, name: str) -> bool:
        """Whether ``name`` has a pool at all (a static size or a ``max`` above 0)."""
        return self._settings().sizes.get(name, 0) > 0

    def bounds(self, name: str) -> tuple[int, int]:
        """(min, max) of a pool; both its size for a static one."""
        settings = self._settings()
        high = max(settings.sizes.get(name, 0), 0)
        low = settings.min_sizes.get(name, high)
        return min(max(low, 0), high), high

    def follows_demand(self, name: str) -> bool:
        return name in self._settings().min_sizes

    # -- what happens ----------------------------------------------------------------------

    def arrived(self, name: str) -> None:
        """A start request for ``name`` came (served from the pool or not)."""
        now = self.clock()
        with self._lock:
            arrivals = self._arrivals.setdefault(name, deque())
            arrivals.append(now)
            _forget(arrivals, now - RATE_WINDOW)

    def warmed_up(self, name: str, seconds: float) -> None:
        """A pooled kernel of ``name`` became ready ``seconds`` after its launch."""
        with self._lock:
            old = self._warmup.get(name)
            self._warmup[name] = seconds if old is None else old + WARMUP_WEIGHT * (seconds - old)

    def warmup_seconds(self, name: str) -> float:
        """How long a replacement takes to become ready (measured; a default before)."""
        return self._warmup.get(name, DEFAULT_WARMUP)

    def measured_warmup(self, name: str) -> float | None:
        """The running estimate of a whole warm-up (launch to ready), once one finished."""
        return self._warmup.get(name)

    def below_floor(self) -> tuple[int, int] | None:
        """(available, floor) in bytes while available memory is below ``memory_floor``:
        then a start that needs a new process is refused (an overload answer, not an
        out-of-memory kill of whatever runs)."""
        floor = self._settings().memory_floor
        if floor <= 0:
            return None
        available = self._memory()
        if available is None or available >= floor:
            return None
        return available, floor

    # -- the answer --------------------------------------------------------------------------

    def target_size(self, name: str) -> int:
        """How many kernels the pool of ``name`` should hold now (see the module docstring)."""
        settings = self._settings()
        low, high = self.bounds(name)
        with self._lock:
            if name in settings.min_sizes:
                target, reason = self._demand_target(name, low, high, settings)
            else:
                target, reason = high, "static"
            limit = self._max_kernels()
            if 0 < limit < target:
                target, reason = limit, "max_kernels"
        floor = settings.memory_floor
        if floor > 0 and target > 0:
            available = self._memory()
            if available is not None and available < floor:
                self._below_floor(available, floor)
                held = self._held(name)
                if held < target:
                    target, reason = held, "memory_floor"
            elif self._low_memory is not None:
                self._above_floor(available, floor)
        self._reasons[name] = reason
        return target

    def reason(self, name: str) -> str:
        """Why the pool has its current target (one of :data:`REASONS`)."""
        if name not in self._reasons:
            self.target_size(name)
        return self._reasons[name]

    def _demand_target(
        self, name: str, low: int, high: int, settings: PoolSettings
    ) -> tuple[int, str]:
        now = self.clock()
        arrivals = self._arrivals.get(name, deque())
        _forget(arrivals, now - RATE_WINDOW)
        warmup = self._warmup.get(name, DEFAULT_WARMUP)
        short = max(BURST_WINDOW, 2 * warmup)
        recent = [t for t in arrivals if t >= now - short]
        rate = max(len(arrivals) / RATE_WINDOW, len(recent) / short)
        refill_rate = max(settings.max_warming, 1) / max(warmup, 1e-3)
        # a burst: the last few requests came faster than warm-ups replace them (their
        # own pace, so a class arriving together is seen by its third request)
        pace = (
            (len(recent) - 1) / max(recent[-1] - recent[0], 1.0) if len(recent) >= BURST_SEEN else 0
        )
        if pace > refill_rate:
            wanted, reason = high, "burst"
        else:
            expected = rate * warmup
            wanted = math.ceil(expected * HEADROOM) if rate > 0 else 0
            if len(arrivals) >= BURST_SEEN:  # a rate, not one or two requests by chance
                wanted = max(wanted, _covering(expected))
            reason = "demand" if wanted > low else "min"
            if wanted > high:
                reason = "max"
        wanted = min(max(wanted, low), high)
        peak, since = self._peak.get(name, (low, now))
        if wanted >= peak or now - since >= settings.scale_down_after:
            self._peak[name] = (wanted, now)
            return wanted, reason
        return peak, "scale_down_pending"

    def _below_floor(self, available: int, floor: int) -> None:
        if self._low_memory is None:
            self._log().warning(
                "hotpot_km: %d MiB of memory available, below memory_floor (%d MiB): "
                "kernel pools don't grow until more is free",
                available // 2**20,
                floor // 2**20,
            )
        self._low_memory = available

    def _above_floor(self, available: int | None, floor: int) -> None:
        self._low_memory = None
        self._log().info(
            "hotpot_km: %s MiB of memory available again (memory_floor %d MiB): pools grow again",
            "?" if available is None else available // 2**20,
            floor // 2**20,
        )

    def available_memory(self) -> int | None:
        """Bytes of memory a new kernel could use now (``None``: unknown)."""
        return self._memory()


def _covering(expected: float) -> int:
    """The fewest ready kernels that serve :data:`COVERAGE` of requests arriving at random
    warm, when ``expected`` requests arrive on average while one replacement warms up: a
    request finds one if fewer than that many came in the warm-up before it (Poisson)."""
    term = total = math.exp(-expected)  # P(0 arrivals)
    ready = 1
    while total < COVERAGE and ready < 10_000:
        term *= expected / ready
        total += term
        ready += 1
    return ready


def _forget(arrivals: deque[float], before: float) -> None:
    while arrivals and arrivals[0] < before:
        arrivals.popleft()


class AvailableMemory:
    """The memory a new kernel could use: ``MemAvailable`` of ``/proc/meminfo``, or less if
    this process's cgroup (v2) has a ``memory.max``. Read at most once per
    :data:`MEMORY_READ_EVERY` seconds: a few small procfs/sysfs files, cheap enough for the
    loop at that rate. ``None`` where neither can be read (not Linux)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._value: int | None = None
        self._cgroup: Path | bool | None = False  # False: not looked up yet

    def read(self) -> int | None:
        now = self._clock()
        with self._lock:
            if now - self._read_at >= MEMORY_READ_EVERY:
                self._read_at = now
                self._value = self._available()
            return self._value

    def _available(self) -> int | None:
        values = [v for v in (_meminfo_available(), self._cgroup_available()) if v is not None]
        return min(values) if values else None

    def _cgroup_available(self) -> int | None:
        if self._cgroup is False:
            self._cgroup = _cgroup_dir()
        if not isinstance(self._cgroup, Path):
            return None
        try:
            limit = (self._cgroup / "memory.max").read_text().strip()
            if limit == "max":
                return None
            current = int((self._cgroup / "memory.current").read_text())
        except (OSError, ValueError):
            return None
        return max(int(limit) - current, 0)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, if it has a memory controller."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            directory = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            return directory if (directory / "memory.max").exists() else None
    return None
