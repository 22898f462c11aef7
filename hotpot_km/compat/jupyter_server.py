"""jupyter_server's internals (checked against 2.21; see :mod:`hotpot_km.compat`)."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from . import Internal

_MAPPING = "jupyter_server.services.kernels.kernelmanager.MappingKernelManager"
_CONNECTION = "jupyter_server.services.kernels.connection.channels.ZMQChannelsWebsocketConnection"

INTERNALS = (
    Internal(_MAPPING, "_kernel_start_kwargs", why="pooled kernels start as the server's do"),
    Internal(_MAPPING, "_kernel_buffers", instance=True, why="re-signed after a restart"),
    Internal(_MAPPING, "_kernel_ports", instance=True, why="activity watching follows a restart"),
    Internal(_MAPPING, "_kernel_connections", instance=True, why="a Voila page's websockets"),
    # set on each kernel manager by start_watching_activity
    Internal(_MAPPING, "_activity_stream", instance=True, why="moved at a restart"),
    Internal(_CONNECTION, "_open_sockets", why="open websockets move to a restarted kernel"),
    Internal(_CONNECTION, "_close_future", instance=True, why="a websocket closing meanwhile"),
    Internal(
        "jupyter_server.services.kernels.kernelmanager.AsyncMappingKernelManager",
        "_async_restart_kernel",
        only_here=False,
        why="overridden: a restart returns once the new process answers",
    ),
)


def kernel_start_kwargs(mkm: Any, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments the server starts a kernel with (env, cwd, policy)."""
    return mkm._kernel_start_kwargs(**kwargs)  # type: ignore[no-any-return]


def kernel_buffers(mkm: Any) -> dict[str, Any]:
    """Messages buffered for closed sessions, by kernel id."""
    return mkm._kernel_buffers  # type: ignore[no-any-return]


def kernel_ports(mkm: Any) -> dict[str, Any]:
    """Ports of kernels whose activity is watched, by kernel id."""
    return mkm._kernel_ports  # type: ignore[no-any-return]


def is_connected_kernel(mkm: Any, kernel_id: str) -> bool:
    """Whether the server counts websockets of ``kernel_id`` (it is not shut down)."""
    return kernel_id in mkm._kernel_connections


def connection_count(mkm: Any, kernel_id: str) -> int:
    return int(mkm._kernel_connections.get(kernel_id, 0))


def take_activity_stream(kernel: Any) -> Any:
    """The stream that watches ``kernel``'s activity, detached from it (None if none)."""
    stream = getattr(kernel, "_activity_stream", None)
    if stream is not None:
        kernel._activity_stream = None
    return stream


def open_websockets() -> list[ZMQChannelsWebsocketConnection]:
    return list(ZMQChannelsWebsocketConnection._open_sockets)


def is_open(connection: ZMQChannelsWebsocketConnection) -> bool:
    return connection in ZMQChannelsWebsocketConnection._open_sockets


def closed(connection: ZMQChannelsWebsocketConnection) -> asyncio.Future[Any]:
    """Resolves when ``connection``'s websocket closes."""
    return asyncio.wrap_future(connection._close_future)
