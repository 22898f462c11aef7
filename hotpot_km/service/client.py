"""Asking the pool service something: one connection per request, never blocking the loop.

A connection per request keeps the client free of state tied to one event loop
(jupyter_client's blocking managers run each call on a loop of their own), and a
Unix socket connection costs a fraction of a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from .procs import peer_credentials
from .protocol import LINE_LIMIT, ProtocolError, check_hello, decode, encode, hello


class ServiceUnavailable(Exception):
    """No pool service answers at the socket (the message says why); ``absent``: nothing
    listens there at all, so starting a service could help."""

    def __init__(self, message: str, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent


class ServiceError(Exception):
    """The service answered with an error; ``refused`` means "not from the pool, start cold"."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


async def call(
    path: str, op: str, *, timeout: float | None = 30.0, **fields: Any
) -> dict[str, Any]:
    """Send one request to the service at ``path`` and return its successful reply."""
    try:
        return await asyncio.wait_for(_call(path, op, fields), timeout)
    except asyncio.TimeoutError:
        raise ServiceUnavailable(f"the service at {path} did not answer {op!r} in time") from None


async def _call(path: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ServiceUnavailable(f"no pool service listens on {path}", absent=True) from None
    except OSError as error:
        raise ServiceUnavailable(f"can't connect to the pool service at {path}: {error}") from None
    try:
        # Before anything is sent (a launch carries the whole environment): only a service of
        # this user may hear it, whatever the socket's directory lets others put there.
        pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        if uid != os.getuid():
            raise ServiceUnavailable(
                f"refusing the socket {path}: the process listening there (pid {pid}) runs as "
                f"uid {uid}, not as this user (uid {os.getuid()}); set JUPYTER_RUNTIME_DIR to a "
                "private directory (owned by you, mode 0700)"
            )
        writer.write(encode(hello()) + encode({"op": op, **fields}))
        await writer.drain()
        answer = await _message(reader, path)
        if "error" in answer:  # the service refused this connection
            raise ServiceUnavailable(f"the pool service refused the connection: {answer['error']}")
        try:
            check_hello(answer)
        except ProtocolError as error:
            raise ServiceUnavailable(str(error)) from None
        reply = await _message(reader, path)
    except (ConnectionError, BrokenPipeError) as error:
        raise ServiceUnavailable(f"the pool service at {path} went away: {error}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not reply.get("ok"):
        raise ServiceError(str(reply.get("error", "unknown error")), bool(reply.get("refused")))
    return reply


async def _message(reader: asyncio.StreamReader, path: str) -> dict[str, Any]:
    try:
        line = await reader.readline()
    except ValueError:  # longer than LINE_LIMIT
        raise ServiceUnavailable("the pool service sent an oversized message") from None
    if not line:
        raise ServiceUnavailable(f"the pool service at {path} closed the connection")
    try:
        return decode(line)
    except ProtocolError as error:
        raise ServiceUnavailable(f"the pool service sent garbage: {error}") from None
