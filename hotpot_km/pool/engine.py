"""The pool engine: starts, warms, hands out and discards kernel processes.

One :class:`KernelPool` serves one host manager (see :mod:`hotpot_km.limited`).
It owns every task it starts: the filler, each warm-up, each discard and each
retiring process; :meth:`KernelPool.aclose` cancels and awaits all of them and
leaves no kernel process behind. A pooled kernel goes through::

    warming --(warm-up done)--> ready --(claimed, cwd/env applied)--> handed out
        \\                         \\
         `--(error, timeout, death, shrink)--> discarded (process shut down)

Its parts own its state: :class:`~hotpot_km.pool.kernels.PoolKernels` holds where each
kernel is and is the only code that moves one; :class:`~hotpot_km.pool.backoff.BackOff`
owns when the next warm-up of each pool may start; :class:`~hotpot_km.pool.sizing.Sizing`
how many kernels each keeps; :class:`~hotpot_km.pool.pausing.Pauses` which warm-ups stand
still; :class:`~hotpot_km.pool.settling.Settlers` the watches of handed-out kernels;
:class:`~hotpot_km.pool.ownership.Endings` the shutdowns; the budget the slots.

Handed-out processes leave the pool entirely: from then on they belong to the
host's own ``KernelManager`` through :class:`hotpot_km.provisioner.PooledProvisioner`.

:class:`KernelPool` holds those parts and inherits the logic of one class per remaining
concern (filling, warm-up, claiming; see :mod:`hotpot_km.pool`); this module ties them
together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec

from ..budget import KernelBudget, Slot
from ..events import Observers, PoolLog, PoolObserver, PoolStats
from ..request import ColdReason, LaunchRequest, mismatch
from ..snapshot import KernelView, PoolSnapshot, PoolView
from ..tasks import OwnedTasks
from .backoff import BackOff
from .claiming import Claiming
from .filling import Filling
from .kernels import PoolKernels
from .leftovers import Leftovers
from .model import PooledKernel, PoolHost
from .ownership import _CLOSE_WAIT, Endings
from .pausing import Pauses
from .settling import Settlers
from .sizing import Sizing
from .state import Wakeup
from .warmup import Warmup


class KernelPool(Filling, Warmup, Claiming):
    """Keeps warm kernels per kernel name and hands them out; see the module docstring."""

    def __init__(
        self,
        host: PoolHost,
        budget_limit: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        memory: Callable[[], int | None] | None = None,
    ) -> None:
        self._host = host
        self.budget = KernelBudget(budget_limit, on_release=self._wake_filler)
        #: where each pooled kernel is: the only code that moves one (see .kernels)
        self.kernels = PoolKernels()
        #: how many kernels each pool keeps (``clock``: the loop's; ``memory``: available
        #: bytes, read from the machine if not given)
        self.sizing = Sizing(
            host.pool_settings,
            max_kernels=budget_limit,
            held=lambda name: self._held(name),
            log=lambda: self.log,
            clock=clock,
            memory=memory,
        )
        #: warm-ups that stand still while a handed-out kernel settles (see .pausing)
        self.pauses = Pauses(
            self.kernels,
            refill_pause=lambda: host.pool_settings().refill_pause,
            awaited=lambda: self._waiters > 0,
            pressed=lambda name: self._pressed(name),
            normal_priority=self._normal_priority,
        )
        #: every task the pool starts but the filler and the watches of handed-out kernels
        self._tasks = OwnedTasks()
        #: the watches of handed-out kernels until their refill may start (see .settling)
        self.settlers = Settlers(
            self.kernels,
            self.pauses,
            settings=host.pool_settings,
            log=lambda: self.log,
            changed=self._wake_filler,
        )
        #: the shutdowns of pooled kernels and of processes the host retires (see .ownership)
        self.endings = Endings(
            self.kernels,
            self._tasks,
            log=lambda: self.log,
            resume=self.pauses.resume,
            changed=self._wake_filler,
        )
        self._waiters = 0  # callers of wait_full(): warm-ups they wait for get normal priority
        self._filler: asyncio.Task[None] | None = None
        self._wakeup = Wakeup()  # the filler's sleep, and what wait_full() watches
        #: when each pool's next warm-up may start; its failures (see .backoff)
        self.backoff = BackOff()
        self._start_seconds: dict[str, deque[float]] = {}  # see Claiming.warmup_wait
        self._specs: dict[str, KernelSpec] = {}  # read off the loop, per kernel name
        self._context: zmq.asyncio.Context | None = None
        #: closed by the host's finalizer if it is dropped without aclose()
        self.leftovers = Leftovers()
        self._templates: dict[str, tuple[LaunchRequest, str | None]] = {}  # last launch per name
        self.closed = False
        #: what the pool reports (see hotpot_km.events); hosts add their own observers
        self.stats = PoolStats()
        self.observer = Observers(
            [self.stats, PoolLog(lambda: self.log, self._fill_level), _Measure(self.sizing)],
            lambda: self.log,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        return self._host.log

    def start(self) -> None:
        """Start the filler on the running loop (idempotent; a no-op once closed)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if self._filler is not None and not self._filler.done():
            if self._filler.get_loop() is loop:
                return
            self.log.warning("hotpot_km: the event loop changed; restarting the kernel pool on it")
            self._filler.cancel()
        self._filler = loop.create_task(self._fill(), name="hotpot_km pool filler")

    async def aclose(self) -> None:
        """Stop filling, shut down every pooled and warming kernel, await every task. Idempotent."""
        self.closed = True
        filler, self._filler = self._filler, None
        if filler is not None:
            filler.cancel()
            if filler.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(filler, return_exceptions=True)
        self.settlers.tasks.cancel()
        await self.settlers.tasks.join()
        for kernel in self.kernels.all_unclaimed():
            self.endings.drop(kernel)
        stuck = await self._tasks.join(_CLOSE_WAIT)
        if stuck:  # a process that survives SIGKILL: stop waiting for it
            self.log.error(
                "hotpot_km: %d kernel shutdowns did not finish in %g s; giving up on them",
                len(stuck),
                _CLOSE_WAIT,
            )
            self._tasks.cancel()
            await self._tasks.join()
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    @property
    def warm_restarts(self) -> bool:
        """Whether a restart may take a ready pooled kernel (the host's ``warm_restarts``)."""
        return self._host.pool_settings().warm_restarts

    async def discard(self, kernel: PooledKernel) -> Slot | None:
        """Shut a claimed kernel down (a victim, or one a host gives up); its slot comes back
        once the process is gone (see :meth:`Endings.discard`)."""
        return await self.endings.discard(kernel)

    def retire(self, gone: Coroutine[Any, Any, None], slot: Slot | None) -> None:
        """See out a process the host no longer uses; ``slot`` is freed once ``gone``
        returned (see :meth:`Endings.retire`)."""
        self.endings.retire(gone, slot)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    async def spec(self, name: str) -> KernelSpec:
        """The kernelspec, looked up off the event loop; cached for the handout path."""
        ksm = self._host.kernel_spec_manager
        assert ksm is not None
        spec = await asyncio.to_thread(ksm.get_kernel_spec, name)
        self._specs[name] = spec
        return spec

    def cached_spec(self, name: str) -> KernelSpec | None:
        """The spec last read by a warm-up of a pooled name (kept fresh by its refills)."""
        if not self.sizing.pooled(name):
            return None  # cold starts re-read it, as jupyter_client does
        return self._specs.get(name)

    def zmq_context(self) -> zmq.asyncio.Context:
        """One context for every pooled kernel's sockets (an adapter's), closed with the pool."""
        if self._context is None:
            self._context = self.leftovers.new_context()
        return self._context

    # -- observation -------------------------------------------------------------------------

    def cold_reason(self, name: str, request: LaunchRequest | None) -> ColdReason:
        """Why a start of ``name`` gets no pooled kernel, once :meth:`claim` found none."""
        if not self.sizing.pooled(name):
            return ColdReason.NO_POOL
        template = self._templates.get(name)  # what this pool's kernels are launched with
        if request is not None and template is not None:
            found = mismatch(template[0], template[1], request)
            if found is not None:
                return found.reason
        if self.backoff.failures(name):
            return ColdReason.WARMUP_FAILING
        if any(k.overdue and not k.ready.done() for k in self.kernels.unclaimed(name)):
            return ColdReason.WARMUP_SLOW
        return ColdReason.POOL_EMPTY

    def _fill_level(self, name: str) -> tuple[int, int]:
        """(ready kernels, target size) of one pool."""
        return self.kernels.ready_count(name), self.sizing.target_size(name)

    def snapshot(self) -> PoolSnapshot:
        """The pools as they are now: kernels per state with ages, failures, slots, counts.

        Safe to call from another thread (a metrics server's): it only copies.
        """
        now = self.sizing.clock()  # time.monotonic(), the clock of loop.time() too
        settings = self._host.pool_settings()
        found: dict[str, list[KernelView]] = {}

        def add(kernel: PooledKernel, state: str) -> None:
            since = kernel.ready_since
            pid = kernel.adapter.pid
            view = KernelView(
                state,
                pid,
                now - kernel.launched,
                None if since is None else now - since,
                kernel.pause is not None,
            )
            found.setdefault(kernel.name, []).append(view)

        for kernel, state in self.kernels.views():
            add(kernel, state)
        configured = self.sizing.names()
        names = [*configured, *sorted(set(found) - set(configured))]
        pools = []
        for name in names:
            failures = self.backoff.failures(name)
            due = self.backoff.not_before(name) - now
            pools.append(
                PoolView(
                    kernel_name=name,
                    size=self.sizing.bounds(name)[1],
                    target=self.sizing.target_size(name),
                    target_reason=self.sizing.reason(name),
                    min_size=settings.min_sizes.get(name),
                    kernels=tuple(found.get(name, ())),
                    consecutive_failures=failures,
                    last_error=self.backoff.last_error(name),
                    next_warmup_in=max(due, 0.0) if failures else None,
                )
            )
        return PoolSnapshot(
            pools=tuple(pools),
            processes=self.budget.used,
            max_kernels=self.budget.limit,
            retiring=self.endings.retiring,
            settings=settings,
            stats={n: self.stats.for_name(n) for n in sorted(set(names) | self.stats.names())},
            recent_errors=tuple(self.stats.recent_errors),
            closed=self.closed,
            available_memory=self.sizing.available_memory(),
        )


class _Measure(PoolObserver):
    """Tells the sizing how long warm-ups take (the W of its Little's law)."""

    def __init__(self, sizing: Sizing) -> None:
        self._sizing = sizing

    def warmup_succeeded(self, kernel_name: str, seconds: float) -> None:
        self._sizing.warmed_up(kernel_name, seconds)
