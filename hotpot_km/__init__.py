"""hotpot_km: a pool of warm, pre-imported Jupyter kernels, handed out in milliseconds."""

from .budget import MaximumKernelsException
from .limited import LimitedKernelManager
from .pool import WarmupError
from .pooled import PooledKernelManager

__version__ = "1.0.0.dev0"

__all__ = [
    "LimitedKernelManager",
    "MaximumKernelsException",
    "PooledKernelManager",
    "WarmupError",
    "__version__",
]
