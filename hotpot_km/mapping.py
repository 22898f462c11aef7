"""``PooledMappingKernelManager``: the pool for jupyter_server 2 and Voila 0.5.

Configure it with the ``PooledKernelManager`` section, e.g. in ``voila.json``::

    {"VoilaConfiguration": {"multi_kernel_manager_class":
                            "hotpot_km.mapping.PooledMappingKernelManager"},
     "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}}
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from .languages import HANDOUT_REPLY, HANDOUT_REQUEST
from .pooled import PooledKernelManager

__all__ = ["PooledMappingKernelManager"]


class PooledMappingKernelManager(PooledKernelManager, AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's own mapping manager; only the launch step takes pooled kernels."""

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """Pool kernels are launched under the server's policy (e.g. transport encryption)."""
        kwargs = super().pool_launch_kwargs(kernel_name)
        path = kwargs.pop("path", None)
        if path is not None and "cwd" not in kwargs:
            kwargs["cwd"] = self.cwd_for_path(path)
        return self._kernel_start_kwargs(**kwargs)

    def start_watching_activity(self, kernel_id: str) -> None:
        """A handed-out kernel is up and idle, not "starting": a new websocket's nudge then
        does not poll (every 50 ms) for a state change no message may bring."""
        super().start_watching_activity(kernel_id)
        kernel = self._kernels[kernel_id]
        if getattr(kernel.provisioner, "handed_out", False):
            kernel.execution_state = "idle"

    def track_message_type(self, message_type: str) -> bool:
        """The handout's own messages are not activity of the kernel's owner."""
        if message_type in (HANDOUT_REQUEST, HANDOUT_REPLY):
            return False
        return bool(super().track_message_type(message_type))
