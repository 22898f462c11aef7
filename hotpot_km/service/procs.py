"""Waiting for a process to exit on the event loop, through a pidfd (Linux)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as of its connect()."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


async def readable(fd: int) -> None:
    """Wait until ``fd`` is readable (a pidfd is once its process has exited)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await done
    finally:
        loop.remove_reader(fd)


async def exited(pid: int) -> None:
    """Wait until process ``pid`` has exited; the caller must keep the pid from being reused
    meanwhile (its parent, or a pidfd it validated)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await readable(fd)
    finally:
        os.close(fd)
