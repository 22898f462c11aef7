"""The hand-out path: room for a start (a pooled kernel, a free slot or a victim), the
claim of a kernel that matches the request, the handout itself, or why there is none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from ..budget import KernelLimitReached, Slot
from ..languages import preparation_for
from ..request import ColdReason, LaunchRequest, fixed_options, mismatch
from .model import (
    HandedOut,
    HandoutError,
    Place,
    PooledKernel,
    Reservation,
    WarmupError,
)
from .settling import apply_by_file, apply_by_stdin, send_handout
from .state import PoolState

#: Seconds a start waits at most for a warming kernel before the pool measured how long
#: a kernel start takes (see :meth:`Claiming.warmup_wait`).
WARMUP_WAIT_CAP = 30.0
#: A start waits for a warming kernel up to this many of the pool's warm-up times.
WARMUP_WAIT_SLACK = 1.5


class _Overdue(Exception):
    """The claimed kernel was still warming after as long as a cold start takes."""


class Claiming(PoolState):
    """Gives pooled kernels to starts, or says why it can't."""

    def reserve(self, name: str, kwargs: Mapping[str, Any]) -> Reservation:
        """Room for one start, synchronously: a pooled kernel, a free slot, or a victim.

        Raises :class:`~hotpot_km.budget.KernelLimitReached` when none is left, or when a
        new process is needed while available memory is below ``memory_floor``.
        """
        self._ensure_started()
        kernel = self.claim(name, None, ready_only=False, options=fixed_options(kwargs))
        if kernel is not None:
            return Reservation(kernel=kernel)
        low = self.sizing.below_floor()
        if low is not None:
            self.observer.start_refused(name, "memory_floor")
            available, floor = low
            raise KernelLimitReached(
                f"Cannot start a {name!r} kernel: {available // 2**20} MiB of memory is "
                f"available, below the memory_floor of {floor // 2**20} MiB.",
                "memory_floor",
                floor // 2**20,
            )
        slot = self.budget.try_take()
        if slot is not None:
            return Reservation(slot=slot)
        victim = self._claim_victim(prefer_not=name)
        if victim is not None:
            return Reservation(victim=victim)
        self.observer.start_refused(name)
        raise KernelLimitReached(
            f"Cannot start a {name!r} kernel: the limit of {self.budget.limit} kernel processes "
            f"(max_kernels) is reached by running, starting and pooled kernels.",
            "max_kernels",
            self.budget.limit,
        )

    def _ensure_started(self) -> None:
        try:
            self.start()
        except RuntimeError:  # no running loop: the host starts us when it runs one
            pass

    def claim(
        self,
        name: str,
        request: LaunchRequest | None,
        *,
        ready_only: bool,
        options: Mapping[str, Any] | None = None,
    ) -> PooledKernel | None:
        """Take an idle kernel able to serve ``request``: the longest-ready one, else the
        warming one that started first (it will be ready first)."""
        if self.closed:
            return None
        candidates = []
        # while warm-ups fail, or once a start waited in vain, nobody waits for one
        no_waiting = ready_only or self.backoff.failing(name)
        for kernel in self.kernels.unclaimed(name):
            if kernel.ready.done() and not kernel.is_ready:
                continue
            if not kernel.is_ready and (no_waiting or kernel.overdue):
                continue
            if kernel.launch is not None:
                if request is not None and mismatch(kernel.launch, kernel.language, request):
                    continue
                if options is not None and dict(kernel.launch.options) != dict(options):
                    continue
            candidates.append(kernel)
        if not candidates:
            return None
        kernel = next((k for k in candidates if k.is_ready), candidates[0])
        self.kernels.claim(kernel)
        self._normal_priority(kernel)
        self._arrived(name)
        self._wake_filler()
        return kernel

    def _arrived(self, name: str) -> None:
        """A request for ``name`` came: it counts toward the pool's demand (see Sizing), and
        the refill waits ``fill_delay`` (unless requests come as a stream: see Filling._pressed)."""
        self.sizing.arrived(name)
        fill_delay = self._host.pool_settings().fill_delay
        now = asyncio.get_running_loop().time()
        settling = self.kernels.settling_count(name) > 0
        self.backoff.arrived(name, now, fill_delay, settling=settling)

    def _missed(self, name: str) -> None:
        """A request found no kernel of pool ``name``: that is demand too, and the pool is
        short now, so its refill waits for nothing (``fill_delay`` pushed out again by each
        miss kept a pool that a stream of requests found empty from refilling until they
        stopped). The back-off after failing warm-ups stays."""
        self.sizing.arrived(name)
        self.backoff.missed(name)
        self._wake_filler()

    def _claim_victim(self, prefer_not: str) -> PooledKernel | None:
        """An idle kernel to discard for its slot: failed or warming ones first."""
        idle = self.kernels.all_unclaimed()
        if not idle:
            return None
        victim = sorted(idle, key=lambda k: (k.name == prefer_not, k.is_ready))[0]
        self.kernels.evict(victim)
        return victim

    def unclaim(self, kernel: PooledKernel) -> None:
        """Put a claimed, untouched kernel back at the front of its pool."""
        if self.closed or (kernel.ready.done() and not kernel.is_ready):
            self.endings.drop(kernel)
            return
        self.kernels.unclaim(kernel)
        self.resize()  # a replacement may have started meanwhile

    async def hand_out(self, kernel: PooledKernel, request: LaunchRequest) -> Any:
        """Apply ``request`` to a claimed kernel and detach it from the pool.

        Returns what its adapter hands over (:class:`HandedOut` for a local process),
        or ``None`` (kernel returned to the pool) if it can't serve this request;
        raises :class:`HandoutError` (kernel discarded) if it failed.
        The handout is one control message whose reply is not awaited: the kernel's
        gate holds any other request until it is applied, and a kernel that fails to
        apply it exits (see :mod:`hotpot_km.languages`).
        """
        waiting = None if kernel.ready.done() else time.monotonic()
        try:
            if not await self._ready_in_time(kernel, request):
                kernel.overdue = True
                self.unclaim(kernel)  # it goes on warming, and serves a later start
                raise _Overdue
            if (
                not kernel.ready.done()
                and kernel.launch is not None
                and mismatch(kernel.launch, kernel.language, request)
            ):
                self.unclaim(kernel)  # it can't serve this start: no wait for its warm-up
                return None
            await asyncio.shield(kernel.ready)  # a failed warm-up: discarded (HandoutError)
        except asyncio.CancelledError:
            if not kernel.ready.done():  # our caller was cancelled, not the warm-up
                self.unclaim(kernel)
                raise
            raise HandoutError("its warm-up was cancelled") from None
        except WarmupError as error:
            raise HandoutError(str(error), ColdReason.WARMUP_FAILING) from None
        if waiting is not None:
            self.observer.waited_for_warmup(kernel.name, time.monotonic() - waiting)
        assert kernel.launch is not None and kernel.client is not None
        if mismatch(kernel.launch, kernel.language, request):
            self.unclaim(kernel)
            return None
        if not await kernel.adapter.is_alive():
            raise HandoutError("it died while waiting in the pool", ColdReason.DEAD_KERNEL)
        handout: str | None = None
        prep = preparation_for(kernel.language)
        if prep is not None:
            if request.cwd is not None and request.cwd != kernel.launch.cwd:
                try:
                    await kernel.adapter.check_cwd(request.cwd)
                except OSError:
                    self.unclaim(kernel)  # nothing was sent: the kernel is untouched
                    raise
            await self._at_normal_priority(kernel)
            settings = self._host.pool_settings()
            if prep.stdin:
                # as by file, with the data on the stdin channel (a kernel on a remote gateway)
                assert kernel.started_env is not None
                await apply_by_stdin(
                    kernel.client,
                    prep,
                    kernel.started_env,
                    kernel.launch,
                    request,
                    timeout=settings.startup_timeout,
                    is_alive=kernel.adapter.is_alive,
                )
            elif prep.handout_by_file:
                # no gate in such a kernel: applied before the host gets the kernel
                await apply_by_file(kernel, prep, request, settings.startup_timeout)
            else:
                handout = send_handout(kernel.client, kernel.launch, request)
        else:
            await self._at_normal_priority(kernel)
        return self._detach(kernel, handout)

    def warmup_wait(self, name: str) -> float:
        """Seconds a start waits at most for a warming kernel of ``name``: as long as a cold
        start is expected to take, :data:`WARMUP_WAIT_CAP` before the pool measured any; or
        ``max_warmup_wait``.

        A cold start is ready once it answers (the longest of the pool's recent launches to
        a first reply), but its notebook then does the imports and init work the pool's
        warm-up did: once warm-ups finish, the bound is a whole warm-up (the pool's running
        estimate, with :data:`WARMUP_WAIT_SLACK`), so a visitor waits for a kernel that
        will be warm rather than starting one that is not. A pool whose warm-ups never
        finish (an init step that hangs) has no such measurement: its starts wait only a
        launch's time."""
        configured = self._host.pool_settings().max_warmup_wait
        if configured is not None:
            return configured
        measured = self._start_seconds.get(name)
        if not measured:
            return WARMUP_WAIT_CAP
        warmup = self.sizing.measured_warmup(name)
        return max(max(measured), WARMUP_WAIT_SLACK * warmup if warmup is not None else 0.0)

    async def _ready_in_time(self, kernel: PooledKernel, request: LaunchRequest) -> bool:
        """Wait until the kernel's warm-up ended (either way), or until it is known that it
        can't serve ``request`` (what it is launched for is known early in its warm-up);
        ``False`` if that takes longer than :meth:`warmup_wait` (checked again as
        measurements come in)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not kernel.ready.done():
            if kernel.launch is not None and mismatch(kernel.launch, kernel.language, request):
                return True
            left = began + self.warmup_wait(kernel.name) - loop.time()
            if left <= 0:
                return False
            prepared = (
                None if kernel.prepared.is_set() else loop.create_task(kernel.prepared.wait())
            )
            try:
                waits = [kernel.ready] if prepared is None else [kernel.ready, prepared]
                await asyncio.wait(
                    waits, timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if prepared is not None:
                    prepared.cancel()
        return True

    async def take(
        self, request: LaunchRequest, *, ready_only: bool, kernel: PooledKernel | None = None
    ) -> tuple[Any, Slot | None, ColdReason | None]:
        """Hand out a pooled kernel for ``request``: ``kernel`` (already claimed) or one
        claimed here. A kernel whose handout fails is discarded and one more ready kernel
        is tried. Returns what was handed out (``None``: no pooled kernel can serve the
        request), the slot of the first discarded kernel, for the caller's cold start, and
        why the last failed handout failed (the cold start's reason)."""
        spare: Slot | None = None
        failure: ColdReason | None = None
        for attempt in range(3):
            if kernel is None:
                kernel = self.claim(request.kernel_name, request, ready_only=ready_only)
                if kernel is None and attempt == 0 and self.sizing.pooled(request.kernel_name):
                    self._missed(request.kernel_name)
            if kernel is None:
                break
            try:
                return await self.hand_out(kernel, request), spare, None
            except _Overdue:
                self.log.info(
                    "hotpot_km: a pooled %r kernel is still warming after %.1f s, as long as a "
                    "cold start takes; starting cold",
                    request.kernel_name,
                    self.warmup_wait(request.kernel_name),
                )
                return None, spare, ColdReason.WARMUP_SLOW
            except asyncio.CancelledError:
                if kernel.place is Place.CLAIMED:  # cancelled while applying: nobody can use it
                    self._spawn(self._discard_unowned(kernel), "discard")
                raise
            except HandoutError as error:
                self.log.warning(
                    "hotpot_km: a pooled %r kernel was not handed out: %s",
                    request.kernel_name,
                    error,
                )
                failure = error.reason
                if error.reason is ColdReason.DEAD_KERNEL:
                    self.observer.pooled_kernel_died(request.kernel_name)
                slot = await self.endings.discard(kernel)
                if spare is None:
                    spare = slot
                elif slot is not None:
                    slot.release()
                kernel, ready_only = None, True
        return None, spare, failure

    async def _discard_unowned(self, kernel: PooledKernel) -> None:
        slot = await self.endings.discard(kernel)
        if slot is not None:
            slot.release()

    def _detach(self, kernel: PooledKernel, handout: str | None) -> Any:
        """Release the pool's hold on a kernel so the host's own code can own it; watch it
        settle in the background (see :class:`~hotpot_km.pool.settling.Settlers`)."""
        self.kernels.hand_out(kernel, settle=not self.closed)
        handed = kernel.adapter.detach(kernel.slot)
        if self.closed:  # handed out while the pool closes: no refill to hold back for it
            kernel.close_client()
            return handed
        self.settlers.watch(kernel, handout)
        self._wake_filler()
        return handed

    async def cold_slot(self, name: str) -> Slot:
        """A slot for a cold start, discarding an idle pooled kernel if the limit demands it."""
        slot = self.budget.try_take()
        if slot is None:
            victim = self._claim_victim(prefer_not=name)
            if victim is not None:
                slot = await self.endings.discard(victim) or self.budget.try_take()
        if slot is None:
            self.observer.start_refused(name)
            raise KernelLimitReached(
                f"Cannot start a {name!r} kernel: the limit of {self.budget.limit} kernel "
                f"processes (max_kernels) is reached.",
                "max_kernels",
                self.budget.limit,
            )
        return slot

    async def serve(self, request: LaunchRequest) -> HandedOut | str:
        """Hand out a pooled kernel for ``request`` of another process, or say why not.

        For hosts that never start kernels themselves (the pool service): a refusal
        is the caller's cue to start a cold kernel its own way, so no slot is kept
        for one. The handed-out process keeps its slot until the host releases it.
        """
        self._ensure_started()
        handed, spare, _failure = await self.take(request, ready_only=False)
        if spare is not None:
            spare.release()
        return handed if handed is not None else self.refusal(request)

    def refusal(self, request: LaunchRequest) -> str:
        """Why no pooled kernel can serve ``request`` right now, in a few words."""
        name = request.kernel_name
        if self.closed:
            return "the pool is shutting down"
        if not self.sizing.pooled(name):
            return f"no pool for kernel {name!r}"
        for kernel in self.kernels.unclaimed(name):
            if kernel.launch is not None:
                why = mismatch(kernel.launch, kernel.language, request)
                if why:
                    return f"the request has {why}"
        error = self.backoff.last_error(name)
        if error is not None:
            return f"no ready kernel in the pool ({error})"
        if any(k.overdue and not k.ready.done() for k in self.kernels.unclaimed(name)):
            return "no ready kernel in the pool (still warming after as long as a cold start takes)"
        if self.budget.free() == 0:
            return f"no ready kernel in the pool (max_kernels={self.budget.limit} is reached)"
        return "no ready kernel in the pool (all taken; it is refilling)"
