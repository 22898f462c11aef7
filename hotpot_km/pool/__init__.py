"""The pool engine: keeps warm kernels per kernel name and hands them out.

One :class:`KernelPool` serves one host manager and owns every task and kernel process it
starts (see :mod:`hotpot_km.pool.engine`). Its modules, one per concern:

- :mod:`~hotpot_km.pool.model`: settings, the host and kernel interfaces, the pool's data
- :mod:`~hotpot_km.pool.engine`: :class:`KernelPool`, composed of the concerns below
- :mod:`~hotpot_km.pool.kernels`: where each pooled kernel is; the only code that moves one
- :mod:`~hotpot_km.pool.backoff`: when each pool's next warm-up may start, and its failures
- :mod:`~hotpot_km.pool.filling`: keeping pools full
- :mod:`~hotpot_km.pool.sizing`: how many kernels each pool keeps (static or following demand)
- :mod:`~hotpot_km.pool.warmup`: a new kernel's warm-up
- :mod:`~hotpot_km.pool.claiming`: the hand-out path
- :mod:`~hotpot_km.pool.settling`: after a handout, until the refill may start
- :mod:`~hotpot_km.pool.ownership`: ending kernels and freeing their slots
- :mod:`~hotpot_km.pool.pausing`: warm-ups stand still while a handed-out kernel settles
- :mod:`~hotpot_km.pool.state`: what the concerns share (the parts above, the filler's wake-up)
- :mod:`~hotpot_km.pool.leftovers`: what a manager dropped without shutdown leaves behind

The engine reaches kernels through adapters it does not import (:mod:`hotpot_km.adapters`:
local processes, remote gateways, and fake kernels for its tests).
"""

from .engine import KernelPool
from .model import (
    HandedOut,
    HandoutError,
    KernelAdapter,
    LaunchKwargs,
    PooledKernel,
    PoolHost,
    PoolSettings,
    Reservation,
    WarmupError,
)
from .settling import handout_reply, reapply, send_handout
from .sizing import Sizing

__all__ = [
    "HandedOut",
    "HandoutError",
    "KernelAdapter",
    "KernelPool",
    "LaunchKwargs",
    "PoolHost",
    "PoolSettings",
    "PooledKernel",
    "Reservation",
    "Sizing",
    "WarmupError",
    "handout_reply",
    "reapply",
    "send_handout",
]
