"""The service's socket: who may connect, and what each request does.

A Unix socket in the Jupyter runtime dir, created with mode 0600; on top of
that, every connection's peer is checked with ``SO_PEERCRED`` and refused
unless it runs as the service's own uid. The peer's pid, from the same
credentials, is the owner of any kernel it is handed (see :mod:`.leases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from jupyter_client.kernelspec import NoSuchKernel

from .. import __version__
from ..request import LaunchRequest, plain_env
from ..status import status_document
from .host import ServiceKernelManager
from .leases import LeaseError, Leases, owner_commands
from .procs import peer_credentials
from .protocol import LINE_LIMIT, ProtocolError, check_hello, decode, encode, hello, info_to_wire

#: Seconds a client may take to send a line (a client sends its request at once): a client
#: that connects and stalls holds a connection of the service no longer than this.
READ_TIMEOUT = 30.0


class RequestError(ValueError):
    """A request that can't be carried out; the reply says why."""


class Refused(Exception):
    """The pool can't serve this start: the client starts its kernel cold."""


class PoolServer:
    """Accepts connections on the service's socket and answers their requests."""

    def __init__(
        self,
        host: ServiceKernelManager,
        leases: Leases,
        path: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
        info: dict[str, Any],
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.host = host
        self.read_timeout = read_timeout
        self.leases = leases
        self.path = path
        self.log = log
        self.info = info
        self.last_activity = time.monotonic()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Bind the socket (the caller holds the service lock, so an old socket is stale)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        # The socket's own mode, not a process-wide umask: the pool's filler runs meanwhile
        # and creates directories that need their search bit (Linux takes the mode of a
        # socket's file from its inode, set here before bind()).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, limit=LINE_LIMIT
            )
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop accepting, cancel requests in progress, remove the socket."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*list(self._handlers), return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # -- connections -------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        if uid != os.getuid():
            self.log.warning(
                "hotpot_km: refused a connection from pid %d running as uid %d", pid, uid
            )
            writer.write(encode({"error": f"this service serves uid {os.getuid()} only"}))
            await writer.drain()
            return
        try:
            check_hello(decode(await self._line(reader)))
        except (ProtocolError, ValueError) as error:
            writer.write(encode({"error": str(error)}))
            await writer.drain()
            return
        writer.write(encode({**hello(), "service": {"pid": os.getpid(), "version": __version__}}))
        sent = None  # a lease whose reply was written: the client may yet drop it unread
        while True:
            try:
                line = await self._line(reader)
            except ProtocolError as error:
                writer.write(encode({"ok": False, "error": str(error)}))
                await writer.drain()
                return
            except ConnectionResetError:
                # a Unix socket closed with data still unread resets its peer: the reply
                # that handed the kernel out was never read
                if sent is not None and self.leases.find(sent.id) is sent:
                    await self._undelivered(sent, "the client closed without reading its reply")
                raise
            sent = None
            if not line:
                return
            self.last_activity = time.monotonic()
            reply = await self._answer(line, pid)
            lease = self.leases.find(reply.get("lease"))
            if lease is not None and (reader.at_eof() or writer.is_closing()):
                await self._undelivered(lease, "the client had gone")
                return
            writer.write(encode(reply))
            try:
                await writer.drain()
            except ConnectionError:
                if lease is not None:
                    await self._undelivered(lease, "the client went away")
                raise
            sent = lease

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        """The next line, or ``b""`` at the end; ``ProtocolError`` if too long or too slow."""
        try:
            return await asyncio.wait_for(reader.readline(), self.read_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"no complete line in {self.read_timeout:g} s") from None
        except ValueError:  # longer than LINE_LIMIT
            raise ProtocolError(f"request too large (over {LINE_LIMIT} bytes)") from None

    async def _undelivered(self, lease: Any, why: str) -> None:
        """A kernel handed out whose reply can't reach its client: nobody holds it; end it."""
        self.log.warning(
            "hotpot_km: %s before it got its %r kernel (pid %s); ending it",
            why,
            lease.kernel_name,
            lease.pid,
        )
        await self.leases.release(lease, restart=False, wait=False)

    async def _answer(self, line: bytes, peer: int) -> dict[str, Any]:
        try:
            request = decode(line)
            op = request.get("op")
            handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(f"unknown request {op!r:.40}")
            return {"ok": True, **await handler(request, peer)}
        except Refused as refusal:
            return {"ok": False, "refused": True, "error": str(refusal)}
        except (ProtocolError, RequestError, LeaseError) as error:
            return {"ok": False, "error": str(error)}
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.log.exception("hotpot_km: error answering a request")
            return {"ok": False, "error": f"internal error: {type(error).__name__}: {error}"}

    # -- requests ----------------------------------------------------------------------------

    async def _op_launch(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        """A pooled kernel for the peer's start, with its cwd and final env, or a refusal."""
        name = _text(request, "kernel_name")
        pool = self.host.kernel_pool
        if not self.host.kernel_pools.get(name):
            raise Refused(f"no pool for kernel {name!r}")
        try:
            spec = pool.cached_spec(name) or await pool.spec(name)
        except NoSuchKernel:
            raise Refused(f"the service has no kernelspec named {name!r}") from None
        theirs = request.get("spec")
        if not isinstance(theirs, dict):
            raise RequestError("'spec' must be an object")
        for key in ("argv", "env", "language"):
            if theirs.get(key) != getattr(spec, key):
                raise Refused(
                    f"the service's {name!r} kernelspec ({spec.resource_dir}) differs in {key}"
                )
        cwd = _text(request, "cwd")
        if "\0" in cwd or not os.path.isabs(cwd):
            raise RequestError("'cwd' must be an absolute path")
        env = request.get("env")
        options = request.get("options")
        if not isinstance(env, dict) or not isinstance(options, dict):
            raise RequestError("'env' and 'options' must be objects")
        try:
            launch = LaunchRequest(name, cwd, plain_env(env), options, _text(request, "encryption"))
            served = await pool.serve(launch)
        except (TypeError, ValueError, OSError) as error:
            raise Refused(str(error)) from None
        if isinstance(served, str):
            raise Refused(served)
        lease = self.leases.add(peer, name, served, cwd)
        self.log.info(
            "hotpot_km: handed a %r kernel (pid %s) to process %d, cwd %s",
            name,
            lease.pid,
            peer,
            cwd,
        )
        return {
            "lease": lease.id,
            "pid": lease.pid,
            "connection_info": info_to_wire(served.connection_info),
            "cmd": served.cmd,
        }

    async def _op_poll(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        return {"status": await self.leases.poll(self.leases.get(request.get("lease"), peer))}

    async def _op_signal(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        lease = self.leases.get(request.get("lease"), peer)
        signum = request.get("signum")
        if not isinstance(signum, int) or isinstance(signum, bool) or not 0 < signum < 65:
            raise RequestError("'signum' must be a signal number")
        await self.leases.signal(lease, signum)
        return {}

    async def _op_kill(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        await self.leases.kill(self.leases.get(request.get("lease"), peer))
        return {}

    async def _op_terminate(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        await self.leases.terminate(self.leases.get(request.get("lease"), peer))
        return {}

    async def _op_release(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        lease = self.leases.get(request.get("lease"), peer)
        await self.leases.release(
            lease, restart=request.get("restart") is True, wait=request.get("wait") is not False
        )
        return {}

    async def _op_status(self, request: dict[str, Any], peer: int) -> dict[str, Any]:
        leases = self.leases.describe()
        commands = await asyncio.to_thread(owner_commands, [lease["owner"] for lease in leases])
        for lease, command in zip(leases, commands, strict=True):
            lease["owner_command"] = command
        document = status_document(
            self.host.kernel_pool.snapshot(),
            manager="hotpot-km serve",
            kernels_in_use=len(leases),
            service=self.info,
            leases=leases,
        )
        return {"status": document}


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str):
        raise RequestError(f"{key!r} must be a string")
    return value
