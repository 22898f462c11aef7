"""``PooledMappingKernelManager``: the pool for jupyter_server 2 and Voila 0.5.

Configure it with the ``PooledKernelManager`` section, e.g. in ``voila.json``::

    {"VoilaConfiguration": {"multi_kernel_manager_class":
                            "hotpot_km.mapping.PooledMappingKernelManager"},
     "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}}
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from .pooled import PooledKernelManager
from .server_extension import attach_to_voila

__all__ = ["PooledMappingKernelManager"]


class PooledMappingKernelManager(PooledKernelManager, AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's own mapping manager; only the launch step takes pooled kernels."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        attach_to_voila(self)  # standalone Voila has no server extensions: add our routes

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """Pool kernels are launched under the server's policy (e.g. transport encryption)."""
        kwargs = super().pool_launch_kwargs(kernel_name)
        path = kwargs.pop("path", None)
        if path is not None and "cwd" not in kwargs:
            kwargs["cwd"] = self.cwd_for_path(path)
        return self._kernel_start_kwargs(**kwargs)
