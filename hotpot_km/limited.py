"""``LimitedKernelManager``: an async MultiKernelManager with a hard cap on kernel processes."""

from __future__ import annotations

import os
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists
from traitlets import Integer

from .budget import MaximumKernelsException
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
        handed-out, starting, pooled and warming kernels (0: no limit). Starting one more
        raises MaximumKernelsException.""",
    )

    _connection_dir_checked = False

    def __init__(self, **kwargs: Any) -> None:
        self._pool = KernelPool(self, lambda: self.max_kernels)  # before traits fire observers
        super().__init__(**kwargs)
        if self.kernel_spec_manager is None:
            self.kernel_spec_manager = KernelSpecManager(parent=self)

    def pool_settings(self) -> PoolSettings:
        """No pools at this level; :class:`~hotpot_km.PooledKernelManager` adds them."""
        return PoolSettings()

    def new_pool_manager(self, kernel_name: str, kernel_id: str) -> AsyncKernelManager:
        """A plain manager for a pooled process: no restarter, no server bookkeeping or events."""
        return AsyncKernelManager(
            parent=self,
            log=self.log,
            kernel_name=kernel_name,
            kernel_id=kernel_id,
            kernel_spec_manager=self.kernel_spec_manager,
            connection_file=self._connection_file_for(kernel_id),
        )

    def _connection_file_for(self, kernel_id: str) -> str:
        # jupyter_client's default connection_dir "" means the current directory;
        # pooled kernels are not the user's doing, so they go to the runtime dir.
        # A subdirectory of their own: a host may start a kernel under any id, and its
        # kernel-<id>.json must never overwrite a pooled kernel's file.
        directory = os.path.join(self.connection_dir or jupyter_runtime_dir(), "hotpot_km_pool")
        if not self._connection_dir_checked:
            ensure_dir_exists(directory, 0o700)
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
        )
        spec = self._pool.cached_spec(kernel_name)
        if spec is not None:
            km._kernel_spec = spec  # spares the handout a blocking kernelspec lookup
        return km, kernel_name, kernel_id

    async def _async_shutdown_all(self, now: bool = False) -> None:
        """Stop the pool (no process of it survives), then every kernel, as the parent does."""
        await self._pool.aclose()
        await super()._async_shutdown_all(now=now)

    shutdown_all = _async_shutdown_all
