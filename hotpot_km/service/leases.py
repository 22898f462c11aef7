"""Kernels handed out to other processes: each belongs to the process that asked for it.

The service keeps every handed-out kernel process as its own child (it launched
it) and leases it to its owner, the peer process identified by ``SO_PEERCRED``.
Owners are watched with a pidfd on the event loop: when one exits, even by
SIGKILL, its kernels are killed at once. Only the owner may signal, poll or
release its kernels. A kernel's budget slot is freed when its process is gone;
its ports stay reserved in the service's port cache until the lease ends, because
an owner that restarts its kernel in place starts a new process on the same ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.provisioning import KernelProvisionerBase

from ..adapters import remove_files
from ..budget import Slot
from ..pool import HandedOut
from ..tasks import OwnedTasks
from .procs import exited


class LeaseError(LookupError):
    """No such lease, or it belongs to another process."""


@dataclass(eq=False)
class Lease:
    """One handed-out kernel process and the process that owns it."""

    id: str
    kernel_name: str
    owner: int
    provisioner: KernelProvisionerBase
    slot: Slot | None
    files: list[str]
    pid: int | None
    cwd: str
    since: float = field(default_factory=time.time)
    status: int | None = None  # exit status, once the process is gone
    restarted: bool = False  # restarted in place by its owner: only the ports remain
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def running(self) -> bool:
        return self.status is None and self.provisioner.has_process


class Leases:
    """The service's handed-out kernels, by lease id."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], grace: float = 5.0):
        self.log = log
        self.grace = grace
        self._leases: dict[str, Lease] = {}
        self._owners: dict[int, int] = {}  # owner pid -> pidfd
        self._tasks = OwnedTasks()
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    def __len__(self) -> int:
        return len(self._leases)

    def running(self) -> int:
        """How many leased kernel processes are still running."""
        return sum(lease.running for lease in self._leases.values())

    # -- handing out -------------------------------------------------------------------------

    def add(self, owner: int, kernel_name: str, handed: HandedOut, cwd: str) -> Lease:
        """Lease a just handed-out kernel process to ``owner`` and watch that process."""
        lease = Lease(
            id=uuid.uuid4().hex,
            kernel_name=kernel_name,
            owner=owner,
            provisioner=handed.provisioner,
            slot=handed.slot,
            files=[handed.connection_file],
            pid=getattr(handed.provisioner, "pid", None),
            cwd=cwd,
        )
        self._leases[lease.id] = lease
        self._watch(owner)
        return lease

    def find(self, lease_id: Any) -> Lease | None:
        return self._leases.get(lease_id) if isinstance(lease_id, str) else None

    def get(self, lease_id: Any, peer: int) -> Lease:
        lease = self._leases.get(lease_id) if isinstance(lease_id, str) else None
        if lease is None:
            raise LeaseError(f"no kernel lease {lease_id!r:.60}")
        if lease.owner != peer:
            raise LeaseError(f"kernel lease {lease_id} belongs to process {lease.owner}")
        return lease

    # -- owners ------------------------------------------------------------------------------

    def _watch(self, pid: int) -> None:
        if pid in self._owners:
            return
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone before its kernel was leased
            loop.call_soon(self._owner_died, pid)
            return
        self._owners[pid] = fd
        loop.add_reader(fd, self._owner_died, pid)

    def _unwatch(self, pid: int) -> None:
        fd = self._owners.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _owner_died(self, pid: int) -> None:
        self._unwatch(pid)
        mine = [lease for lease in self._leases.values() if lease.owner == pid]
        running = [lease for lease in mine if lease.running]
        if running:
            self.log.warning(
                "hotpot_km: process %d exited without shutting down its %s; killing %s",
                pid,
                ", ".join(f"{lease.kernel_name!r} kernel (pid {lease.pid})" for lease in running),
                "it" if len(running) == 1 else "them",
            )
        for lease in mine:
            self._spawn(self._end(lease, grace=0.0))

    # -- the owner's operations --------------------------------------------------------------

    async def poll(self, lease: Lease) -> int | None:
        async with lease.lock:
            if lease.running:
                status = await lease.provisioner.poll()
                if status is None:
                    return None
                await self._gone(lease)
        return lease.status if lease.status is not None else 0

    async def signal(self, lease: Lease, signum: int) -> None:
        async with lease.lock:
            if lease.running:
                await lease.provisioner.send_signal(signum)

    async def kill(self, lease: Lease) -> None:
        async with lease.lock:
            if lease.running:
                await lease.provisioner.kill()

    async def terminate(self, lease: Lease) -> None:
        async with lease.lock:
            if lease.running:
                await lease.provisioner.terminate()

    async def release(self, lease: Lease, restart: bool, wait: bool = True) -> None:
        """The owner is done with the process (and, unless it restarts in place, the lease).

        ``wait=False`` (a shutdown the owner requested): the process gets ``grace`` seconds
        to exit, then is killed, in the background; the owner need not wait for it.
        """
        if not wait and not restart:
            self._spawn(self._end(lease, self.grace))
        elif restart:
            async with lease.lock:
                await self._stop(lease, self.grace)
            lease.restarted = True
        else:
            await self._end(lease, self.grace)

    # -- ending processes and leases ---------------------------------------------------------

    async def _stop(self, lease: Lease, grace: float) -> None:
        """Make sure the process is gone: wait up to ``grace``, then kill its group."""
        provisioner = lease.provisioner
        if not lease.running:
            return
        if grace > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_exited(provisioner), grace)
        if await provisioner.poll() is None:
            await provisioner.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_exited(provisioner), 5.0)
        await self._gone(lease)

    async def _gone(self, lease: Lease) -> None:
        """Collect an exited process and free its slot (its ports stay reserved)."""
        provisioner = lease.provisioner
        status = await provisioner.poll()
        if status is None:
            return
        lease.status = await provisioner.wait()
        if lease.slot is not None:
            lease.slot.release()
            lease.slot = None

    async def _end(self, lease: Lease, grace: float) -> None:
        if self._leases.pop(lease.id, None) is None:
            return  # already ended
        try:
            async with lease.lock:
                await self._stop(lease, grace)
                await lease.provisioner.cleanup(restart=False)  # gives the ports back
        except Exception:
            self.log.warning("hotpot_km: error ending a kernel lease", exc_info=True)
        finally:
            if lease.slot is not None and not lease.running:
                lease.slot.release()
                lease.slot = None
            remove_files(lease.files)
            if not any(other.owner == lease.owner for other in self._leases.values()):
                self._unwatch(lease.owner)

    async def _reap_forever(self) -> None:
        """Collect leased processes that exited on their own, so their slots are freed."""
        while True:
            await asyncio.sleep(1.0)
            for lease in list(self._leases.values()):
                if lease.running and not lease.lock.locked():
                    try:
                        await self.poll(lease)
                    except Exception:
                        self.log.debug("hotpot_km: error polling a leased kernel", exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro, "lease end")

    async def close(self) -> None:
        """The service stops: every leased kernel dies with it (SIGTERM, then SIGKILL)."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        running = [lease for lease in self._leases.values() if lease.running]
        if running:
            self.log.info("hotpot_km: stopping %d leased kernel(s)", len(running))
        for lease in running:
            with contextlib.suppress(Exception):
                await lease.provisioner.send_signal(signal.SIGTERM)
        await asyncio.gather(
            *(self._end(lease, grace=2.0) for lease in list(self._leases.values())),
            return_exceptions=True,
        )
        await self._tasks.join()
        for pid in list(self._owners):
            self._unwatch(pid)

    def describe(self) -> list[dict[str, Any]]:
        """Leases as plain data, for ``hotpot-km status`` (see :func:`owner_commands`)."""
        now = time.time()
        return [
            {
                "lease": lease.id,
                "kernel_name": lease.kernel_name,
                "owner": lease.owner,
                "kernel_pid": lease.pid,
                "cwd": lease.cwd,
                "age": round(now - lease.since, 1),
                "state": "running"
                if lease.running
                else ("restarted by its owner" if lease.restarted else "exited"),
            }
            for lease in self._leases.values()
        ]


async def _exited(provisioner: KernelProvisionerBase) -> None:
    """Wait for a leased process (our child, so its pid can't be reused before we reap it)."""
    pid = getattr(provisioner, "pid", None)
    if isinstance(pid, int) and await provisioner.poll() is None:
        await exited(pid)


def owner_commands(pids: list[int]) -> list[str]:
    """Command lines of processes, shortened (read from /proc: call off the event loop)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            argv = []
        out.append(" ".join(a.decode(errors="replace") for a in argv if a)[:120])
    return out
