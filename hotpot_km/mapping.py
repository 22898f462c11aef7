"""``PooledMappingKernelManager``: the pool for jupyter_server 2 and Voila 0.5.

Configure it with the ``PooledKernelManager`` section, e.g. in ``voila.json``::

    {"VoilaConfiguration": {"multi_kernel_manager_class":
                            "hotpot_km.mapping.PooledMappingKernelManager"},
     "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}}
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Collection
from functools import partial
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.session import DELIM, Session
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from zmq.eventloop.zmqstream import ZMQStream

from .compat.jupyter_client import check_kernel_id, kernels_of
from .compat.jupyter_server import closed as websocket_closed
from .compat.jupyter_server import (
    is_open,
    kernel_buffers,
    kernel_ports,
    kernel_start_kwargs,
    open_websockets,
    take_activity_stream,
)
from .kernel_io import KernelDiedError, request_reply
from .languages import HANDOUT_REPLY, HANDOUT_REQUEST
from .pages import ServerHostMixin
from .pooled import PooledKernelManager
from .server_extension import attach_to_voila

__all__ = ["PooledMappingKernelManager"]


class PooledMappingKernelManager(ServerHostMixin, PooledKernelManager, AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's own mapping manager; only the launch step takes pooled kernels.
    A start refused for want of room is a 503; in Voila, kernels end with their pages
    (:mod:`hotpot_km.pages`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        attach_to_voila(self)  # standalone Voila has no server extensions: add our routes

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """Pool kernels are launched under the server's policy (e.g. transport encryption)."""
        kwargs = super().pool_launch_kwargs(kernel_name)
        path = kwargs.pop("path", None)
        if path is not None and "cwd" not in kwargs:
            kwargs["cwd"] = self.cwd_for_path(path)
        return kernel_start_kwargs(self, **kwargs)

    async def _async_restart_kernel(self, kernel_id: str, now: bool = False) -> asyncio.Future[Any]:
        """Restart as jupyter_server does, and return once the new process has answered a
        ``kernel_info_request`` (or died, or ``kernel_info_timeout`` passed) and every open
        websocket of the kernel receives its IOPub messages again; the returned future holds
        the outcome, as jupyter_server's does.

        A warm restart moves the server's connections during the restart
        (:meth:`kernel_connection_changed`). After a cold one, on the same ports, the IOPub
        sockets are replaced once the new process answers: a socket left to reconnect by
        itself resubscribes only after a moment (a cell run right after the restart would
        lose its first messages) and, reconnecting on localhost while the port is unbound,
        can connect to itself and stop for good (zeromq/libzmq#4588). The
        ``kernel_info_request`` goes through a client of its own: jupyter_server's channel
        is closed from its own callback, which makes pyzmq log "Got events for closed
        stream" when the reply is as quick as a warm kernel's.
        """
        check_kernel_id(self, kernel_id)
        kernel = self.get_kernel(kernel_id)
        before = kernel.get_connection_info()
        await self.pinned_superclass._async_restart_kernel(self, kernel_id, now=now)
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client = kernel.client(context=zmq.asyncio.Context.instance())
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            reply = await request_reply(
                client,
                "kernel_info_request",
                {},
                timeout=self.kernel_info_timeout,
                is_alive=kernel.is_alive,
                resend_every=1.0,
            )
        except TimeoutError:
            self.log.warning("Timeout waiting for kernel_info_reply: %s", kernel_id)
            answered.set_exception(TimeoutError("Timeout waiting for restart"))
            answered.exception()  # retrieved: only callers that await it see it
        except KernelDiedError:
            self.log.warning("Restarting kernel failed: %s", kernel_id)
            answered.set_exception(RuntimeError("Restart failed"))
            answered.exception()
        else:
            self.log.debug("Kernel info reply received: %s", kernel_id)
            answered.set_result(reply)
            if kernel.get_connection_info() == before:
                await self._reattach(kernel_id, before, ("iopub",))
        finally:
            client.shell_channel.close()
        return answered

    restart_kernel = _async_restart_kernel

    def start_watching_activity(self, kernel_id: str) -> None:
        """A handed-out kernel is up and idle, not "starting": a new websocket's nudge then
        does not poll (every 50 ms) for a state change no message may bring."""
        super().start_watching_activity(kernel_id)
        kernel = kernels_of(self)[kernel_id]
        if getattr(kernel.provisioner, "handed_out", False):
            kernel.execution_state = "idle"

    def track_message_type(self, message_type: str) -> bool:
        """The handout's own messages are not activity of the kernel's owner."""
        if message_type in (HANDOUT_REQUEST, HANDOUT_REPLY):
            return False
        return bool(super().track_message_type(message_type))

    def stop_buffering(self, kernel_id: str) -> None:
        """jupyter_server's, but the buffer's streams close only after the callbacks pyzmq
        queued for them: a session reconnecting while the kernel still sends (e.g. the statuses
        of the restart's ``kernel_info_request``) would log "Got events for closed stream"."""
        streams: dict[str, ZMQStream] = {}
        if kernel_id in kernel_buffers(self):
            info = kernel_buffers(self)[kernel_id]
            streams, info["channels"] = info["channels"], {}
        super().stop_buffering(kernel_id)
        for stream in streams.values():
            _close_soon(stream)

    async def kernel_connection_changed(
        self, kernel_id: str, previous: KernelConnectionInfo
    ) -> None:
        """Move everything the server keeps connected to a kernel to its new ports and key.

        Called during the restart, before the kernel is used: jupyter_server handles a port
        change only for websockets that connect afterwards, so without this an open
        websocket would go dead and messages buffered for a session that reconnects would
        fail their signature check.
        """
        await self._reattach(kernel_id, previous, CHANNELS)

    async def _reattach(
        self, kernel_id: str, previous: KernelConnectionInfo, channels: Collection[str]
    ) -> None:
        """Give activity watching, the buffer of a closed session and every open websocket
        of a restarted kernel new sockets for ``channels``, connected to its new process."""
        kernel = kernels_of(self).get(kernel_id)
        if kernel is None:
            return
        self._move_buffer(kernel_id, kernel, previous, channels)
        if kernel_id in kernel_ports(self):  # its start finished: activity is watched
            stream = take_activity_stream(kernel)
            if stream is not None:
                _close_soon(stream)
            kernel.execution_state = "idle"  # the new process is ready and idle
            self.start_watching_activity(kernel_id)
            kernel_ports(self)[kernel_id] = kernel.ports
        waits = []
        for connection in open_websockets():
            if connection.kernel_manager is kernel and connection.channels:
                waits.append(_reattach_websocket(connection, channels))
        await asyncio.gather(*waits)

    def _move_buffer(
        self,
        kernel_id: str,
        kernel: Any,
        previous: KernelConnectionInfo,
        channels: Collection[str],
    ) -> None:
        """Re-sign what was buffered for a closed session with the new key, and buffer what
        the new process sends from now on, so the session's reconnect replays all of it."""
        if kernel_id not in kernel_buffers(self):
            return
        info = kernel_buffers(self).pop(kernel_id)
        streams = dict(info["channels"])
        for name in channels:
            stream = streams.get(name)
            if stream is None or stream.closed():
                continue
            stream.flush()  # what the old process sent and is already here
            identity = stream.socket.getsockopt(zmq.IDENTITY) or None
            _close_soon(stream)
            streams[name] = getattr(kernel, f"connect_{name}")(identity=identity)
            streams[name].channel = name
        old = Session(
            key=_as_bytes(previous.get("key", b"")),
            signature_scheme=str(previous.get("signature_scheme", "hmac-sha256")),
        )
        kept = [(ch, parts) for ch, parts in info["buffer"] if _resign(parts, old, kernel.session)]
        if len(kept) < len(info["buffer"]):
            self.log.warning(
                "Dropped %d buffered messages of kernel %s that were not signed by it",
                len(info["buffer"]) - len(kept),
                kernel_id,
            )
        self.start_buffering(kernel_id, info["session_key"], streams)
        kernel_buffers(self)[kernel_id]["buffer"][:0] = kept


#: The channels of a kernel websocket (``ZMQChannelsWebsocketConnection.create_stream``).
CHANNELS = ("iopub", "shell", "control", "stdin")


async def _reattach_websocket(
    connection: ZMQChannelsWebsocketConnection, channels: Collection[str]
) -> None:
    """Give an open websocket new streams for ``channels`` and the kernel's key, as
    ``connect()`` does for a new one, and return once its IOPub subscription is live
    (``nudge``) or the websocket closed."""
    kernel = connection.kernel_manager
    for name in channels:
        stream = connection.channels.get(name)
        if stream is not None and not stream.closed():
            stream.flush()  # deliver what the old process sent, under its own key
            _close_soon(stream)
    if set(channels) >= set(CHANNELS):
        connection.channels = {}
        connection.session.key = kernel.session.key
        connection.create_stream()
    else:
        connection.channels = dict(connection.channels)
        for name in channels:
            stream = getattr(kernel, f"connect_{name}")(identity=connection.session.bsession)
            stream.channel = name
            connection.channels[name] = stream
    nudged = connection.nudge()
    nudged.add_done_callback(partial(_subscribe, connection))
    closed = websocket_closed(connection)
    await asyncio.wait([nudged, closed], return_when=asyncio.FIRST_COMPLETED)


def _subscribe(connection: ZMQChannelsWebsocketConnection, _: object) -> None:
    """Forward the streams' messages to the websocket again, as ``connect()`` does once its
    ``nudge`` is done (the nudge takes the IOPub stream's callback while it runs)."""
    if is_open(connection):
        for stream in connection.channels.values():
            stream.on_recv_stream(connection.handle_outgoing_message)


def _close_soon(stream: ZMQStream) -> None:
    """Stop receiving now and close once the callbacks pyzmq already queued for the stream
    have run (closing it at once makes them log "Got events for closed stream")."""
    if stream.closed():
        return
    stream.on_recv(None)
    stream.io_loop.add_callback(stream.close)


def _resign(parts: list[bytes], old: Session, new: Session) -> bool:
    """Replace, in place, the signature of a raw message signed with ``old``'s key by one
    made with ``new``'s; ``False`` (unchanged) if its signature was not ``old``'s."""
    try:
        at = parts.index(DELIM) + 1
    except ValueError:
        return False
    frames = parts[at + 1 : at + 5]
    if not hmac.compare_digest(bytes(parts[at]), old.sign(frames)):
        return False
    parts[at] = new.sign(frames)
    return True


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
