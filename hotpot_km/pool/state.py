"""What the engine's concerns share: the parts that own the pool's state, a few fields of
the pool's own, and the methods one concern calls on another."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec

from ..budget import KernelBudget
from ..events import Observers, PoolStats
from ..request import LaunchRequest
from ..tasks import OwnedTasks
from .backoff import BackOff
from .kernels import PoolKernels
from .model import PooledKernel, PoolHost
from .ownership import Endings
from .pausing import Pauses
from .settling import Settlers
from .sizing import Sizing


class Wakeup:
    """The filler's sleep and what ends it: anything that may change what the pools need
    (a launch, a warm-up's end, a claim, a release) wakes it, and tells ``wait_full()``."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()  # for wait_full()
        self._sleep: asyncio.Future[None] | None = None
        self._woken = False

    def wake(self) -> None:
        self.changed.set()
        self._woken = True
        if self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(None)

    def begin_round(self) -> None:
        """The filler looks at the pools now: a wake from here on makes it look again."""
        self._woken = False

    async def sleep(self, delay: float | None) -> None:
        """Sleep until ``delay`` passes or :meth:`wake` is called (at once if it was since
        :meth:`begin_round`)."""
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        self._sleep = sleep = loop.create_future()
        timer = loop.call_later(delay, _resolve, sleep) if delay is not None else None
        try:
            await sleep
        finally:
            self._sleep = None
            if timer is not None:
                timer.cancel()


class PoolState:
    """What every concern of :class:`~hotpot_km.pool.KernelPool` uses, as its ``__init__``
    sets it up: the parts that own the pool's state (``kernels``, ``backoff``, ``sizing``,
    ``budget``, ``pauses``, ``settlers``, ``endings``) and a few fields of its own; and the
    methods one concern calls on another (each defined by its own concern; declared here
    for type checkers only)."""

    _host: PoolHost
    budget: KernelBudget
    sizing: Sizing
    kernels: PoolKernels  # where each kernel is (the only code that moves one)
    pauses: Pauses  # warm-ups standing still while a handed-out kernel settles
    endings: Endings  # shutdowns, and processes retired by the host
    settlers: Settlers  # the watches of handed-out kernels until their refill may start
    _waiters: int  # callers of wait_full(): warm-ups they wait for get normal priority
    _tasks: OwnedTasks  # every other task but the filler
    _filler: asyncio.Task[None] | None
    _wakeup: Wakeup  # the filler's sleep, and what wait_full() watches
    backoff: BackOff  # when each pool's next warm-up may start; its failures
    _start_seconds: dict[str, deque[float]]  # recent kernel starts (launch to first reply)
    _specs: dict[str, KernelSpec]
    _context: zmq.asyncio.Context | None
    _templates: dict[str, tuple[LaunchRequest, str | None]]  # last launch per name
    closed: bool
    stats: PoolStats
    observer: Observers

    if TYPE_CHECKING:
        # engine.KernelPool
        @property
        def log(self) -> logging.Logger | logging.LoggerAdapter[Any]: ...
        def start(self) -> None: ...
        def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

        # filling.Filling
        def resize(self) -> None: ...
        def _wake_filler(self) -> None: ...
        def _pressed(self, name: str) -> bool: ...
        def _held(self, name: str) -> int: ...

        # warmup.Warmup
        async def _warm(self, kernel: PooledKernel) -> None: ...
        def _normal_priority(self, kernel: PooledKernel) -> None: ...
        async def _at_normal_priority(self, kernel: PooledKernel) -> None: ...


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
