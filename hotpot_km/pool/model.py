"""The pool's data and interfaces: its settings, what it needs from a host and from a
kernel, the kernels it holds, and the state its concerns share.

It imports no other pool module, so every one of them can import it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerBase

from ..budget import Slot
from ..kernel_io import ShellClient
from ..priority import ProcessPriority
from ..request import ColdReason, LaunchRequest


class LaunchKwargs(Mapping[str, Mapping[str, Any]]):
    """Each pool's launch arguments, asked of the host when read: a host's may follow the
    process's environment, so settings kept between trait changes don't freeze them."""

    def __init__(self, of: Callable[[str], Mapping[str, Any]], names: tuple[str, ...]) -> None:
        self._of = of
        self._names = names

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        if name not in self._names:
            raise KeyError(name)
        return self._of(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True)
class PoolSettings:
    """A snapshot of the host's pool configuration (see the traits of ``PooledKernelManager``)."""

    #: kernel name -> the most kernels its pool keeps: a static pool's size, a demand-based
    #: pool's ``max`` (how many it keeps now: :meth:`~hotpot_km.pool.sizing.Sizing.target_size`)
    sizes: Mapping[str, int] = field(default_factory=dict)
    #: kernel name -> ``min`` of each pool that follows demand (static pools are not in it)
    min_sizes: Mapping[str, int] = field(default_factory=dict)
    launch_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fill_delay: float = 1.0
    fill_idle_timeout: float = 10.0
    idle_priority: bool = True
    initialization_code: Mapping[str, str] = field(default_factory=dict)
    python_imports: tuple[str, ...] = ()
    startup_timeout: float = 60.0
    init_timeout: float = 120.0
    max_warming: int = 1
    #: while visits to a pool overlap (see ``Filling._pressed``), up to this many warm-ups
    #: at once, past ``max_warming`` (0: ``max_warming`` holds then too)
    overlap_warming: int = 0
    max_retry_delay: float = 60.0
    warm_restarts: bool = True
    refill_pause: float = 3.0
    scale_down_after: float = 120.0
    memory_floor: int = 256 * 2**20  # bytes; 0: no floor
    #: seconds a start waits at most for a warming kernel; ``None``: as long as a cold
    #: start is expected to take (see :meth:`Claiming.warmup_wait`)
    max_warmup_wait: float | None = None


class KernelAdapter(Protocol):
    """One pooled kernel as the engine drives it: launched, talked to, checked, handed
    over and stopped. :class:`~hotpot_km.adapters.local.LocalKernelAdapter` runs a process on
    this machine; :mod:`hotpot_km.adapters.gateway` runs one on a remote gateway. Everything else
    (filling, warm-up steps, claiming, back-off, ``max_kernels``) is the engine's, for both."""

    async def prepare(self, kwargs: dict[str, Any]) -> tuple[LaunchRequest, str | None]:
        """What the kernel will be started with, as requests are compared with it, and its
        language; called before :meth:`start` so claims can be checked meanwhile."""
        ...

    async def start(self, timeout: float, slot: Slot) -> ShellClient:
        """Start the kernel (``slot`` is its place under ``max_kernels``, which a local
        process binds to its process group); return a client whose shell and control
        channels reach it."""
        ...

    def watch_statuses(self) -> zmq.asyncio.Socket | None:
        """A socket subscribed to the kernel's status messages, to see it go idle after
        its handout (``None``: the refill does not wait for that)."""
        ...

    async def is_alive(self) -> bool:
        """Whether the kernel still runs (polled every second while it waits, and while a
        handed-out kernel settles)."""
        ...

    async def check_cwd(self, cwd: str) -> None:
        """Raise ``OSError`` as a cold start would if the kernel can't work in ``cwd``."""
        ...

    def close_client(self) -> None:
        """Close the pool's client (the kernel keeps running)."""
        ...

    def detach(self, slot: Slot) -> Any:
        """Give up the pool's hold on the kernel; return what the host takes over. The
        pool's client stays open until the kernel settled (the engine closes it)."""
        ...

    @property
    def priority(self) -> ProcessPriority | None:
        """The kernel's CPU priority, if the pool can lower it while it warms up."""
        ...

    async def shutdown(self) -> None:
        """Stop the kernel and wait until it is gone."""
        ...

    @property
    def pid(self) -> int | None:
        """The local process id, for status pages (``None`` for a remote kernel)."""
        ...


class PoolHost(Protocol):
    """What the engine needs from the manager that owns it."""

    log: logging.Logger | logging.LoggerAdapter[Any]
    kernel_spec_manager: KernelSpecManager | None

    def pool_settings(self) -> PoolSettings: ...

    def new_pool_kernel(self, kernel_name: str, kernel_id: str) -> KernelAdapter: ...


class WarmupError(RuntimeError):
    """A pooled kernel failed before it became ready; the message names the source."""


class HandoutError(RuntimeError):
    """A claimed kernel could not be handed out (it died or the handout code failed)."""

    def __init__(self, message: str, reason: ColdReason = ColdReason.HANDOUT_FAILED) -> None:
        super().__init__(message)
        self.reason = reason


class Place(enum.Enum):
    """Where a pooled kernel is in its life (see :mod:`hotpot_km.pool.kernels`)."""

    #: in its pool, warming or ready: a start may claim it
    UNCLAIMED = "unclaimed"
    #: taken by a start, until handed out, put back or discarded
    CLAIMED = "claimed"
    #: taken to be discarded for its slot (``max_kernels``)
    EVICTED = "evicted"
    #: handed out; its pool's refill waits until it has gone idle (see settling.py)
    SETTLING = "settling"
    #: not the pool's any more: handed out and settled, or discarded
    GONE = "gone"


@dataclass(eq=False)
class PooledKernel:
    """One kernel process owned by the pool, from launch until handout or discard."""

    name: str
    adapter: KernelAdapter
    slot: Slot
    ready: asyncio.Future[None]
    launch: LaunchRequest | None = None
    language: str | None = None
    #: set once ``launch`` and ``language`` are known (early in its warm-up): a start that
    #: claimed it while warming learns then whether it can serve that start at all
    prepared: asyncio.Event = field(default_factory=asyncio.Event)
    client: ShellClient | None = None
    #: the environment a stdin-handout kernel reported after start-up (its bootstrap)
    started_env: dict[str, str] | None = None
    #: the kernel's own IOPub topics (status), to see it go idle after handout (local kernels)
    statuses: zmq.asyncio.Socket | None = None
    #: where it is in its life; only :class:`~hotpot_km.pool.kernels.PoolKernels` moves it
    place: Place | None = None
    task: asyncio.Task[None] | None = None  # the warm-up
    ending: asyncio.Task[None] | None = None  # the shutdown, once started (see _end)
    #: a pending move of every thread back to normal priority (see _normal_priority)
    restoring: asyncio.Task[None] | None = None
    launched: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    #: while the process stands still: the timer that lets it go on (see pausing.py)
    pause: asyncio.TimerHandle | None = None
    paused_at: float = 0.0  # loop time of the current pause
    paused_for: float = 0.0  # seconds spent standing still, earlier pauses
    #: a start waited for this warming kernel as long as a cold start takes: later starts
    #: don't wait for it (it is handed out once ready)
    overdue: bool = False

    @property
    def claimed(self) -> bool:
        """Taken by a start (or to free its slot): the pool no longer hands it out or
        pauses it, and its claimer, not its shutdown, gets its slot back."""
        return self.place in (Place.CLAIMED, Place.EVICTED)

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def stood_still(self) -> float:
        """Seconds the process has been stopped so far (see pausing.py)."""
        if self.pause is None:
            return self.paused_for
        return self.paused_for + asyncio.get_running_loop().time() - self.paused_at

    def close_client(self) -> None:
        client, self.client = self.client, None
        statuses, self.statuses = self.statuses, None
        if client is not None:
            self.adapter.close_client()
        if statuses is not None:
            statuses.close(linger=0)


@dataclass(frozen=True)
class HandedOut:
    """What a provisioner takes over from the pool at handout."""

    provisioner: KernelProvisionerBase
    connection_info: dict[str, Any]
    connection_file: str
    cmd: list[str]
    slot: Slot


@dataclass(eq=False)
class Reservation:
    """Room for one kernel start, taken synchronously so concurrent starts can't overshoot.

    Exactly one of: a claimed pooled kernel of the requested name, a free slot,
    or a pooled kernel of another name to discard for its slot.
    """

    kernel: PooledKernel | None = None
    slot: Slot | None = None
    victim: PooledKernel | None = None
