"""hotpot_km: a pool of warm, pre-imported Jupyter kernels, handed out in milliseconds."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "1.0.0.dev0"

if TYPE_CHECKING:
    from .budget import KernelLimitReached, MaximumKernelsException
    from .limited import LimitedKernelManager
    from .pool import WarmupError
    from .pooled import PooledKernelManager

#: Public names and their modules, imported on first use: a notebook runner that loads only
#: the service's kernel provisioner (``hotpot_km.service.provisioner``) does not pay for the
#: pool engine and prometheus_client (~0.1 s) in every run.
_EXPORTS = {
    "KernelLimitReached": ".budget",
    "LimitedKernelManager": ".limited",
    "MaximumKernelsException": ".budget",
    "PooledKernelManager": ".pooled",
    "WarmupError": ".pool",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The status endpoint (enabled by jupyter_server_config.d/hotpot_km.json)."""
    return [{"module": "hotpot_km.server_extension"}]


__all__ = [
    "KernelLimitReached",
    "LimitedKernelManager",
    "MaximumKernelsException",
    "PooledKernelManager",
    "WarmupError",
    "__version__",
]
