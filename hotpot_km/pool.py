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
import atexit
import errno
import logging
import os
import shutil
import signal
import stat
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
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

from . import priority
from .budget import KernelBudget, MaximumKernelsException, Slot
from .kernel_io import (
    METADATA_KEY,
    KernelCodeError,
    KernelDiedError,
    close_client,
    request_reply,
    run_code,
)
from .languages import HANDOUT_REPLY, HANDOUT_REQUEST, init_file_extension, preparation_for
from .request import LaunchRequest, absolute_cwd, final_env, fixed_options, mismatch


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


class PoolHost(Protocol):
    """What the engine needs from the manager that owns it."""

    log: logging.Logger | logging.LoggerAdapter[Any]
    kernel_spec_manager: KernelSpecManager | None

    def pool_settings(self) -> PoolSettings: ...

    def new_pool_manager(self, kernel_name: str, kernel_id: str) -> AsyncKernelManager: ...


class WarmupError(RuntimeError):
    """A pooled kernel failed before it became ready; the message names the source."""


class HandoutError(RuntimeError):
    """A claimed kernel could not be handed out (it died or the handout code failed)."""


@dataclass(eq=False)
class PooledKernel:
    """One kernel process owned by the pool, from launch until handout or discard."""

    name: str
    manager: AsyncKernelManager
    slot: Slot
    ready: asyncio.Future[None]
    launch: LaunchRequest | None = None
    language: str | None = None
    client: AsyncKernelClient | None = None
    #: subscribed to the kernel's own IOPub topics (status), to see it go idle after handout
    statuses: zmq.asyncio.Socket | None = None
    claimed: bool = False
    task: asyncio.Task[None] | None = None
    pid: int | None = None
    #: threads moved to SCHED_IDLE (None: normal priority)
    low_threads: list[int] | None = None
    #: a pending move of every thread back to normal priority
    restoring: asyncio.Task[None] | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def close_client(self) -> None:
        client, self.client = self.client, None
        statuses, self.statuses = self.statuses, None
        if client is not None:
            close_client(client)
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
        self._specs: dict[str, KernelSpec] = {}
        self._context: zmq.asyncio.Context | None = None
        self._retiring: set[KernelProvisionerBase] = set()
        self.closed = False
        _LIVE_POOLS.add(self)

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
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

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
                if not await kernel.manager.is_alive():
                    self.log.warning(
                        "hotpot_km: pooled %r kernel died while waiting in the pool; replacing it",
                        kernel.name,
                    )
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
        manager = self._host.new_pool_manager(name, str(uuid.uuid4()))
        manager.context = self._zmq_context()  # one context for all pooled kernels
        kernel = PooledKernel(name, manager, slot, asyncio.get_running_loop().create_future())
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
            spec = await self.spec(kernel.name)
            kwargs = dict(settings.launch_kwargs.get(kernel.name, {}))
            env = kwargs.pop("env", None)
            cwd = absolute_cwd(kwargs.pop("cwd", None))
            kernel.language = spec.language
            kernel.launch = LaunchRequest(
                kernel.name,
                cwd,
                await final_env(spec, env),
                fixed_options(kwargs),
                kernel.manager._transport_encryption_policy(kwargs.get("transport_encryption")),
            )
            kernel.manager._kernel_spec = spec  # already read off the loop
            await asyncio.to_thread(_check_program, kernel.manager.format_kernel_cmd, cwd)
            start = kernel.manager.start_kernel(
                cwd=cwd, env=dict(os.environ if env is None else env), **kwargs
            )
            await asyncio.wait_for(start, settings.startup_timeout)
            kernel.pid = getattr(kernel.manager.provisioner, "pid", None)
            if kernel.pid and not kernel.claimed and await self._may_lower(settings):
                kernel.low_threads = priority.lower([kernel.pid])  # its threads inherit it
            client = kernel.manager.client(context=self._zmq_context())
            client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
            kernel.client = client
            kernel.statuses = _subscribe_statuses(kernel.manager)
            alive = kernel.manager.is_alive
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
            await self._lower_all(kernel)
        except asyncio.CancelledError:
            kernel.ready.cancel()
            # a claimed kernel's slot now belongs to its claimer (see discard())
            await self._shut_down(kernel, release=not kernel.claimed)
            raise
        except Exception as error:
            self._warmup_failed(kernel, source, error, settings)
            kernel.ready.set_exception(WarmupError(self._last_error[kernel.name]))
            kernel.ready.exception()  # retrieved: waiters re-raise it their own way
            # a claimed kernel's slot now belongs to its claimer (see discard())
            await self._shut_down(kernel, release=not kernel.claimed)
        else:
            if self._failures.pop(kernel.name, 0):
                self.log.info("hotpot_km: %r kernels warm up again", kernel.name)
            self._last_error.pop(kernel.name, None)
            kernel.ready.set_result(None)
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

    async def _lower_all(self, kernel: PooledKernel) -> None:
        """At the end of a warm-up, find every thread of a low-priority kernel (libraries
        start their own while importing), so a handout can restore them without a lookup."""
        if kernel.low_threads is None or kernel.pid is None:
            return
        threads = await asyncio.to_thread(priority.lower_process, kernel.pid)
        if kernel.low_threads is None:  # claimed or awaited meanwhile
            await asyncio.to_thread(priority.restore_process, kernel.pid)
        else:
            kernel.low_threads = threads

    def _normal_priority(self, kernel: PooledKernel) -> None:
        """Back to normal CPU priority: someone waits for this kernel, or it is handed out."""
        threads, kernel.low_threads = kernel.low_threads, None
        if threads is None:
            return
        priority.restore(threads)
        if kernel.pid is not None and not kernel.ready.done():
            # still warming: threads it started since launch inherited SCHED_IDLE
            restore = asyncio.to_thread(priority.restore_process, kernel.pid)
            kernel.restoring = self._spawn(restore, "hotpot_km restore priority")

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

    async def hand_out(self, kernel: PooledKernel, request: LaunchRequest) -> HandedOut | None:
        """Apply ``request`` to a claimed kernel and detach it from the pool.

        Returns ``None`` (kernel returned to the pool) if it can't serve this
        request; raises :class:`HandoutError` (kernel discarded) if it failed.
        The handout is one control message whose reply is not awaited: the kernel's
        gate holds any other request until it is applied, and a kernel that fails to
        apply it exits (see :mod:`hotpot_km.languages`).
        """
        try:
            await asyncio.shield(kernel.ready)
        except asyncio.CancelledError:
            if not kernel.ready.done():  # our caller was cancelled, not the warm-up
                self.unclaim(kernel)
                raise
            raise HandoutError("its warm-up was cancelled") from None
        except WarmupError as error:
            raise HandoutError(str(error)) from None
        assert kernel.launch is not None and kernel.client is not None
        if mismatch(kernel.launch, kernel.language, request):
            self.unclaim(kernel)
            return None
        if not await kernel.manager.is_alive():
            raise HandoutError("it died while waiting in the pool")
        handout: str | None = None
        if preparation_for(kernel.language) is not None:
            if request.cwd != kernel.launch.cwd:
                try:
                    await asyncio.to_thread(check_cwd, request.cwd)
                except OSError:
                    self.unclaim(kernel)  # nothing was sent: the kernel is untouched
                    raise
            self._normal_priority(kernel)
            if kernel.restoring is not None:
                await kernel.restoring
            changed = request.cwd != kernel.launch.cwd or dict(request.env) != dict(
                kernel.launch.env
            )
            # nothing to apply: the kernel restores its own launch cwd/env (no data to send)
            data = {"cwd": request.cwd, "env": dict(request.env)} if changed else None
            msg = kernel.client.session.msg(
                HANDOUT_REQUEST, {}, metadata={METADATA_KEY: data} if data else None
            )
            kernel.client.control_channel.send(msg)
            handout = msg["header"]["msg_id"]
        else:
            self._normal_priority(kernel)
            if kernel.restoring is not None:
                await kernel.restoring
        return self._detach(kernel, handout)

    def _detach(self, kernel: PooledKernel, handout: str | None) -> HandedOut:
        """Release the pool's hold on a kernel's process so a provisioner can own it."""
        self._claimed.discard(kernel)
        manager = kernel.manager
        provisioner = manager.provisioner
        assert provisioner is not None
        handed = HandedOut(
            provisioner=provisioner,
            connection_info=dict(manager.get_connection_info()),
            connection_file=manager.connection_file,
            cmd=list(manager.format_kernel_cmd()),
            slot=kernel.slot,
        )
        # The pool's manager must neither signal the process nor delete the
        # connection file the kernel was started with once it is collected.
        manager._close_control_socket()
        manager.provisioner = None
        manager._connection_file_written = False
        self._settling.add(kernel)
        settler = self._spawn(self._settle(kernel, provisioner, handout), "hotpot_km settle")
        self._settlers.add(settler)
        settler.add_done_callback(self._settlers.discard)
        self._wake_filler()
        return handed

    async def _settle(
        self, kernel: PooledKernel, process: KernelProvisionerBase, handout: str | None
    ) -> None:
        """After a handout: check its reply, then hold the refill until the kernel went idle.

        Off the start's critical path. The refill waits (at most ``fill_idle_timeout``)
        until the kernel has run its first execute request from its new owner and then
        been idle for :data:`SETTLE_QUIET` seconds, so the replacement's warm-up does not
        compete with the page or notebook being served. ``fill_delay`` 0 refills at once.
        """
        settings = self._host.pool_settings()
        loop = asyncio.get_running_loop()
        client = kernel.client
        try:
            if handout is not None and client is not None:
                try:
                    await _handout_reply(client, handout, settings.startup_timeout, process)
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
            if kernel.statuses is not None and wait > 0:
                session = client.session if client is not None else kernel.manager.session
                await _until_idle(kernel.statuses, session, loop.time() + wait, process)
        except Exception:
            self.log.debug("hotpot_km: watching a handed-out kernel failed", exc_info=True)
        finally:
            kernel.close_client()
            self._settling.discard(kernel)
            self._wake_filler()

    async def discard(self, kernel: PooledKernel) -> Slot:
        """Shut a claimed kernel down and return its slot, free once the process is gone."""
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()
            await asyncio.gather(kernel.task, return_exceptions=True)
        await self._shut_down(kernel, release=False)
        self._claimed.discard(kernel)
        self._wake_filler()
        return kernel.slot

    async def cold_slot(self, name: str) -> Slot:
        """A slot for a cold start, discarding an idle pooled kernel if the limit demands it."""
        slot = self.budget.try_take()
        if slot is not None:
            return slot
        victim = self._claim_victim(prefer_not=name)
        if victim is None:
            raise MaximumKernelsException(
                f"Cannot start a {name!r} kernel: the limit of {self.budget.limit} kernel "
                f"processes (max_kernels) is reached."
            )
        return await self.discard(victim)

    def _drop(self, kernel: PooledKernel) -> None:
        """Remove an idle kernel from its pool and shut it down in an owned task."""
        idle = self._idle.get(kernel.name, [])
        if kernel in idle:
            idle.remove(kernel)
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled
        else:
            self._spawn(self._shut_down(kernel), f"hotpot_km discard {kernel.name}")

    async def _shut_down(self, kernel: PooledKernel, release: bool = True) -> None:
        kernel.close_client()
        try:
            if kernel.low_threads is not None and kernel.pid is not None:
                # a process exits on its own threads: at idle priority on a busy machine
                # that could take long, so it dies at normal priority
                kernel.low_threads = None
                await asyncio.to_thread(priority.restore_process, kernel.pid)
            if kernel.manager.has_kernel:
                await kernel.manager.shutdown_kernel(now=True)
            else:
                await kernel.manager.cleanup_resources()
        except Exception:
            self.log.warning("hotpot_km: error shutting down a pooled kernel", exc_info=True)
        finally:
            if release:
                kernel.slot.release()

    def retire(
        self,
        provisioner: KernelProvisionerBase,
        slot: Slot | None,
        files: Iterable[str],
        grace: float,
    ) -> None:
        """Finish a replaced kernel's shutdown in the background (instant restarts)."""
        self._retiring.add(provisioner)
        self._spawn(self._retire(provisioner, slot, list(files), grace), "hotpot_km retire")

    async def _retire(
        self, provisioner: KernelProvisionerBase, slot: Slot | None, files: list[str], grace: float
    ) -> None:
        try:
            try:
                await asyncio.wait_for(provisioner.wait(), grace)
            except asyncio.TimeoutError:
                await provisioner.kill()
                await asyncio.wait_for(provisioner.wait(), 5)
            await provisioner.cleanup(restart=False)
        except Exception:
            self.log.warning("hotpot_km: error retiring a replaced kernel", exc_info=True)
        finally:
            self._retiring.discard(provisioner)
            if slot is not None:
                slot.release()
            remove_files(files)

    # -- process safety net ------------------------------------------------------------------

    def process_groups(self) -> list[int]:
        """Process groups of every kernel process the pool still owns."""
        provisioners = [k.manager.provisioner for ks in self._idle.values() for k in ks]
        provisioners += [k.manager.provisioner for k in self._warming]
        provisioners += list(self._retiring)
        return [pg for p in provisioners if p is not None and (pg := process_group(p))]


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


def _subscribe_statuses(manager: AsyncKernelManager) -> zmq.asyncio.Socket:
    """An IOPub socket for the kernel's own topics (``kernel.<ident>.status``...): the pool
    sees its execution state without receiving anyone's output."""
    socket = manager.connect_iopub()
    socket.setsockopt(zmq.UNSUBSCRIBE, b"")
    socket.setsockopt(zmq.SUBSCRIBE, b"kernel.")
    return socket


async def _handout_reply(
    client: AsyncKernelClient, msg_id: str, timeout: float, process: KernelProvisionerBase
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
            if await process.poll() is not None:
                raise KernelDiedError("the kernel process exited") from None
            continue
        if reply["parent_header"].get("msg_id") == msg_id and reply["msg_type"] == HANDOUT_REPLY:
            return


async def _until_idle(
    statuses: zmq.asyncio.Socket, session: Session, deadline: float, process: KernelProvisionerBase
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
            if await process.poll() is not None:
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def process_group(provisioner: KernelProvisionerBase | None) -> int | None:
    """The process group of a local kernel process that is still running, if known."""
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


_LIVE_POOLS: weakref.WeakSet[KernelPool] = weakref.WeakSet()
#: Process groups of handed-out kernels, kept by their provisioners.
LIVE_PROVISIONERS: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort when a host exits without shutting its kernels down (e.g. on SIGINT)."""
    groups = {pg for pool in list(_LIVE_POOLS) for pg in pool.process_groups()}
    groups |= {pg for p in list(LIVE_PROVISIONERS) if (pg := p.process_group())}
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
