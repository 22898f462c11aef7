"""Keeping the pools full: one filler task starts warm-ups where pools are short of their
target (see :mod:`~hotpot_km.pool.sizing`), within ``max_kernels``, ``max_warming`` and the
back-off after failures, ends kernels a pool no longer needs, and sleeps until something
changes."""

from __future__ import annotations

import asyncio
import uuid

from ..budget import Slot
from .model import PooledKernel, WarmupError
from .state import PoolState

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
        for name in self.kernels.names():
            kernels = self.kernels.unclaimed(name)
            surplus = len(kernels) - max(self.sizing.target_size(name), 0)
            victims = sorted(kernels, key=lambda k: k.is_ready)[: max(surplus, 0)]
            for kernel in victims:
                self.endings.drop(kernel)

    async def wait_full(self) -> None:
        """Wait until every pool holds its size in ready kernels, or can't grow (``max_kernels``).

        Raises :class:`WarmupError` if a kernel fails to warm up meanwhile, except for one
        death at start of a name whose kernels started before, which the filler retries.
        """
        self.start()
        failures = self.backoff.counts()
        self._waiters += 1
        try:
            while True:
                for kernel in self.kernels.warming():  # someone waits for them now
                    self._normal_priority(kernel)
                failed = self.backoff.new_failure(failures)
                if failed is not None:
                    raise WarmupError(failed)
                if self._is_full():
                    return
                if self._filler is None or self._filler.done():
                    raise RuntimeError("the kernel pool is not running")
                self._wakeup.changed.clear()
                await self._wakeup.changed.wait()
        finally:
            self._waiters -= 1

    def _is_full(self) -> bool:
        for name in self.sizing.names():
            if self.kernels.ready_count(name) >= self.sizing.target_size(name):
                continue
            idle = self.kernels.unclaimed(name)
            if self.budget.free() == 0 and not any(map(self.kernels.is_warming, idle)):
                continue
            return False
        return True

    # -- the filler --------------------------------------------------------------------------

    def _wake_filler(self) -> None:
        """Something changed (a launch, a warm-up ended, a claim, a release): re-check."""
        self._wakeup.wake()

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.begin_round()
            try:
                await self._prune_dead()
                self._drop_surplus()  # a demand-based pool's target went down
                delay = self._start_missing(loop.time())
            except Exception:
                self.log.exception("hotpot_km: error while filling the kernel pool")
                delay = 5.0
            if self.kernels.unclaimed_count():
                delay = 1.0 if delay is None else min(delay, 1.0)  # keep watching for deaths
            await self._wakeup.sleep(delay)

    async def _prune_dead(self) -> None:
        for kernel in [k for k in self.kernels.all_unclaimed() if k.is_ready]:
            if not await kernel.adapter.is_alive():
                self.log.warning(
                    "hotpot_km: pooled %r kernel died while waiting in the pool; replacing it",
                    kernel.name,
                )
                self.observer.pooled_kernel_died(kernel.name)
                self.endings.drop(kernel)

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
            if self._held(name) >= size:
                continue
            due = self.backoff.not_before(name)
            if self._pressed(name) and not self.backoff.failures(name):
                due = 0.0  # visits overlap: no fill_delay (the back-off after failures stays)
            if due > now:
                wait = due - now if wait is None else min(wait, due - now)
                continue
            limit = max(settings.max_warming, 1)
            if self._pressed(name):  # the refills are what the next visitors wait for
                limit = max(limit, settings.overlap_warming)
            while self._held(name) < size and self.kernels.warming_count() < limit:
                slot = self.budget.try_take()
                if slot is None:
                    return wait
                self._launch(name, slot)
        return wait

    def _pressed(self, name: str) -> bool:
        """Whether requests for pool ``name`` come as a stream, not from a lone visitor: two
        or more of its handed-out kernels settle at once (visits overlap), or a request came
        while an earlier one's refill was still held back (back to back, faster than
        ``fill_delay``: ``BackOff.streaming``). The courtesy rules (``fill_delay``, the wait
        for a handed-out kernel to settle, ``refill_pause``, idle priority) are for a lone
        visitor; under a stream they would hold back a refill per request and starve the
        pool, so they step aside for that pool meanwhile."""
        return self.kernels.overlapping(name) or self.backoff.streaming(name, self.sizing.clock())

    def _held(self, name: str) -> int:
        """Kernels that count toward pool ``name``'s size now: unclaimed ones, claimed ones
        (until handed out or discarded) and handed-out ones whose refill waits for them,
        unless requests come as a stream (:meth:`_pressed`): then each taken kernel is
        replaced at once, as fast as ``max_warming`` (or ``overlap_warming``) allows."""
        return self.kernels.held(name, settling=not self._pressed(name))

    def _launch(self, name: str, slot: Slot) -> None:
        adapter = self._host.new_pool_kernel(name, str(uuid.uuid4()))
        kernel = PooledKernel(
            name,
            adapter,
            slot,
            asyncio.get_running_loop().create_future(),
            launched=self.sizing.clock(),
        )
        self.kernels.launched(kernel)
        kernel.task = self._spawn(self._warm(kernel), f"warm-up {name}")
        self._wake_filler()
