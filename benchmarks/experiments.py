"""Candidate changes, applied as patches inside a profiling server, to measure their effect.

Nothing here is used by ``run.py``: the benchmark measures the code as it is. The
findings in README.md quote what ``breakdown.py voila --experiment ...`` measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from queue import Empty
from typing import Any


def fast_ready() -> None:
    """``wait_for_ready()`` without jupyter_client's trailing 0.2 s IOPub flush.

    A client is ready once its kernel_info request has a reply on shell and its
    idle status on IOPub (so the subscription works); a kernel from the pool has
    no start-up output left to flush.
    """
    from jupyter_client.asynchronous.client import AsyncKernelClient

    async def wait_for_ready(self: Any, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else 60)
        while time.monotonic() < deadline:
            msg_id = self.kernel_info()
            replied = idle = False
            retry = time.monotonic() + 1.0
            while time.monotonic() < retry and not (replied and idle):
                if not replied:
                    try:
                        msg = await self.shell_channel.get_msg(timeout=0.02)
                        replied = msg["parent_header"].get("msg_id") == msg_id
                    except Empty:
                        pass
                try:
                    msg = await self.iopub_channel.get_msg(timeout=0.02)
                except Empty:
                    continue
                idle = idle or (msg["parent_header"].get("msg_id") == msg_id
                                and msg["msg_type"] == "status"
                                and msg["content"]["execution_state"] == "idle")
            if replied and idle:
                return
        raise RuntimeError("Kernel didn't respond in time")

    AsyncKernelClient.wait_for_ready = wait_for_ready


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


def no_pending_sleep() -> None:
    """jupyter_client's ``in_pending_state`` without its ``await asyncio.sleep(0.01)``.

    ``KernelManager.start_kernel`` sleeps 10 ms after every start (for jupyter_client's
    own tests), a pooled handout included; restarts go through it too.
    """
    from jupyter_client import manager

    inner = manager.KernelManager._async_start_kernel.__wrapped__

    async def start_kernel(self: Any, **kwargs: Any) -> None:
        if self._attempted_start or not self._ready:
            self._ready = manager._get_future()
        try:
            await inner(self, **kwargs)
        except Exception as error:
            self._ready.set_exception(error)
            raise
        if self.owns_kernel:
            self._ready.set_result(None)

    manager.KernelManager._async_start_kernel = start_kernel
    manager.AsyncKernelManager.start_kernel = start_kernel


def close_shell_only() -> None:
    """Close the pool's shell-only client without ``stop_channels()``, which first creates
    and connects the iopub, stdin, control and heartbeat channels it never had."""
    from hotpot_km import pool

    async def close(client: Any) -> None:
        if client._shell_channel is not None:
            client._shell_channel.close()

    pool._close_client = close


def pipelined_handout() -> None:
    """Send the handout code and return without waiting for its reply (an upper bound:
    a failure of that code would then surface on the user's first request instead)."""
    from hotpot_km import pool

    async def run_code(client: Any, code: str, *, data: Any = None, **_: Any) -> dict:
        content = {"code": code, "silent": True, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        metadata = {"hotpot_km": data} if data is not None else None
        client.shell_channel.send(client.session.msg("execute_request", content,
                                                     metadata=metadata))
        return {"status": "ok"}

    pool.run_code = run_code


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


CHANGES = {
    "idle_after_handout": idle_after_handout,
    "fast_ready": fast_ready,
    "template_cache": template_cache,
    "no_pending_sleep": no_pending_sleep,
    "close_shell_only": close_shell_only,
    "pipelined_handout": pipelined_handout,
}


def apply(names: Iterable[str]) -> None:
    for name in names:
        CHANGES[name]()
