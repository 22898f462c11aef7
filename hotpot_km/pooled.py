"""``PooledKernelManager``: keeps warm kernels per kernel name and hands them out on start."""

from __future__ import annotations

import asyncio
import contextvars
import os
import warnings
from typing import Any

import jupyter_core.utils
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning import KernelProvisionerBase
from jupyter_core.utils import ensure_event_loop
from traitlets import (
    All,
    Bool,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    observe,
    validate,
)

from .adapters import PoolProcessManager
from .fork import ForkProvisioner, TemplateKernelManager, Templates
from .limited import LimitedKernelManager
from .pool import LaunchKwargs, PoolSettings, WarmupError
from .pool.claiming import WARMUP_WAIT_CAP

__all__ = ["PooledKernelManager"]


class PooledKernelManager(LimitedKernelManager):  # type: ignore[misc]
    """An async MultiKernelManager whose kernels come pre-started and pre-imported.

    Warm-up order for every pooled kernel: ``python_imports``, then
    ``initialization_code[name]``, then each ``kernel_pool_init_<name>.<ext>``
    found in the Jupyter config path (in that path's order). A start request's
    cwd and env are applied at handout, so the kernel looks cold-started.
    """

    kernel_pools = Dict(
        value_trait=Union([Integer(0), Dict()]),
        config=True,
        help="""Mapping from kernel name to the number of started kernels to keep on standby,
        e.g. {"python3": 3}; or to {"min": m, "max": M} for a pool that follows demand: it
        keeps arrival rate x warm-up time (with headroom) ready kernels, goes to max at once
        when requests outrun the refills, and back to min after scale_down_after seconds
        without that demand. Changing it at runtime grows or shrinks the pools.""",
    )

    pool_kwargs = Dict(
        value_trait=Dict(),
        config=True,
        help="""Mapping from kernel name to the arguments passed to start_kernel when
        pre-warming (e.g. {"python3": {"cwd": "/srv", "extra_arguments": [...]}}). A request
        whose other arguments differ gets a cold start; cwd and env are applied at handout.""",
    )

    strict_pool_names = Bool(
        False,
        config=True,
        help="""Whether to refuse (ValueError) starting kernels whose name is not in
        kernel_pools, instead of starting them cold.""",
    )

    strict_pool_kwargs = Bool(
        False,
        config=True,
        help="""Whether to refuse (ValueError) starting kernels with arguments that cannot be
        applied to a pooled kernel and differ from pool_kwargs (everything but cwd, env, path
        and kernel_id), instead of starting them cold.""",
    )

    fill_delay = Float(
        1.0,
        config=True,
        help="""Wait time (seconds) before re-filling the pool after a kernel is used
        (0: refill at once, without waiting for fill_idle_timeout either).""",
    )

    fill_idle_timeout = Float(
        10.0,
        config=True,
        help="""After fill_delay, the replacement of a handed-out kernel also waits until that
        kernel has run its new owner's first execute request and gone idle, so the refill
        does not compete with the page being served; but no longer than this many seconds
        (0: don't wait).""",
    )

    refill_pause = Float(
        3.0,
        config=True,
        help="""While a handed-out kernel settles (see fill_idle_timeout), warm-ups under way
        stand still (SIGSTOP to their process group) so they don't compete with the page or
        notebook being served, and go on when no handed-out kernel settles any more; each
        warm-up for at most this many seconds in all (its timeouts don't count them). Kernels
        a request waits for never stand still. Local kernels on POSIX; 0: never.""",
    )

    max_warmup_wait = Float(
        None,
        allow_none=True,
        config=True,
        help="""Seconds a start waits at most for a pooled kernel that is still warming up
        before it starts cold instead (reason warmup_slow). None (default): as long as a cold
        start is expected to take: once warm-ups finish, 1.5 times the pool's warm-up time
        (launch to ready: a cold start's notebook does that import and init work itself),
        at least the longest of its recent kernel starts (launch to first reply); only the
        latter while no warm-up finishes (an init step that hangs); 30 s before any
        measurement. Starts never wait while the pool's warm-ups are failing.
        wait_at_startup holds the server back for at most this (30 s when None).""",
    )

    idle_priority = Bool(
        True,
        config=True,
        help="""Warm up kernels nobody waits for (refills) under the SCHED_IDLE CPU policy, so
        they only use otherwise idle CPU, where this process can bring them back to normal
        priority before handout (Linux; root, CAP_SYS_NICE or an RLIMIT_NICE that allows
        it). Otherwise, or when False, pooled kernels run at normal priority.""",
    )

    initialization_code = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Mapping from kernel name to code every pooled kernel of that name runs before
        it is handed out (after python_imports, before kernel_pool_init_<name> files).""",
    )

    python_imports = List(
        Unicode(),
        [],
        config=True,
        help="""Python modules/packages every pooled Python kernel (ipykernel or
        xeus-python) imports first (imported into sys.modules, not bound in the user
        namespace).""",
    )

    _wait_at_startup = Bool(
        False,
        config=True,
        help="""Wait till all kernel pools are filled at startup (alias: wait_at_startup), at
        most max_warmup_wait (30 s when None).""",
    )

    wait_at_startup = Bool(
        False,
        config=True,
        help="""Wait till all kernel pools are filled when the manager is created, so the
        first requests already get warm kernels; at most max_warmup_wait (30 s when None), so
        an init step that hangs delays the server's start by that, not by init_timeout.""",
    )

    startup_timeout = Float(
        60.0,
        config=True,
        help="Seconds a pooled kernel may take to start and answer kernel_info.",
    )

    init_timeout = Float(
        120.0,
        config=True,
        help="""Seconds a pooled kernel may spend on python_imports, initialization_code and
        init files together; past it the kernel is shut down and never handed out.""",
    )

    max_warming = Integer(
        None,
        allow_none=True,
        config=True,
        help="""How many pooled kernels may warm up at once. None (default): CPU count - 1
        (at least 1), so that refills leave room for the kernels in use; but while visits to a
        pool overlap (two or more of its handed-out kernels still running their first cells),
        CPU count + 1, since the next visitors wait for those refills (a forked warm-up mostly
        waits on its kernel: one at a time leaves CPUs idle, many at once finish all late). A
        number caps warm-ups at that, always.""",
    )

    max_retry_delay = Float(
        60.0,
        config=True,
        help="Upper bound (seconds) of the back-off between failing warm-ups of a pool.",
    )

    fork_from_template = Dict(
        value_trait=Bool(),
        config=True,
        help="""Mapping from kernel name to whether its kernels are forked from a template
        process that has imported ipykernel, IPython, python_imports and the modules its init
        files (kernel_pool_init_python3.py for python3) import at their top level once,
        instead of launched: refills and starts take milliseconds and the kernels share the
        imported modules' memory. On by default for every name in kernel_pools:
        {"python3": false} launches that name's kernels; an entry for "*" sets it for every
        name not listed (false: launch them; true: also fork names without a pool). Python
        (ipykernel) kernelspecs with jupyter_client's local provisioner on Linux only; others
        are launched, with one log line, as are the kernels of a template that refuses to
        serve (a python_imports module fails to import, leaves a thread running, loads a
        CUDA driver...). A template is one process per kernel name beside its kernels:
        max_kernels counts kernels, not templates.""",
    )

    warm_restarts = Bool(
        True,
        config=True,
        help="""Whether a restart may give the kernel id a ready pooled kernel (a new process
        with the original cwd and env, on other ports and with another key) instead of starting
        a new process. jupyter_server, JupyterLab, Voila and Kernel Gateway move their clients
        to the new ports; a KernelClient created before the restart can't follow, so turn this
        off if you keep clients across restarts.""",
    )

    # -- sizing of pools that follow demand (see hotpot_km.pool.sizing) -----------------------

    scale_down_after = Float(
        120.0,
        config=True,
        help="""Seconds a pool that follows demand ({"min": m, "max": M} in kernel_pools)
        keeps its size after the demand that grew it went away, before it shrinks (back to
        min when no request comes).""",
    )

    memory_floor = Integer(
        256,
        config=True,
        help="""MiB of available memory (MemAvailable, or what this process's cgroup v2
        memory.max leaves, whichever is less) below which no pool grows (no warm-up starts
        until more is free) and a start that needs a new process is refused with
        KernelLimitReached (servers answer HTTP 503 naming the floor; a ready pooled kernel
        is still handed out); the log, the status document and /metrics say so. 0: no
        floor.""",
    )

    @validate("kernel_pools")
    def _check_kernel_pools(self, proposal: dict[str, Any]) -> dict[str, Any]:
        for name, value in proposal["value"].items():
            if isinstance(value, dict):
                if pool_bounds(value) is None:
                    raise TraitError(
                        f"kernel_pools[{name!r}] must be a number of kernels or "
                        f'{{"min": m, "max": M}} with whole numbers 0 <= m <= M, not {value!r}'
                    )
        return proposal["value"]

    #: Whether names in kernel_pools fork by default (see fork_from_template); hosts whose
    #: kernels are not local processes turn it off.
    fork_by_default = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._templates = Templates(self, self._pool.leftovers)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = host_loop()
            if self._wait_at_startup or self.wait_at_startup:
                self._wait_blocking(loop)
            else:
                loop.call_soon(self._pool.start)  # the host runs this loop next
        else:
            self._pool.start()
            if self._wait_at_startup or self.wait_at_startup:
                self.log.warning(
                    "hotpot_km: wait_at_startup is set but the event loop is already running; "
                    "await PooledKernelManager.wait_for_pool() instead"
                )

    def _wait_blocking(self, loop: asyncio.AbstractEventLoop) -> None:
        self.log.info("hotpot_km: filling kernel pools %s before startup", dict(self.kernel_pools))
        try:
            if not loop.run_until_complete(self._wait_at_most(self._startup_wait())):
                self.log.warning(
                    "hotpot_km: the pools are not full after %.0f s; serving now, the kernels "
                    "still warming join the pools when they are ready (max_warmup_wait)",
                    self._startup_wait(),
                )
        except WarmupError as error:
            self.log.error("hotpot_km: the pools are not full at startup: %s", error)

    def _startup_wait(self) -> float:
        """How long ``wait_at_startup`` holds the host back: as long as a start would wait
        for a warming kernel before any measurement (:data:`WARMUP_WAIT_CAP`, or
        ``max_warmup_wait``), so an init step that hangs delays the server's start by
        that, not by ``init_timeout``."""
        configured = self.max_warmup_wait
        return WARMUP_WAIT_CAP if configured is None else max(configured, 0.0)

    async def _wait_at_most(self, seconds: float) -> bool:
        """:meth:`wait_for_pool`, for at most ``seconds``; ``False`` if the pools are not
        full by then."""
        try:
            await asyncio.wait_for(self.wait_for_pool(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def pool_settings(self) -> PoolSettings:
        """The traits as the engine reads them, several times per hand-out: built again
        only after a trait changed. The launch arguments are asked for when read (a host's
        may follow the process's environment)."""
        settings = self.__dict__.get("_settings")
        if settings is None:
            settings = self._settings = self._build_settings()
        return settings

    @observe(All)
    def _forget_settings(self, change: dict[str, Any]) -> None:
        self.__dict__.pop("_settings", None)

    def _build_settings(self) -> PoolSettings:
        cpus = os.cpu_count() or 2
        return PoolSettings(
            sizes={name: _bounds(size)[1] for name, size in self.kernel_pools.items()},
            min_sizes={
                name: _bounds(size)[0]
                for name, size in self.kernel_pools.items()
                if isinstance(size, dict)
            },
            launch_kwargs=LaunchKwargs(self.pool_launch_kwargs, tuple(self.kernel_pools)),
            fill_delay=max(self.fill_delay, 0.0),
            fill_idle_timeout=max(self.fill_idle_timeout, 0.0),
            idle_priority=self.idle_priority,
            initialization_code=dict(self.initialization_code),
            python_imports=tuple(self.python_imports),
            startup_timeout=self.startup_timeout,
            init_timeout=self.init_timeout,
            max_warming=max(cpus - 1, 1) if self.max_warming is None else self.max_warming,
            overlap_warming=cpus + 1 if self.max_warming is None else 0,
            max_retry_delay=self.max_retry_delay,
            warm_restarts=self.warm_restarts,
            refill_pause=max(self.refill_pause, 0.0),
            scale_down_after=max(self.scale_down_after, 0.0),
            memory_floor=max(self.memory_floor, 0) * 2**20,
            max_warmup_wait=None if self.max_warmup_wait is None else max(self.max_warmup_wait, 0),
        )

    def new_pool_manager(
        self,
        kernel_name: str,
        kernel_id: str,
        manager_class: type[PoolProcessManager] | None = None,
    ) -> PoolProcessManager:
        """In fork mode, the pooled kernel is forked from the template (see hotpot_km.fork)."""
        if not self._templates.enabled(kernel_name):
            return super().new_pool_manager(kernel_name, kernel_id, manager_class)
        manager = super().new_pool_manager(kernel_name, kernel_id, TemplateKernelManager)
        manager.templates = self._templates
        return manager

    def new_cold_provisioner(
        self, kernel_id: str, kernel_spec: KernelSpec, parent: KernelManager
    ) -> KernelProvisionerBase | None:
        """In fork mode, a start without a pooled kernel is forked too, if a template is up."""
        name = parent.kernel_name
        if not self._templates.enabled(name) or not self._templates.reproducible(name, kernel_spec):
            return None
        return ForkProvisioner(
            templates=self._templates,
            wait_for_template=False,
            kernel_id=kernel_id,
            kernel_spec=kernel_spec,
            parent=parent,
        )

    async def _async_shutdown_all(self, now: bool = False) -> None:
        """Stop the pool and every kernel, then the templates (they report the kernels' exits),
        the templates even if a kernel's shutdown failed."""
        try:
            await super()._async_shutdown_all(now=now)
        finally:
            await self._templates.aclose()

    shutdown_all = _async_shutdown_all

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """Arguments for pre-warming a kernel; a host adds its own launch policy here."""
        return dict(self.pool_kwargs.get(kernel_name, {}))

    @observe("kernel_pools")
    def _kernel_pools_changed(self, change: dict[str, Any]) -> None:
        self._forget_settings(change)  # whichever observer traitlets calls first
        self._pool.resize()

    async def wait_for_pool(self) -> None:
        """Wait until every pool is full (raises WarmupError if a warm-up fails meanwhile)."""
        await self._pool.wait_full()

    def pre_start_kernel(self, kernel_name: str | None, kwargs: dict[str, Any]) -> Any:
        self._check_request(kernel_name or self.default_kernel_name, kwargs)
        return super().pre_start_kernel(kernel_name, kwargs)

    def _check_request(self, name: str, kwargs: dict[str, Any]) -> None:
        """``strict_pool_names`` and ``strict_pool_kwargs``: refuse what the pool can't serve."""
        if self.strict_pool_names and name not in self.kernel_pools:
            raise ValueError(
                f"Cannot start a {name!r} kernel: strict_pool_names is set and kernel_pools "
                f"only has {sorted(self.kernel_pools)}"
            )
        if self.strict_pool_kwargs:
            self._check_strict_kwargs(name, kwargs)

    def _check_strict_kwargs(self, name: str, kwargs: dict[str, Any]) -> None:
        from .request import fixed_options

        wanted = self.pool_launch_kwargs(name)
        fixed = fixed_options(kwargs)
        differing = sorted(
            k for k in set(fixed) | set(fixed_options(wanted)) if fixed.get(k) != wanted.get(k)
        )
        encryption = kwargs.get("transport_encryption"), wanted.get("transport_encryption")
        if encryption[0] != encryption[1]:
            differing.append("transport_encryption")
        if differing:
            raise ValueError(
                f"Cannot start a {name!r} kernel: strict_pool_kwargs is set and these start "
                f"arguments differ from pool_kwargs[{name!r}]: {', '.join(differing)}"
            )


def pool_bounds(value: Any) -> tuple[int, int] | None:
    """(min, max) of a ``kernel_pools`` value: an int n is (n, n); ``None`` if invalid."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0), max(value, 0)
    if not isinstance(value, dict) or set(value) != {"min", "max"}:
        return None
    low, high = value["min"], value["max"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        return None
    if not 0 <= low <= high:
        return None
    return low, high


def _bounds(value: Any) -> tuple[int, int]:
    bounds = pool_bounds(value)
    assert bounds is not None  # validated when set
    return bounds


def host_loop() -> asyncio.AbstractEventLoop:
    """The event loop the host will run once it starts serving.

    That is the thread's current loop when the host already has one (jupyter_server
    creates its IOLoop before its kernel manager); making a new one here would leave
    the pool on a loop nobody runs. Only without one do we create it, as jupyter_core does.
    The loop is also made jupyter_core's loop of this thread: hosts that shut down through
    jupyter_core's ``run_sync`` once their own loop stopped (Voila's ``stop()``) then run
    ``shutdown_all`` on the loop the pool's tasks live on, instead of on a new one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            loop = None
    if loop is None or loop.is_closed():
        return ensure_event_loop()
    known = getattr(jupyter_core.utils, "_loop", None)  # ensure_event_loop's per-thread loop
    if isinstance(known, contextvars.ContextVar) and known.get(None) is None:
        known.set(loop)
    return loop
