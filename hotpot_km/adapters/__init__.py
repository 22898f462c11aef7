"""How the engine reaches a kernel: one module per backend, each behind the engine's
:class:`~hotpot_km.pool.KernelAdapter` protocol, and none of them known to the engine.

- :mod:`~hotpot_km.adapters.local`: a process on this machine (an ``AsyncKernelManager``;
  in fork mode, forked from a template: :mod:`hotpot_km.fork`)
- :mod:`~hotpot_km.adapters.gateway`: a kernel on a remote gateway (REST and websocket)
- :mod:`~hotpot_km.adapters.fake`: a fake kernel on a fake clock, to test the engine's
  logic without processes

Hosts pick one in ``new_pool_kernel``. Only the local one is imported here: the gateway's
needs jupyter_server's gateway client, the fake one is for tests.
"""

from .local import (
    LocalKernelAdapter,
    PoolProcessManager,
    process_group,
    remove_files,
    see_out,
)

__all__ = ["LocalKernelAdapter", "PoolProcessManager", "process_group", "remove_files", "see_out"]
