"""The pool engine: starts, warms, hands out and discards kernel processes.

One :class:`KernelPool` serves one host manager (see :mod:`hotpot_km.limited`).
It owns every task it starts: the filler, each warm-up, each discard and each
retiring process; :meth:`KernelPool.aclose` cancels and awaits all of them and
leaves no kernel process behind. A pooled kernel goes through::

    warming --(warm-up done)--> ready --(claimed, cwd/env applied)--> handed out
        \\                         \\
         `--(error, timeout, death, shrink)--> discarded (process shut down)

Handed-out processes leave the pool entirely: from then on they belong to the
host's own ``KernelManager`` through :class:`hotpot_km.provisioner.PooledProvisioner`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, Protocol

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerBase
from jupyter_client.session import Session
from jupyter_core.paths import jupyter_config_path

from . import keeper, priority
from .budget import KernelBudget, MaximumKernelsException, Slot
from .events import Observers, PoolLog, PoolStats
from .kernel_io import (
    METADATA_KEY,
    KernelCodeError,
    KernelDiedError,
    ShellClient,
    close_client,
    request_reply,
    run_code,
)
from .languages import HANDOUT_REPLY, HANDOUT_REQUEST, init_file_extension, preparation_for
from .priority import ProcessPriority
from .request import ColdReason, LaunchRequest, absolute_cwd, final_env, fixed_options, mismatch
from .snapshot import KernelView, PoolSnapshot, PoolView


@dataclass(frozen=True)
class PoolSettings:
    """A snapshot of the host's pool configuration (see the traits of ``PooledKernelManager``)."""

    sizes: Mapping[str, int] = field(default_factory=dict)
    launch_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fill_delay: float = 1.0
    fill_idle_timeout: float = 10.0
    idle_priority: bool = True
    initialization_code: Mapping[str, str] = field(default_factory=dict)
    python_imports: tuple[str, ...] = ()
    startup_timeout: float = 60.0
    init_timeout: float = 120.0
    max_warming: int = 1
    max_retry_delay: float = 60.0
    warm_restarts: bool = True


class PoolProcessManager(AsyncKernelManager):  # type: ignore[misc]
    """Manages one pooled process until handout. Its slot learns the process group in the
    launch step itself, so a host killed right after a launch can't leave the kernel
    behind (see :mod:`hotpot_km.keeper`)."""

    slot: Slot | None = None

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        await super()._async_launch_kernel(kernel_cmd, **kw)
        if self.slot is not None:
            self.slot.bind(process_group(self.provisioner))


class KernelAdapter(Protocol):
    """One pooled kernel as the engine drives it: launched, talked to, checked, handed
    over and stopped. :class:`LocalKernelAdapter` runs a process on this machine;
    :mod:`hotpot_km.gateway` runs one on a remote gateway. Everything else (filling,
    warm-up steps, claiming, back-off, ``max_kernels``) is the engine's, for both."""

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


@dataclass(eq=False)
class PooledKernel:
    """One kernel process owned by the pool, from launch until handout or discard."""

    name: str
    adapter: KernelAdapter
    slot: Slot
    ready: asyncio.Future[None]
    launch: LaunchRequest | None = None
    language: str | None = None
    client: ShellClient | None = None
    #: the kernel's own IOPub topics (status), to see it go idle after handout (local kernels)
    statuses: zmq.asyncio.Socket | None = None
    claimed: bool = False
    task: asyncio.Task[None] | None = None  # the warm-up
    ending: asyncio.Task[None] | None = None  # the shutdown, once started (see _end)
    #: a pending move of every thread back to normal priority (see _normal_priority)
    restoring: asyncio.Task[None] | None = None
    launched: float = field(default_factory=time.monotonic)
    ready_since: float | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

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


class KernelPool:
    """Keeps warm kernels per kernel name and hands them out; see the module docstring."""

    def __init__(self, host: PoolHost, budget_limit: Callable[[], int]) -> None:
        self._host = host
        self.budget = KernelBudget(budget_limit, on_release=self._wake_filler)
        self._idle: dict[str, list[PooledKernel]] = {}  # unclaimed, in launch order
        self._warming: set[PooledKernel] = set()
        self._claimed: set[PooledKernel] = set()  # claimed, not yet handed out or discarded
        self._settling: set[PooledKernel] = set()  # handed out, refill waits for it to go idle
        self._settlers: set[asyncio.Task[None]] = set()
        self._waiters = 0  # callers of wait_full(): warm-ups they wait for get normal priority
        self._tasks: set[asyncio.Task[Any]] = set()
        self._filler: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # the filler's sleep
        self._woken = False
        self._changed = asyncio.Event()  # for wait_full()
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        #: (wall-clock time, kernel name, message) of the latest warm-up failures
        self._specs: dict[str, KernelSpec] = {}
        self._context: zmq.asyncio.Context | None = None
        self._retiring = 0  # replaced processes still being seen out (see retire)
        self._templates: dict[str, tuple[LaunchRequest, str | None]] = {}  # last launch per name
        self.closed = False
        #: what the pool reports (see hotpot_km.events); hosts add their own observers
        self.stats = PoolStats()
        self.observer = Observers(
            [self.stats, PoolLog(lambda: self.log, self._fill_level)], lambda: self.log
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
        for settler in list(self._settlers):
            settler.cancel()
        for kernels in list(self._idle.values()):
            for kernel in list(kernels):
                self._drop(kernel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_WAIT
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:  # a process that survives SIGKILL: stop waiting for it
                stuck = list(self._tasks)
                self.log.error(
                    "hotpot_km: %d kernel shutdowns did not finish in %g s; giving up on them",
                    len(stuck),
                    _CLOSE_WAIT,
                )
                for task in stuck:
                    task.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
                break
            await asyncio.wait(list(self._tasks), timeout=left)
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    @property
    def warm_restarts(self) -> bool:
        """Whether a restart may take a ready pooled kernel (the host's ``warm_restarts``)."""
        return self._host.pool_settings().warm_restarts

    def resize(self) -> None:
        """Apply new pool sizes: surplus idle kernels go (warming ones first), the filler adds."""
        sizes = self._host.pool_settings().sizes
        for name, kernels in list(self._idle.items()):
            surplus = len(kernels) - max(sizes.get(name, 0), 0)
            victims = sorted(kernels, key=lambda k: k.is_ready)[: max(surplus, 0)]
            for kernel in victims:
                self._drop(kernel)
        self._wake_filler()

    async def wait_full(self) -> None:
        """Wait until every pool holds its size in ready kernels, or can't grow (``max_kernels``).

        Raises :class:`WarmupError` if a kernel fails to warm up meanwhile.
        """
        self.start()
        failures = dict(self._failures)
        self._waiters += 1
        try:
            while True:
                for kernel in list(self._warming):  # someone waits for them now
                    self._normal_priority(kernel)
                for name, count in self._failures.items():
                    if count > failures.get(name, 0):
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
        for name, size in self._host.pool_settings().sizes.items():
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
        for name, size in settings.sizes.items():
            self._idle.setdefault(name, [])
            if self._held(name) >= size:
                continue
            due = self._not_before.get(name, 0.0)
            if due > now:
                wait = due - now if wait is None else min(wait, due - now)
                continue
            while self._held(name) < size and len(self._warming) < max(settings.max_warming, 1):
                slot = self.budget.try_take()
                if slot is None:
                    return wait
                self._launch(name, slot)
        return wait

    def _held(self, name: str) -> int:
        """Kernels that count toward a pool's size: idle ones, claimed ones (until handed
        out or discarded) and handed-out ones whose refill waits for them (see _settle)."""
        held = self._claimed | self._settling
        return len(self._idle.get(name, [])) + sum(k.name == name for k in held)

    def _launch(self, name: str, slot: Slot) -> None:
        adapter = self._host.new_pool_kernel(name, str(uuid.uuid4()))
        kernel = PooledKernel(name, adapter, slot, asyncio.get_running_loop().create_future())
        self._idle.setdefault(name, []).append(kernel)
        self._warming.add(kernel)
        kernel.task = self._spawn(self._warm(kernel), f"hotpot_km warm-up {name}")
        self._wake_filler()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- warm-up -----------------------------------------------------------------------------

    async def spec(self, name: str) -> KernelSpec:
        """The kernelspec, looked up off the event loop; cached for the handout path."""
        ksm = self._host.kernel_spec_manager
        assert ksm is not None
        spec = await asyncio.to_thread(ksm.get_kernel_spec, name)
        self._specs[name] = spec
        return spec

    def cached_spec(self, name: str) -> KernelSpec | None:
        """The spec last read by a warm-up of a pooled name (kept fresh by its refills)."""
        if not self._host.pool_settings().sizes.get(name):
            return None  # cold starts re-read it, as jupyter_client does
        return self._specs.get(name)

    async def _warm(self, kernel: PooledKernel) -> None:
        settings = self._host.pool_settings()
        loop = asyncio.get_running_loop()
        source = "kernel start"
        try:
            kwargs = dict(settings.launch_kwargs.get(kernel.name, {}))
            kernel.launch, kernel.language = await kernel.adapter.prepare(kwargs)
            self._templates[kernel.name] = (kernel.launch, kernel.language)
            client = await kernel.adapter.start(settings.startup_timeout, kernel.slot)
            kernel.client = client
            prio = kernel.adapter.priority
            if prio is not None and not kernel.claimed and await self._may_lower(settings):
                prio.lower()  # threads it starts from now on inherit it
            kernel.statuses = kernel.adapter.watch_statuses()
            alive = kernel.adapter.is_alive
            reply = await request_reply(
                client,
                "kernel_info_request",
                {},
                timeout=settings.startup_timeout,
                is_alive=alive,
                resend_every=1.0,
            )
            deadline = loop.time() + settings.init_timeout
            for step, code, data in await self._warmup_steps(kernel, settings, reply["content"]):
                source = step
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                await run_code(client, code, timeout=left, is_alive=alive, data=data)
            if prio is not None:
                await prio.lower_all()
        except asyncio.CancelledError:
            kernel.ready.cancel()
            await asyncio.shield(self._end(kernel))
            raise
        except Exception as error:
            self._warmup_failed(kernel, source, error, settings)
            kernel.ready.set_exception(WarmupError(self._last_error[kernel.name]))
            kernel.ready.exception()  # retrieved: waiters re-raise it their own way
            await asyncio.shield(self._end(kernel))
        else:
            if self._failures.pop(kernel.name, 0):
                self.log.info("hotpot_km: %r kernels warm up again", kernel.name)
            self._last_error.pop(kernel.name, None)
            kernel.ready_since = time.monotonic()
            kernel.ready.set_result(None)
            self.observer.warmup_succeeded(kernel.name, kernel.ready_since - kernel.launched)
            self.log.debug("hotpot_km: pooled %r kernel ready", kernel.name)
        finally:
            self._warming.discard(kernel)
            idle = self._idle.get(kernel.name, [])
            if not kernel.is_ready and kernel in idle:
                idle.remove(kernel)
            self._wake_filler()

    async def _may_lower(self, settings: PoolSettings) -> bool:
        """Whether a new warm-up may run at idle CPU priority: nobody waits for it, and it can
        be brought back before handout."""
        if not settings.idle_priority or self._waiters:
            return False
        return await asyncio.to_thread(priority.can_restore)

    def _normal_priority(self, kernel: PooledKernel) -> None:
        """Back to normal CPU priority: someone waits for this kernel, or it is handed out."""
        prio = kernel.adapter.priority
        if prio is None or not prio.restore():
            return
        if not kernel.ready.done():
            # still warming: threads it started since launch inherited SCHED_IDLE
            restore = asyncio.to_thread(priority.restore_process, prio.pid)
            kernel.restoring = self._spawn(restore, "hotpot_km restore priority")

    async def _at_normal_priority(self, kernel: PooledKernel) -> None:
        """:meth:`_normal_priority`, and wait until every thread of the kernel is back."""
        self._normal_priority(kernel)
        if kernel.restoring is not None:
            await kernel.restoring

    async def _warmup_steps(
        self, kernel: PooledKernel, settings: PoolSettings, info: Mapping[str, Any]
    ) -> list[tuple[str, str, Any]]:
        """(source, code, data) in the documented order: imports, configured code, init files."""
        assert kernel.launch is not None
        steps: list[tuple[str, str, Any]] = []
        prep = preparation_for(kernel.language)
        if prep is not None:
            steps.append(
                ("hotpot_km bootstrap", prep.bootstrap, {"launch_env": dict(kernel.launch.env)})
            )
            if settings.python_imports:
                modules = list(settings.python_imports)
                steps.append(("python_imports", prep.import_modules, {"modules": modules}))
        code = settings.initialization_code.get(kernel.name)
        if code:
            steps.append((f"initialization_code[{kernel.name!r}]", code, None))
        reported = (info.get("language_info") or {}).get("file_extension")
        extension = init_file_extension(kernel.language, reported)
        if extension:
            for path, text in await asyncio.to_thread(_read_init_files, kernel.name, extension):
                steps.append((path, text, None))
        return steps

    def _warmup_failed(
        self, kernel: PooledKernel, source: str, error: Exception, settings: PoolSettings
    ) -> None:
        """Log a failure once per cause and push the next warm-up of this name back."""
        if isinstance(error, KernelCodeError):
            cause = error.summary()
        elif isinstance(error, (asyncio.TimeoutError, TimeoutError)):
            limit = settings.init_timeout if source != "kernel start" else settings.startup_timeout
            cause = f"timed out after {limit:g} s"
        elif isinstance(error, KernelDiedError):
            cause = "the kernel process exited"
        else:
            cause = f"{type(error).__name__}: {error}"
        failures = self._failures.get(kernel.name, 0) + 1
        self._failures[kernel.name] = failures
        delay = min(0.5 * 2 ** (failures - 1), max(settings.max_retry_delay, 0.5))
        self._not_before[kernel.name] = asyncio.get_running_loop().time() + delay
        message = f"warm-up of a pooled {kernel.name!r} kernel failed in {source}: {cause}"
        if self._last_error.get(kernel.name) != message:
            self.log.error(
                "hotpot_km: %s. The kernel was shut down and is never handed out; "
                "retrying with back-off (next in %.1f s).",
                message,
                delay,
            )
        else:
            self.log.debug("hotpot_km: %s (again, attempt %d)", message, failures)
        self._last_error[kernel.name] = message
        self.observer.warmup_failed(kernel.name, warmup_step(source), message)

    def _zmq_context(self) -> zmq.asyncio.Context:
        if self._context is None:
            self._context = zmq.asyncio.Context()
        return self._context

    # -- reservations and handout ------------------------------------------------------------

    def reserve(self, name: str, kwargs: Mapping[str, Any]) -> Reservation:
        """Room for one start, synchronously: a pooled kernel, a free slot, or a victim.

        Raises :class:`MaximumKernelsException` when none is left.
        """
        self._ensure_started()
        kernel = self.claim(name, None, ready_only=False, options=fixed_options(kwargs))
        if kernel is not None:
            return Reservation(kernel=kernel)
        slot = self.budget.try_take()
        if slot is not None:
            return Reservation(slot=slot)
        victim = self._claim_victim(prefer_not=name)
        if victim is not None:
            return Reservation(victim=victim)
        self.observer.start_refused(name)
        raise MaximumKernelsException(
            f"Cannot start a {name!r} kernel: the limit of {self.budget.limit} kernel processes "
            f"(max_kernels) is reached by running, starting and pooled kernels."
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
        for kernel in self._idle.get(name, ()):
            if kernel.ready.done() and not kernel.is_ready:
                continue
            if not kernel.is_ready and ready_only:
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
        self._idle[name].remove(kernel)
        kernel.claimed = True
        self._claimed.add(kernel)
        self._normal_priority(kernel)
        settings = self._host.pool_settings()
        loop = asyncio.get_running_loop()
        self._not_before[name] = max(
            self._not_before.get(name, 0.0), loop.time() + settings.fill_delay
        )
        self._wake_filler()
        return kernel

    def _claim_victim(self, prefer_not: str) -> PooledKernel | None:
        """An idle kernel to discard for its slot: failed or warming ones first."""
        idle = [k for ks in self._idle.values() for k in ks]
        if not idle:
            return None
        victim = sorted(idle, key=lambda k: (k.name == prefer_not, k.is_ready))[0]
        self._idle[victim.name].remove(victim)
        victim.claimed = True
        return victim

    def unclaim(self, kernel: PooledKernel) -> None:
        """Put a claimed, untouched kernel back at the front of its pool."""
        kernel.claimed = False
        self._claimed.discard(kernel)
        if self.closed or (kernel.ready.done() and not kernel.is_ready):
            self._drop(kernel)
            return
        self._idle.setdefault(kernel.name, []).insert(0, kernel)
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
            await asyncio.shield(kernel.ready)
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
        if preparation_for(kernel.language) is not None:
            if request.cwd is not None and request.cwd != kernel.launch.cwd:
                try:
                    await kernel.adapter.check_cwd(request.cwd)
                except OSError:
                    self.unclaim(kernel)  # nothing was sent: the kernel is untouched
                    raise
            await self._at_normal_priority(kernel)
            handout = send_handout(kernel.client, kernel.launch, request)
        else:
            await self._at_normal_priority(kernel)
        return self._detach(kernel, handout)

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
        for _attempt in range(3):
            if kernel is None:
                kernel = self.claim(request.kernel_name, request, ready_only=ready_only)
            if kernel is None:
                break
            try:
                return await self.hand_out(kernel, request), spare, None
            except asyncio.CancelledError:
                if kernel in self._claimed:  # cancelled while applying: nobody can use it
                    self._spawn(self._discard_unowned(kernel), "hotpot_km discard")
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
                slot = await self.discard(kernel)
                if spare is None:
                    spare = slot
                elif slot is not None:
                    slot.release()
                kernel, ready_only = None, True
        return None, spare, failure

    async def _discard_unowned(self, kernel: PooledKernel) -> None:
        slot = await self.discard(kernel)
        if slot is not None:
            slot.release()

    def _detach(self, kernel: PooledKernel, handout: str | None) -> Any:
        """Release the pool's hold on a kernel so the host's own code can own it; watch it
        settle in the background (see :meth:`_settle`)."""
        self._claimed.discard(kernel)
        handed = kernel.adapter.detach(kernel.slot)
        self._settling.add(kernel)
        settler = self._spawn(self._settle(kernel, handout), "hotpot_km settle")
        self._settlers.add(settler)
        settler.add_done_callback(self._settlers.discard)
        self._wake_filler()
        return handed

    async def _settle(self, kernel: PooledKernel, handout: str | None) -> None:
        """After a handout: check its reply, then hold the refill until the kernel went idle.

        Off the start's critical path. The refill waits (at most ``fill_idle_timeout``)
        until the kernel has run its first execute request from its new owner and then
        been idle for :data:`SETTLE_QUIET` seconds, so the replacement's warm-up does not
        compete with the page or notebook being served. ``fill_delay`` 0 refills at once.
        """
        settings = self._host.pool_settings()
        loop = asyncio.get_running_loop()
        client = kernel.client
        alive = kernel.adapter.is_alive
        try:
            if handout is not None and client is not None:
                try:
                    await handout_reply(client, handout, settings.startup_timeout, alive)
                except KernelDiedError:
                    self.log.warning(
                        "hotpot_km: a handed-out %r kernel exited while applying the request's "
                        "cwd/env (its output says why); its manager restarts it",
                        kernel.name,
                    )
                    return
                except TimeoutError:
                    self.log.warning(
                        "hotpot_km: a handed-out %r kernel did not confirm its cwd/env within %g s",
                        kernel.name,
                        settings.startup_timeout,
                    )
            wait = settings.fill_idle_timeout if settings.fill_delay > 0 else 0.0
            if kernel.statuses is not None and client is not None and wait > 0:
                await _until_idle(kernel.statuses, client.session, loop.time() + wait, alive)
        except Exception:
            self.log.debug("hotpot_km: watching a handed-out kernel failed", exc_info=True)
        finally:
            kernel.close_client()
            self._settling.discard(kernel)
            self._wake_filler()

    async def discard(self, kernel: PooledKernel) -> Slot | None:
        """Shut a claimed kernel down; its slot comes back once the process is gone.

        ``None`` if that takes more than a few seconds: the slot is then freed whenever the
        process is gone, as it is if the caller is cancelled meanwhile.
        """
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled
        try:
            if kernel.task is not None:
                await asyncio.wait({kernel.task})
            await asyncio.wait({self._end(kernel)}, timeout=_GONE_WAIT)
        except BaseException:
            self._drop(kernel)
            raise
        finally:
            self._wake_filler()
        if not _ended(kernel):
            self._drop(kernel)
            return None
        self._claimed.discard(kernel)
        return kernel.slot

    async def cold_slot(self, name: str) -> Slot:
        """A slot for a cold start, discarding an idle pooled kernel if the limit demands it."""
        slot = self.budget.try_take()
        if slot is None:
            victim = self._claim_victim(prefer_not=name)
            if victim is not None:
                slot = await self.discard(victim) or self.budget.try_take()
        if slot is None:
            self.observer.start_refused(name)
            raise MaximumKernelsException(
                f"Cannot start a {name!r} kernel: the limit of {self.budget.limit} kernel "
                f"processes (max_kernels) is reached."
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
        if not self._host.pool_settings().sizes.get(name):
            return f"no pool for kernel {name!r}"
        for kernel in self._idle.get(name, ()):
            if kernel.launch is not None:
                why = mismatch(kernel.launch, kernel.language, request)
                if why:
                    return f"the request has {why}"
        if name in self._last_error:
            return f"no ready kernel in the pool ({self._last_error[name]})"
        if self.budget.free() == 0:
            return f"no ready kernel in the pool (max_kernels={self.budget.limit} is reached)"
        return "no ready kernel in the pool (all taken; it is refilling)"

    def _drop(self, kernel: PooledKernel) -> None:
        """Shut down a kernel no request will use (idle, or given up by its claimer); its
        slot is freed once the process is gone."""
        kernel.claimed = False
        self._claimed.discard(kernel)
        idle = self._idle.get(kernel.name, [])
        if kernel in idle:
            idle.remove(kernel)
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled...
            kernel.task.add_done_callback(lambda _: self._end(kernel))  # ...if it had begun
        elif self._end(kernel).done() and _ended(kernel):
            kernel.slot.release()  # gone already, while a claimer still held it

    def _end(self, kernel: PooledKernel) -> asyncio.Task[None]:
        """The kernel's shutdown: one owned task, so no cancelled caller stops it halfway."""
        if kernel.ending is None:
            kernel.ending = self._spawn(
                self._shut_down(kernel), f"hotpot_km shut down {kernel.name}"
            )
        return kernel.ending

    async def _shut_down(self, kernel: PooledKernel) -> None:
        """Kill the process and wait until it is reaped. Only then is its slot free again:
        released here, or, if a request claimed the kernel, handed to it by :meth:`discard`."""
        kernel.close_client()
        try:
            await kernel.adapter.shutdown()
        except Exception:
            self.log.warning("hotpot_km: error shutting down a pooled kernel", exc_info=True)
        kernel.slot.unbind()
        # in the same step as the release: no request can take it as a victim after it
        idle = self._idle.get(kernel.name, [])
        if kernel in idle:
            idle.remove(kernel)
        self._warming.discard(kernel)  # a warm-up cancelled before it began never did
        if not kernel.claimed:
            kernel.slot.release()

    def retire(
        self,
        provisioner: KernelProvisionerBase,
        slot: Slot | None,
        files: Iterable[str],
        grace: float,
    ) -> None:
        """Finish a process's shutdown in the background: a replaced kernel (instant
        restarts), or one whose shutdown gave up waiting for it. ``slot`` is freed once
        the process is gone."""
        self._retiring += 1
        self._spawn(self._retire(provisioner, slot, list(files), grace), "hotpot_km retire")

    async def _retire(
        self, provisioner: KernelProvisionerBase, slot: Slot | None, files: list[str], grace: float
    ) -> None:
        try:
            if grace > 0:
                try:
                    await asyncio.wait_for(provisioner.wait(), grace)
                except asyncio.TimeoutError:
                    pass
            await until_gone(provisioner, self.log)
            if slot is not None:
                slot.release()
            await provisioner.cleanup(restart=False)
        except Exception:
            self.log.warning("hotpot_km: error retiring a replaced kernel", exc_info=True)
        finally:
            self._retiring -= 1
            remove_files(files)

    # -- observation -------------------------------------------------------------------------

    def cold_reason(self, name: str, request: LaunchRequest | None) -> ColdReason:
        """Why a start of ``name`` gets no pooled kernel, once :meth:`claim` found none."""
        if not self._host.pool_settings().sizes.get(name):
            return ColdReason.NO_POOL
        template = self._templates.get(name)  # what this pool's kernels are launched with
        if request is not None and template is not None:
            found = mismatch(template[0], template[1], request)
            if found is not None:
                return found.reason
        if self._failures.get(name):
            return ColdReason.WARMUP_FAILING
        return ColdReason.POOL_EMPTY

    def _fill_level(self, name: str) -> tuple[int, int]:
        """(ready kernels, configured size) of one pool."""
        ready = sum(k.is_ready for k in self._idle.get(name, ()))
        return ready, self._host.pool_settings().sizes.get(name, 0)

    def snapshot(self) -> PoolSnapshot:
        """The pools as they are now: kernels per state with ages, failures, slots, counts.

        Safe to call from another thread (a metrics server's): it only copies.
        """
        now = time.monotonic()  # the clock of loop.time() too
        settings = self._host.pool_settings()
        found: dict[str, list[KernelView]] = {}

        def add(kernel: PooledKernel, state: str) -> None:
            since = kernel.ready_since
            pid = kernel.adapter.pid
            view = KernelView(
                state, pid, now - kernel.launched, None if since is None else now - since
            )
            found.setdefault(kernel.name, []).append(view)

        for idle in list(self._idle.values()):
            for kernel in list(idle):
                add(kernel, "ready" if kernel.is_ready else "warming")
        for kernel in list(self._claimed):
            add(kernel, "claimed")
        names = [*settings.sizes, *sorted(set(found) - set(settings.sizes))]
        pools = []
        for name in names:
            failures = self._failures.get(name, 0)
            due = self._not_before.get(name, 0.0) - now
            pools.append(
                PoolView(
                    kernel_name=name,
                    size=settings.sizes.get(name, 0),
                    kernels=tuple(found.get(name, ())),
                    consecutive_failures=failures,
                    last_error=self._last_error.get(name),
                    next_warmup_in=max(due, 0.0) if failures else None,
                )
            )
        return PoolSnapshot(
            pools=tuple(pools),
            processes=self.budget.used,
            max_kernels=self.budget.limit,
            retiring=self._retiring,
            settings=settings,
            stats={n: self.stats.for_name(n) for n in sorted(set(names) | self.stats.names())},
            recent_errors=tuple(self.stats.recent_errors),
            closed=self.closed,
        )


class LocalKernelAdapter:
    """A pooled kernel process on this machine, started by a plain ``AsyncKernelManager``
    (no restarter, no server bookkeeping or events) and handed to a provisioner."""

    def __init__(self, pool: KernelPool, manager: PoolProcessManager) -> None:
        self.pool = pool
        self.manager = manager
        manager.context = pool._zmq_context()  # one context for all pooled kernels
        self.priority: ProcessPriority | None = None
        self._start_kwargs: dict[str, Any] = {}
        self._client: AsyncKernelClient | None = None
        self._handed: KernelProvisionerBase | None = None  # the process's, once handed out

    async def prepare(self, kwargs: dict[str, Any]) -> tuple[LaunchRequest, str | None]:
        spec = await self.pool.spec(self.manager.kernel_name)
        env = kwargs.pop("env", None)
        cwd = absolute_cwd(kwargs.pop("cwd", None))
        launch = LaunchRequest(
            self.manager.kernel_name,
            cwd,
            await final_env(spec, env),
            fixed_options(kwargs),
            self.manager._transport_encryption_policy(kwargs.get("transport_encryption")),
        )
        self.manager._kernel_spec = spec  # already read off the loop
        self._start_kwargs = {"cwd": cwd, "env": dict(os.environ if env is None else env), **kwargs}
        return launch, spec.language

    async def start(self, timeout: float, slot: Slot) -> AsyncKernelClient:
        cwd = self._start_kwargs["cwd"]
        await asyncio.to_thread(_check_program, self.manager.format_kernel_cmd, cwd)
        await keeper.ensure_running()
        self.manager.slot = slot  # bound to the process group in the launch step itself
        await asyncio.wait_for(self.manager.start_kernel(**self._start_kwargs), timeout)
        pid = self.pid
        if pid is not None:
            self.priority = ProcessPriority(pid)
        client = self.manager.client(context=self.pool._zmq_context())
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        self._client = client
        return client

    def watch_statuses(self) -> zmq.asyncio.Socket:
        return subscribe_statuses(self.manager)

    async def is_alive(self) -> bool:
        if self._handed is not None:  # the host's manager owns it now: ask its process
            return await self._handed.poll() is None
        return bool(await self.manager.is_alive())

    async def check_cwd(self, cwd: str) -> None:
        await asyncio.to_thread(check_cwd, cwd)

    def close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close_client(client)

    def detach(self, slot: Slot) -> HandedOut:
        manager = self.manager
        provisioner = manager.provisioner
        assert provisioner is not None
        handed = HandedOut(
            provisioner=provisioner,
            connection_info=dict(manager.get_connection_info()),
            connection_file=manager.connection_file,
            cmd=list(manager.format_kernel_cmd()),
            slot=slot,
        )
        # The pool's manager must neither signal the process nor delete the
        # connection file the kernel was started with once it is collected.
        manager._close_control_socket()
        manager.provisioner = None
        manager._connection_file_written = False
        self._handed = provisioner
        return handed

    async def shutdown(self) -> None:
        provisioner = self.manager.provisioner
        if self.priority is not None and self.priority.restore():
            # a process exits on its own threads: at idle priority on a busy machine that
            # could take long, so it dies at normal priority
            await asyncio.to_thread(priority.restore_process, self.priority.pid)
        try:
            if self.manager.has_kernel:
                await self.manager.shutdown_kernel(now=True)
            else:
                await self.manager.cleanup_resources()
        finally:
            await until_gone(provisioner, self.pool.log)

    @property
    def pid(self) -> int | None:
        return getattr(self.manager.provisioner or self._handed, "pid", None)


#: How long a start waits for an evicted pooled kernel's process to be gone.
_GONE_WAIT = 10.0
#: How long ``aclose`` waits for shutdowns before giving up on processes that survive SIGKILL.
_CLOSE_WAIT = 60.0

#: Seconds a handed-out kernel must stay idle after its new owner's first execution
#: before its replacement starts (cells of a page follow each other much faster).
SETTLE_QUIET = 0.25


def check_cwd(path: str) -> None:
    """Fail like a cold start's ``Popen(cwd=...)`` would, before anything is sent."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, "kernel working directory does not exist", path) from None
    except PermissionError:
        raise OSError(errno.EACCES, "kernel working directory is not accessible", path) from None
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "kernel working directory is not a directory", path)
    if not os.access(path, os.X_OK):
        raise OSError(errno.EACCES, "kernel working directory is not accessible", path)


def subscribe_statuses(manager: AsyncKernelManager) -> zmq.asyncio.Socket:
    """An IOPub socket for the kernel's own topics (``kernel.<ident>.status``...): the pool
    sees its execution state without receiving anyone's output."""
    socket = manager.connect_iopub()
    socket.setsockopt(zmq.UNSUBSCRIBE, b"")
    socket.setsockopt(zmq.SUBSCRIBE, b"kernel.")
    return socket


def send_handout(client: ShellClient, launch: LaunchRequest, request: LaunchRequest) -> str:
    """Send the handout control message that applies ``request`` to a kernel prepared for
    ``launch`` (see :mod:`hotpot_km.languages`); returns its message id. The values travel
    as JSON metadata; with nothing to apply no data is sent, and the kernel just opens its
    gate. ``cwd`` ``None`` leaves the kernel where it started."""
    changed = request.cwd != launch.cwd or dict(request.env) != dict(launch.env)
    data = {"cwd": request.cwd, "env": dict(request.env)} if changed else None
    msg = client.session.msg(HANDOUT_REQUEST, {}, metadata={METADATA_KEY: data} if data else None)
    client.control_channel.send(msg)
    return str(msg["header"]["msg_id"])


async def handout_reply(
    client: ShellClient, msg_id: str, timeout: float, is_alive: Callable[[], Awaitable[bool]]
) -> None:
    """Wait for the handout's reply; :class:`KernelDiedError` if the kernel exits instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError
        try:
            reply = await client.control_channel.get_msg(timeout=min(left, 0.25))
        except Empty:
            if not await is_alive():
                raise KernelDiedError("the kernel process exited") from None
            continue
        if reply["parent_header"].get("msg_id") == msg_id and reply["msg_type"] == HANDOUT_REPLY:
            return


async def _until_idle(
    statuses: zmq.asyncio.Socket,
    session: Session,
    deadline: float,
    is_alive: Callable[[], Awaitable[bool]],
) -> None:
    """Until the kernel ran an execute request of its new owner and then stayed idle for
    :data:`SETTLE_QUIET` seconds, it exited, or ``deadline`` passed."""
    loop = asyncio.get_running_loop()
    quiet_until: float | None = None
    while True:
        now = loop.time()
        end = deadline if quiet_until is None else min(deadline, quiet_until)
        if now >= end:
            return
        if not await statuses.poll(int(min(end - now, 1.0) * 1000) + 1):
            if not await is_alive():
                return
            continue
        frames = await statuses.recv_multipart()
        _, parts = session.feed_identities(frames)
        msg = session.deserialize(parts)
        parent = msg.get("parent_header") or {}
        if msg["msg_type"] != "status" or parent.get("msg_type") != "execute_request":
            continue
        if parent.get("session") == session.session:
            continue  # the pool's own warm-up
        state = msg["content"].get("execution_state")
        if state == "busy":
            quiet_until = None
        elif state == "idle":
            quiet_until = loop.time() + SETTLE_QUIET


def _check_program(format_cmd: Callable[[], list[str]], cwd: str) -> None:
    """Fail like ``Popen`` would for a kernelspec whose program does not exist."""
    program = format_cmd()[0]
    if os.sep in program:
        found = os.path.isfile(os.path.join(cwd, os.path.expanduser(program)))
    else:
        found = shutil.which(program) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def warmup_step(source: str) -> str:
    """The step (one of ``hotpot_km.events.WARMUP_STEPS``) a warm-up source belongs to."""
    if source == "kernel start":
        return "kernel_start"
    if source == "hotpot_km bootstrap":
        return "bootstrap"
    if source == "python_imports":
        return "python_imports"
    if source.startswith("initialization_code["):
        return "initialization_code"
    return "init_file"


def _ended(kernel: PooledKernel) -> bool:
    """Whether the kernel's shutdown finished, i.e. its process is gone."""
    ending = kernel.ending
    return ending is not None and ending.done() and not ending.cancelled()


async def until_gone(
    provisioner: KernelProvisionerBase | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Return once the provisioner's process is gone (reaped), SIGKILLing it every second
    meanwhile. jupyter_client's own shutdown stops waiting after a few seconds and carries
    on; a kernel's slot must not be freed before its process is really gone."""
    if provisioner is None:
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_kill = started
    warned = False
    while True:
        try:
            if not provisioner.has_process or await provisioner.poll() is not None:
                return
            if loop.time() >= next_kill:
                await provisioner.kill()
                next_kill = loop.time() + 1.0
        except Exception:
            log.debug("hotpot_km: error waiting for a kernel process to end", exc_info=True)
        if not warned and loop.time() - started > 10:
            warned = True
            log.warning(
                "hotpot_km: kernel process %s is still alive 10 s after SIGKILL; it keeps its "
                "place under max_kernels until it is gone",
                getattr(provisioner, "pid", None),
            )
        await asyncio.sleep(0.05)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def process_group(provisioner: KernelProvisionerBase | None) -> int | None:
    """The process group of a local kernel process that is still running, if known
    (jupyter_client starts local kernels in a session, hence a group, of their own)."""
    process = getattr(provisioner, "process", None)
    if process is None or process.poll() is not None:
        return None
    return getattr(provisioner, "pgid", None) or process.pid


def remove_files(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError:
            logging.getLogger(__name__).debug("could not remove %s", path, exc_info=True)


def _read_init_files(kernel_name: str, extension: str) -> list[tuple[str, str]]:
    """``kernel_pool_init_<name><ext>`` files in the Jupyter config path, in path order."""
    found = []
    for directory in jupyter_config_path():
        path = Path(directory) / f"kernel_pool_init_{kernel_name}{extension}"
        if path.is_file():
            found.append((str(path), path.read_text(encoding="utf-8")))
    return found
