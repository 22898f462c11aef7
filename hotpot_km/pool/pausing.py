"""Warm-ups stand still while a handed-out kernel settles.

A refill's imports keep a CPU busy for a second or more. Even under ``SCHED_IDLE`` that
slows the page being served on a small machine: the CPUs share caches, memory bandwidth
and often a physical core (benchmarks/README.md, Findings). So while any handed-out
kernel settles (see :mod:`~hotpot_km.pool.settling`), the warm-ups under way are stopped
(SIGSTOP to their process group) and go on (SIGCONT) when none settles any more. Each
warm-up stands still for at most ``refill_pause`` seconds in all, so refills still get done
under steady load; its warm-up timeouts don't count the time it stood still. A kernel that
a request claimed or that someone waits for (``wait_for_pool``) goes on at once and is not
stopped again; one being shut down goes on first, so that it can handle a SIGTERM. Nor
does a warm-up stand still, or run at idle priority, while visits to its pool overlap (see
``Filling._pressed``): then the refill is what the next request needs; it may stand still
again once they no longer overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .kernels import PoolKernels
from .model import PooledKernel


class Pauses:
    """Stops warm-ups while handed-out kernels settle, within each one's pause budget. Its
    state is on each kernel (``pause``, ``paused_at``, ``paused_for``); it reads where the
    kernels are from :class:`~hotpot_km.pool.kernels.PoolKernels`."""

    def __init__(
        self,
        kernels: PoolKernels,
        *,
        refill_pause: Callable[[], float],
        awaited: Callable[[], bool],
        pressed: Callable[[str], bool],
        normal_priority: Callable[[PooledKernel], None],
    ) -> None:
        self._places = kernels
        self._refill_pause = refill_pause  # the setting, read when it applies
        self._awaited = awaited  # someone waits for the pools to be full (wait_full)
        self._pressed = pressed  # requests for a pool come as a stream (Filling._pressed)
        self._normal_priority = normal_priority  # the warm-up's: a kernel someone needs now

    def settling_began(self) -> None:
        """A handed-out kernel began to settle: stop the warm-ups under way (but let those of
        a pool whose visits overlap go on, at normal priority)."""
        if not self._places.warming_count():
            return  # the common case, on the handout's path: read no settings
        limit = self._refill_pause()
        for kernel in self._places.warming():
            if self._pressed(kernel.name):
                self._normal_priority(kernel)
            else:
                self.pause(kernel, limit)

    def settling_ended(self) -> None:
        """A handed-out kernel settled: the warm-ups go on unless another one settles (and
        the visits to their pool no longer overlap)."""
        if self._places.settling_count():
            self.settling_began()
            return
        for kernel in self._places.warming():
            self.resume(kernel)

    def pause(self, kernel: PooledKernel, limit: float) -> None:
        """Stop ``kernel``'s process if a handed-out kernel settles and nothing needs it now
        (``limit``: the ``refill_pause`` setting)."""
        prio = kernel.adapter.priority
        budget = limit - kernel.paused_for
        if (
            budget <= 0
            or prio is None
            or kernel.pause is not None
            or not self._places.settling_count()
            or kernel.claimed
            or self._awaited()
            or kernel.ready.done()
            or kernel.ending is not None
            or self._pressed(kernel.name)
            or not prio.stop()
        ):
            return
        loop = asyncio.get_running_loop()
        kernel.paused_at = loop.time()
        kernel.pause = loop.call_later(budget, self.resume, kernel)  # its budget is spent

    def resume(self, kernel: PooledKernel) -> None:
        """Let ``kernel``'s process go on if it stands still (idempotent)."""
        timer, kernel.pause = kernel.pause, None
        if timer is None:
            return
        timer.cancel()
        kernel.paused_for += asyncio.get_running_loop().time() - kernel.paused_at
        prio = kernel.adapter.priority
        if prio is not None:
            prio.cont()
