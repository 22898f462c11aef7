"""``LimitedKernelManager``: an async MultiKernelManager with a hard cap on kernel processes."""

from __future__ import annotations

import os
import stat
import weakref
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_client.provisioning import KernelProvisionerBase
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists
from traitlets import Integer

from . import metrics
from .adapters import LocalKernelAdapter, PoolProcessManager
from .budget import MaximumKernelsException
from .compat.jupyter_client import forget_failed_starts, set_kernel_spec
from .handout import handout_start_class
from .pool import KernelPool, PoolSettings
from .provisioner import PooledProvisioner

__all__ = ["LimitedKernelManager", "MaximumKernelsException"]


class LimitedKernelManager(AsyncMultiKernelManager):  # type: ignore[misc]
    """Refuses to start more than ``max_kernels`` kernel processes.

    Every kernel gets a :class:`~hotpot_km.provisioner.PooledProvisioner`, so the
    count is of processes, taken synchronously when a start is requested and
    given back only when a process is gone: concurrent starts can't overshoot.
    """

    max_kernels = Integer(
        0,
        config=True,
        help="""The maximum number of kernel processes this manager runs at once, counting
        handed-out, starting, pooled and warming kernels, not fork templates (0: no limit).
        Starting one more raises MaximumKernelsException.""",
    )

    #: The manager class of pooled processes; a host may launch them its own way.
    pool_manager_class: type[PoolProcessManager] = PoolProcessManager

    _connection_dir_checked = False

    def __init__(self, **kwargs: Any) -> None:
        self._pool = KernelPool(self, lambda: self.max_kernels)  # before traits fire observers
        super().__init__(**kwargs)
        if self.kernel_spec_manager is None:
            self.kernel_spec_manager = KernelSpecManager(parent=self)
        metrics.watch(self._pool)
        # dropped without shutdown_all() (or its loop closed under it): no pooled process,
        # socket or connection file outlives it; at exit too. The zmq context the manager
        # made itself is closed then as well: left to the collector, a context in the same
        # reference cycle as its manager may be collected first, unclosed (ResourceWarning).
        context = self.context  # made now if the host gave none (jupyter_client would later)
        own_context = context if getattr(self, "_created_context", False) else None
        weakref.finalize(self, _collected, self._pool.leftovers, own_context)

    def __bool__(self) -> bool:
        """Always true: a ``MultiKernelManager`` is falsy while it lists no kernel
        (``__len__``), and hosts test it that way before shutting it down
        (``ServerApp.cleanup_kernels``); pooled kernels are not listed, yet the pool must close.
        """
        return True

    @property
    def kernel_pool(self) -> KernelPool:
        """The pool engine behind this manager (its state: ``kernel_pool.snapshot()``)."""
        return self._pool

    def pool_settings(self) -> PoolSettings:
        """No pools at this level; :class:`~hotpot_km.PooledKernelManager` adds them."""
        return PoolSettings()

    def new_pool_kernel(self, kernel_name: str, kernel_id: str) -> LocalKernelAdapter:
        """Pooled kernels of this manager are local processes."""
        return LocalKernelAdapter(self._pool, self.new_pool_manager(kernel_name, kernel_id))

    def new_pool_manager(
        self,
        kernel_name: str,
        kernel_id: str,
        manager_class: type[PoolProcessManager] | None = None,
    ) -> PoolProcessManager:
        """A plain manager for a pooled process: no restarter, no server bookkeeping or events."""
        return (manager_class or self.pool_manager_class)(
            parent=self,
            log=self.log,
            kernel_name=kernel_name,
            kernel_id=kernel_id,
            kernel_spec_manager=self.kernel_spec_manager,
            connection_file=self._connection_file_for(kernel_id),
        )

    def new_cold_provisioner(
        self, kernel_id: str, kernel_spec: KernelSpec, parent: KernelManager
    ) -> KernelProvisionerBase | None:
        """The provisioner of a start the pool can't serve; ``None``: the kernelspec's own."""
        return None

    def _connection_file_for(self, kernel_id: str) -> str:
        # jupyter_client's default connection_dir "" means the current directory;
        # pooled kernels are not the user's doing, so they go to the runtime dir.
        # A subdirectory of their own: a host may start a kernel under any id, and its
        # kernel-<id>.json must never overwrite a pooled kernel's file.
        directory = os.path.join(self.connection_dir or jupyter_runtime_dir(), "hotpot_km_pool")
        if not self._connection_dir_checked:
            ensure_dir_exists(directory, 0o700)
            _keep_private(directory, self.log)
            self._connection_dir_checked = True
        return os.path.join(directory, f"kernel-{kernel_id}.json")

    def pre_start_kernel(
        self, kernel_name: str | None, kwargs: dict[str, Any]
    ) -> tuple[KernelManager, str, str]:
        km, kernel_name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        reservation = self._pool.reserve(kernel_name, kwargs)
        # the host's own class, whose starts skip jupyter_client's fixed pause after a handout
        km.__class__ = handout_start_class(type(km))
        km.provisioner = PooledProvisioner(
            pool=self._pool,
            reservation=reservation,
            kernel_id=kernel_id,
            kernel_spec=None,
            parent=km,
            on_connection_changed=self.kernel_connection_changed,
        )
        spec = self._pool.cached_spec(kernel_name)
        if spec is not None:
            set_kernel_spec(km, spec)  # spares the handout a blocking kernelspec lookup
        return km, kernel_name, kernel_id

    async def kernel_connection_changed(
        self, kernel_id: str, previous: KernelConnectionInfo
    ) -> None:
        """A restart gave ``kernel_id`` a process on other ports or with another key (a warm
        restart). Nothing to do here: clients made after the restart connect to the new ports.
        Hosts that keep connections of their own (jupyter_server) move them in an override."""

    async def _async_shutdown_all(self, now: bool = False) -> None:
        """Stop the pool (no process of it survives), then every kernel, as the parent does,
        the kernels even if stopping the pool failed."""
        try:
            await self._pool.aclose()
        finally:
            forget_failed_starts(self)  # e.g. an unknown kernel name: they'd abort the exit
            await super()._async_shutdown_all(now=now)

    shutdown_all = _async_shutdown_all


def _collected(leftovers: Any, context: zmq.Context[Any] | None) -> None:
    """A manager was collected or the process exits: end what it left behind."""
    leftovers.close()
    if context is not None and not context.closed:
        context.destroy(linger=0)


def _keep_private(directory: str, log: Any) -> None:
    """The pooled kernels' connection-file dir must be ours and 0700: an earlier version's
    service could leave it 0600 (no search bit: every warm-up failed); repair that. One
    that another user owns is refused (its owner could read every kernel's key)."""
    st = os.lstat(directory)
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(
            f"{directory} is not a directory of this user (uid {os.getuid()}); remove it, or "
            "set JUPYTER_RUNTIME_DIR (or the manager's connection_dir) to a private directory"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o777 != 0o700:  # jupyter_client adds the sticky bit: keep it
        log.warning("hotpot_km: %s had mode %o; making it 0700", directory, mode)
        os.chmod(directory, (mode & ~0o777) | 0o700)
