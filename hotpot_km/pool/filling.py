"""Keeping the pools full: one filler task starts warm-ups where pools are short of their
target (see :mod:`~hotpot_km.pool.sizing`), within ``max_kernels``, ``max_warming`` and the
back-off after failures, ends kernels a pool no longer needs, and sleeps until something
changes."""

from __future__ import annotations

import asyncio
import uuid

from ..budget import Slot
from .model import PooledKernel, PoolState, WarmupError

#: Seconds between checks of pools that follow demand or wait for memory (their targets
#: change with time, not only with events).
RECHECK = 1.0


class Filling(PoolState):
    """Keeps each pool at its size (see :meth:`resize` and :meth:`wait_full`)."""

    def resize(self) -> None:
        """Apply new pool sizes: surplus idle kernels go (warming ones first), the filler adds."""
        self._drop_surplus()
        self._wake_filler()

    def _drop_surplus(self) -> None:
        for name, kernels in list(self._idle.items()):
            surplus = len(kernels) - max(self.sizing.target_size(name), 0)
            victims = sorted(kernels, key=lambda k: k.is_ready)[: max(surplus, 0)]
            for kernel in victims:
                self._drop(kernel)

    async def wait_full(self) -> None:
        """Wait until every pool holds its size in ready kernels, or can't grow (``max_kernels``).

        Raises :class:`WarmupError` if a kernel fails to warm up meanwhile, except for one
        death at start of a name whose kernels started before, which the filler retries.
        """
        self.start()
        failures = dict(self._failures)
        self._waiters += 1
        try:
            while True:
                for kernel in list(self._warming):  # someone waits for them now
                    self._normal_priority(kernel)
                for name, count in self._failures.items():
                    if count > failures.get(name, 0) and name not in self._forgiven:
                        raise WarmupError(self._last_error[name])
                if self._is_full():
                    return
                if self._filler is None or self._filler.done():
                    raise RuntimeError("the kernel pool is not running")
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._waiters -= 1

    def _is_full(self) -> bool:
        for name in self.sizing.names():
            size = self.sizing.target_size(name)
            idle = self._idle.get(name, [])
            if sum(k.is_ready for k in idle) >= size:
                continue
            if self.budget.free() == 0 and not any(k in self._warming for k in idle):
                continue
            return False
        return True

    # -- the filler --------------------------------------------------------------------------

    def _wake_filler(self) -> None:
        """Something changed (a launch, a warm-up ended, a claim, a release): re-check."""
        self._changed.set()
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._woken = False
            try:
                await self._prune_dead()
                self._drop_surplus()  # a demand-based pool's target went down
                delay = self._start_missing(loop.time())
            except Exception:
                self.log.exception("hotpot_km: error while filling the kernel pool")
                delay = 5.0
            if self._idle_count():
                delay = 1.0 if delay is None else min(delay, 1.0)  # keep watching for deaths
            if not self._woken:
                await self._sleep(delay)

    async def _sleep(self, delay: float | None) -> None:
        """Sleep until ``delay`` passes or :meth:`_wake_filler` is called."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(delay, _resolve, waiter) if delay is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _idle_count(self) -> int:
        return sum(len(ks) for ks in self._idle.values())

    async def _prune_dead(self) -> None:
        for kernels in list(self._idle.values()):
            for kernel in [k for k in kernels if k.is_ready]:
                if not await kernel.adapter.is_alive():
                    self.log.warning(
                        "hotpot_km: pooled %r kernel died while waiting in the pool; replacing it",
                        kernel.name,
                    )
                    self.observer.pooled_kernel_died(kernel.name)
                    self._drop(kernel)

    def _start_missing(self, now: float) -> float | None:
        """Launch warm-ups where pools are short; return seconds until the next is due."""
        settings = self._host.pool_settings()
        wait: float | None = None
        if self.closed:
            return None
        for name in self.sizing.names():
            size = self.sizing.target_size(name)
            if self.sizing.follows_demand(name) or self.sizing.reason(name) == "memory_floor":
                wait = RECHECK if wait is None else min(wait, RECHECK)
            self._idle.setdefault(name, [])
            if self._held(name) >= size:
                continue
            due = self._not_before.get(name, 0.0)
            if self._pressed(name) and not self._failures.get(name):
                due = 0.0  # visits overlap: no fill_delay (the back-off after failures stays)
            if due > now:
                wait = due - now if wait is None else min(wait, due - now)
                continue
            limit = max(settings.max_warming, 1)
            if self._pressed(name):  # the refills are what the next visitors wait for
                limit = max(limit, settings.overlap_warming)
            while self._held(name) < size and len(self._warming) < limit:
                slot = self.budget.try_take()
                if slot is None:
                    return wait
                self._launch(name, slot)
        return wait

    def _held(self, name: str) -> int:
        """Kernels that count toward a pool's size: idle ones, claimed ones (until handed
        out or discarded) and handed-out ones whose refill waits for them (see _settle),
        unless visits overlap (see :meth:`_pressed`): then each taken kernel is replaced
        at once, as fast as ``max_warming`` (or ``overlap_warming``) allows."""
        # copies: Sizing asks this from a metrics thread too
        held = list(self._claimed) if self._pressed(name) else self._claimed | self._settling
        return len(self._idle.get(name, [])) + sum(k.name == name for k in held)

    def _pressed(self, name: str) -> bool:
        """Whether visits to pool ``name`` overlap: two or more of its handed-out kernels
        settle at once. The courtesy rules (``fill_delay``, the wait for a handed-out kernel
        to settle, ``refill_pause``, idle priority) are for a lone visitor; under a stream
        they would hold back a refill per visit in flight and starve the pool, so while
        visits overlap they step aside for that pool."""
        return sum(k.name == name for k in list(self._settling)) >= 2

    def _launch(self, name: str, slot: Slot) -> None:
        adapter = self._host.new_pool_kernel(name, str(uuid.uuid4()))
        kernel = PooledKernel(
            name,
            adapter,
            slot,
            asyncio.get_running_loop().create_future(),
            launched=self.sizing.clock(),
        )
        self._idle.setdefault(name, []).append(kernel)
        self._warming.add(kernel)
        kernel.task = self._spawn(self._warm(kernel), f"hotpot_km warm-up {name}")
        self._wake_filler()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
