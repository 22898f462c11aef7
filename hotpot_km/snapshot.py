"""A point-in-time view of one manager's pools, read by the status document and the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import WarmupFailure

if TYPE_CHECKING:
    from .pool.model import PoolSettings

#: States of a kernel the pool owns: launched and warming up, ready, or taken by a request
#: that has not got it yet (it may still be warming: the request waits for it).
KERNEL_STATES = ("warming", "ready", "claimed")


@dataclass(frozen=True)
class KernelView:
    """One kernel process the pool owns."""

    state: str
    pid: int | None
    age: float  # seconds since its launch began
    ready_for: float | None  # seconds since it became ready
    paused: bool = False  # a warm-up standing still while a handed-out kernel settles


@dataclass(frozen=True)
class PoolView:
    """The pool of one kernel name."""

    kernel_name: str
    size: int
    kernels: tuple[KernelView, ...]
    consecutive_failures: int
    last_error: str | None
    next_warmup_in: float | None  # seconds of back-off left after failures
    #: kernels the pool keeps now (see hotpot_km.pool.sizing), and why
    target: int = 0
    target_reason: str = "static"
    min_size: int | None = None  # a demand-based pool's min (its max is ``size``)

    def count(self, state: str) -> int:
        return sum(k.state == state for k in self.kernels)


@dataclass(frozen=True)
class PoolSnapshot:
    """Everything one :class:`~hotpot_km.pool.KernelPool` can tell about itself."""

    pools: tuple[PoolView, ...]
    processes: int  # kernel processes holding a slot: pooled, handed out, starting, retiring
    max_kernels: int  # 0: unlimited
    retiring: int  # replaced processes still shutting down
    settings: PoolSettings
    stats: dict[str, dict[str, Any]]  # kernel name -> counts (see PoolStats.for_name)
    recent_errors: tuple[WarmupFailure, ...]
    closed: bool
    available_memory: int | None = None  # bytes a new kernel could use (None: unknown)
