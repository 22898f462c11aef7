"""Candidate changes, applied as patches inside a profiling server, to measure their effect.

Nothing here is used by ``run.py``: the benchmark measures the code as it is. The
findings in README.md quote what ``breakdown.py voila --experiment ...`` measured.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def template_cache() -> None:
    """One compiled-template cache shared by every Jinja environment of the process.

    Voila builds a new exporter, hence a new Jinja environment, per page, and so
    compiles its templates on every request.
    """
    import jinja2

    class MemoryCache(jinja2.BytecodeCache):
        def __init__(self) -> None:
            self.store: dict[str, bytes] = {}

        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            code = self.store.get(bucket.key)
            if code is not None:
                bucket.bytecode_from_string(code)

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            self.store[bucket.key] = bucket.bytecode_to_string()

    cache = MemoryCache()
    original = jinja2.Environment.__init__

    def init(self: jinja2.Environment, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.bytecode_cache = cache

    jinja2.Environment.__init__ = init  # type: ignore[method-assign]


def idle_after_handout() -> None:
    """jupyter_server marks a handed-out kernel ``idle`` instead of ``starting``.

    A new websocket's ``nudge()`` polls every 50 ms until the execution state leaves
    ``starting``, which only an IOPub status seen by the activity watcher does; a
    pooled kernel has just answered the handout code, so it is idle already.
    """
    from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

    from hotpot_km.provisioner import PooledProvisioner

    original = MappingKernelManager.start_watching_activity

    def start_watching_activity(self: Any, kernel_id: str) -> None:
        original(self, kernel_id)
        kernel = self._kernels[kernel_id]
        provisioner = kernel.provisioner
        if isinstance(provisioner, PooledProvisioner) and provisioner._adopted:
            kernel.execution_state = "idle"

    MappingKernelManager.start_watching_activity = start_watching_activity


def websocket_nodelay() -> None:
    """jupyter_server's kernel websocket with ``TCP_NODELAY``.

    Tornado leaves Nagle's algorithm on unless a handler calls ``set_nodelay(True)``, and
    jupyter_server's kernel websocket handler does not: a burst of small frames (status,
    execute_input, result, reply) then waits for the client's delayed ACK (40 ms on Linux).
    """
    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

    original = KernelWebsocketHandler.open

    async def open(self: Any, kernel_id: str) -> None:
        self.set_nodelay(True)
        await original(self, kernel_id)

    KernelWebsocketHandler.open = open


CHANGES = {
    "websocket_nodelay": websocket_nodelay,
    "idle_after_handout": idle_after_handout,
    "template_cache": template_cache,
}


def apply(names: Iterable[str]) -> None:
    for name in names:
        CHANGES[name]()
