"""Kernel websockets that send each frame at once: ``TCP_NODELAY`` on the connection.

Tornado leaves Nagle's algorithm on unless a handler calls ``set_nodelay(True)``, and
jupyter_server's kernel websocket does not. The first cell run on a new websocket sends
a burst of small frames (``busy``, ``execute_input``, the output, the reply, ``idle``);
after the first one, Nagle holds the rest until the browser acknowledges it, which a
Linux client delays by up to 40 ms. A pooled kernel answers in a few milliseconds, so
this wait would be most of what a user sees after opening a notebook or restarting its
kernel. Select it with jupyter_server's own setting::

    c.ServerApp.kernel_websocket_connection_class = (
        "hotpot_km.websocket.NoDelayWebsocketConnection"
    )

Everything else is jupyter_server's connection class, unchanged.
"""

from __future__ import annotations

import asyncio
import socket

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

__all__ = ["NoDelayWebsocketConnection"]


class NoDelayWebsocketConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's kernel websocket connection, with ``TCP_NODELAY`` set once open."""

    def connect(self) -> asyncio.Future[None] | None:
        handler = self.websocket_handler
        handler.set_nodelay(True)
        stream = getattr(handler.ws_connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is not None:  # read back: what the kernel's frames will really get
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            self.log.debug(
                "hotpot_km: websocket of kernel %s: TCP_NODELAY=%d", self.kernel_id, nodelay
            )
        return super().connect()
