"""What a host's ``KernelManager`` gets while its kernel is a handed-out pooled one.

* :func:`ready_client_class`: its ``client()`` returns a client whose ``wait_for_ready()``
  proves readiness in one round trip instead of jupyter_client's 0.2 s quiet-IOPub wait
  (a provisioner switches it with :class:`ReadyClients`: the in-process pool's and the
  pool service's).
* :func:`handout_start_class`: its start skips jupyter_client's fixed 10 ms pause when the
  launch was a handout, and so does the shutdown half of a restart onto a ready pooled
  kernel; every override of the host's own class (jupyter_server's kernel action events,
  for one) is kept.

Cold starts and cold restarts of the same manager keep jupyter_client's behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.client import KernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.utils import run_sync
from jupyter_core.utils import ensure_async

from .compat.jupyter_client import (
    UNDECORATED_SHUTDOWN,
    UNDECORATED_START,
    accept_kernel_info_reply,
    client_is_alive,
    run_pending,
)

#: How long after a kernel_info reply its status may still be on its way on IOPub;
#: past that, the subscription was not established yet and the request is sent again.
IOPUB_GRACE = 0.02
#: Resend interval while a request has no reply at all (as jupyter_client's own wait).
RESEND_EVERY = 1.0


class _ReadyInOneRoundTrip:
    """``wait_for_ready()`` for a kernel the pool handed out.

    jupyter_client's version waits for a ``kernel_info`` reply and then reads IOPub
    until it has been quiet for 0.2 s, to be sure the subscription works and to drop
    a starting kernel's stale output. A handed-out kernel has no start-up output for
    this client, so one request proves both: its reply on shell, and a status message
    of that same request on IOPub (the subscription is established; everything
    published later arrives). IOPub is consumed up to that request's ``idle``, so no
    message of it is left for the caller's first request to trip over.
    """

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        client: Any = self
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        shell, iopub = client.shell_channel, client.iopub_channel
        poller = zmq.asyncio.Poller()
        poller.register(shell.socket, zmq.POLLIN)
        poller.register(iopub.socket, zmq.POLLIN)
        sent: set[str] = set()
        last = ""
        reply: dict[str, Any] | None = None
        replied_at = 0.0
        subscribed = False  # a status of one of our requests arrived on IOPub
        idle = False  # the status ``idle`` of the last request arrived
        next_send = loop.time()
        next_alive = loop.time() + RESEND_EVERY
        while True:
            now = loop.time()
            if now >= deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
            resend = not subscribed and reply is not None and now >= replied_at + IOPUB_GRACE
            if now >= next_send or resend:
                last = client.kernel_info()
                sent.add(last)
                reply, idle = None, False
                next_send = now + RESEND_EVERY
            if now >= next_alive:
                if not await client_is_alive(client):
                    raise RuntimeError("Kernel died before replying to kernel_info")
                next_alive = now + RESEND_EVERY
            wake = min(next_send, next_alive, deadline)
            if reply is not None and not subscribed:
                wake = min(wake, replied_at + IOPUB_GRACE)
            events = dict(await poller.poll(max(int((wake - now) * 1000), 1)))
            if shell.socket in events:
                msg = await ensure_async(shell.get_msg(timeout=0))
                if (msg.get("parent_header") or {}).get("msg_id") == last:
                    reply, replied_at = msg, loop.time()
            if iopub.socket in events:
                msg = await ensure_async(iopub.get_msg(timeout=0))
                # xeus kernels' IOPub welcome message has no parent header
                parent = (msg.get("parent_header") or {}).get("msg_id")
                if parent in sent and msg["msg_type"] == "status":
                    subscribed = True
                    if parent == last and msg["content"]["execution_state"] == "idle":
                        idle = True
            if reply is not None and idle:
                accept_kernel_info_reply(client, reply)
                return


@functools.cache
def ready_client_class(base: type[KernelClient]) -> type[KernelClient]:
    """``base`` (the host's client class) with readiness in one round trip."""
    namespace: dict[str, Any] = {"__module__": __name__, "__doc__": _ReadyInOneRoundTrip.__doc__}
    if issubclass(base, BlockingKernelClient):
        namespace["wait_for_ready"] = run_sync(_ReadyInOneRoundTrip._async_wait_for_ready)
    else:
        namespace["wait_for_ready"] = _ReadyInOneRoundTrip._async_wait_for_ready
    return type(f"Pooled{base.__name__}", (_ReadyInOneRoundTrip, base), namespace)


class ReadyClients:
    """For a provisioner whose launch may be a handout: while it is, its manager's
    ``client()`` gives clients ready in one round trip (:func:`ready_client_class`);
    after a cold start or cold restart, the manager's own class is back."""

    parent: Any
    #: whether the current launch is a handout (read by :class:`_HandoutStart`)
    handed_out: bool = False
    _host_client_factory: type | None = None  # the manager's own, while replaced

    def _use_ready_client(self, handed_out: bool) -> None:
        km = self.parent
        self.handed_out = handed_out
        if handed_out:
            if self._host_client_factory is None:
                self._host_client_factory = km.client_factory
            km.client_factory = ready_client_class(self._host_client_factory)
        elif self._host_client_factory is not None:
            km.client_factory, self._host_client_factory = self._host_client_factory, None


class _HandoutStart(AsyncKernelManager):  # type: ignore[misc]
    """``start_kernel`` (and the shutdown of a warm restart) without jupyter_client's fixed
    pause.

    jupyter_client's ``in_pending_state`` decorator renews the ``ready`` future, awaits
    the method, sleeps 10 ms ("to ensure tests can capture the state") and resolves the
    future. :func:`~hotpot_km.compat.jupyter_client.run_pending` does the same bookkeeping
    and keeps the pause where no pooled kernel is involved: cold starts, and shutdowns
    that are not a restart onto a ready pooled kernel.
    Placed right before ``AsyncKernelManager`` in the host class's MRO, so the host's own
    ``start_kernel``/``shutdown_kernel``/``restart_kernel`` overrides still run and reach
    it through ``super()``.
    """

    async def _async_start_kernel(self, **kw: Any) -> None:
        def cold() -> bool:
            return not getattr(self.provisioner, "handed_out", False)

        await run_pending(self, UNDECORATED_START, cold, **kw)

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        def not_warm() -> bool:  # the provisioner claimed a ready pooled kernel for the restart
            return not (restart and getattr(self.provisioner, "restarts_warm", False))

        await run_pending(self, UNDECORATED_SHUTDOWN, not_warm, now=now, restart=restart)

    start_kernel = _async_start_kernel
    shutdown_kernel = _async_shutdown_kernel


@functools.cache
def handout_start_class(host: type[KernelManager]) -> type[KernelManager]:
    """A subclass of the host's kernel manager class whose handouts and warm restarts skip
    the fixed pause; ``host`` itself when that can't be done safely (not async, or
    jupyter_client's start or shutdown changed shape)."""
    if not issubclass(host, AsyncKernelManager) or None in (
        UNDECORATED_START,
        UNDECORATED_SHUTDOWN,
    ):
        return host
    if issubclass(host, _HandoutStart):
        return host
    try:
        return type(host.__name__, (host, _HandoutStart), {"__module__": host.__module__})
    except TypeError:  # a hierarchy with no consistent MRO for it: keep the host's own
        return host
