"""hotpot_km: a pool of warm, pre-imported Jupyter kernels, handed out in milliseconds."""

__version__ = "1.0.0.dev0"

from .budget import MaximumKernelsException
from .limited import LimitedKernelManager
from .pool import WarmupError
from .pooled import PooledKernelManager


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The status endpoint (enabled by jupyter_server_config.d/hotpot_km.json)."""
    return [{"module": "hotpot_km.server_extension"}]


__all__ = [
    "LimitedKernelManager",
    "MaximumKernelsException",
    "PooledKernelManager",
    "WarmupError",
    "__version__",
]
