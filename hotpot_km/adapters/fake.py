"""A fake kernel adapter and a fake clock, to run the engine's logic without processes.

The engine (filling, claiming, back-off, ``max_kernels``, shrink, the sizing policy, the
refill courtesy rules) only meets kernels through :class:`~hotpot_km.pool.model.KernelAdapter`.
:class:`FakeKernelAdapter` plays one kernel: its warm-up takes ``warmup`` seconds of *running*
time (a stopped warm-up does not progress, as a SIGSTOPped process would not), it can fail to
start or die, and once handed out its new owner can run cells on it. :class:`FakeClockLoop`
is an event loop whose clock jumps to the next timer whenever nothing is ready to run, so a
minute of pool life passes in milliseconds. Like httpx's mock transport, it ships with the
package so hosts and users can test their own policies against the real engine::

    loop = FakeClockLoop()
    host = FakeHost(kernel_pools={"python3": 2})
    pool = KernelPool(host, lambda: 0, clock=loop.time, memory=lambda: None)
    loop.run_until_complete(...)

Nothing here touches a process, a socket or a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import selectors
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from queue import Empty
from typing import TYPE_CHECKING, Any

from jupyter_client.session import Session

from ..budget import Slot
from ..pool.model import PoolSettings
from ..request import LaunchRequest, fixed_options

if TYPE_CHECKING:
    from ..pool.engine import KernelPool

__all__ = [
    "FakeClockLoop",
    "FakeHandout",
    "FakeHost",
    "FakeKernelAdapter",
    "FakeKernelSpec",
    "FakeStart",
    "start_kernel",
]

_pids = itertools.count(100_000)


class _JumpingSelector(selectors.BaseSelector):
    """The real selector, except that a wait with nothing to read jumps the clock instead."""

    def __init__(self, loop: FakeClockLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return self._real.select(None)
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Any:
        return self._real.get_map()


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``loop.time()`` starts at 0 and only moves when the
    loop would otherwise sleep, straight to the next timer (trio's autojump clock)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)


@dataclass
class FakeKernelSpec:
    """How the fake kernels of one name behave."""

    warmup: float = 1.0  # seconds of running time until the kernel answers kernel_info
    fail: str | None = None  # a warm-up that fails (its start raises this message)
    die_at_start: int = 0  # how many of the next kernels exit before answering kernel_info
    language: str = "fake"
    prepare: float = 0.0  # seconds until what a kernel is launched for is known (spec lookup)


class _Status:
    """The kernel's status topic as the pool watches it (see settling._until_idle)."""

    def __init__(self) -> None:
        self._frames: deque[list[bytes]] = deque()
        self._arrived = asyncio.Event()
        self.closed = False

    def put(self, frames: list[bytes]) -> None:
        self._frames.append(frames)
        self._arrived.set()

    async def poll(self, timeout_ms: int) -> int:
        if not self._frames:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
            except asyncio.TimeoutError:
                return 0
        return 1

    async def recv_multipart(self) -> list[bytes]:
        return self._frames.popleft()

    def close(self, linger: int | None = None) -> None:
        self.closed = True


class _Channel:
    """The kernel's shell or control channel: replies come once the kernel has run enough."""

    def __init__(self, kernel: FakeKernelAdapter) -> None:
        self._kernel = kernel
        self._requests: deque[dict[str, Any]] = deque()

    def send(self, msg: dict[str, Any]) -> None:
        self._requests.append(msg)

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._requests and self._kernel.alive:
                left = self._kernel.starting_left()
                if left <= 0:
                    return self._kernel.reply(self._requests.popleft())
            else:
                left = 1.0
            now = loop.time()
            if deadline is not None and now >= deadline:
                raise Empty
            wait = left if deadline is None else min(left, deadline - now)
            await asyncio.sleep(max(wait, 1e-3))


class _Client:
    def __init__(self, kernel: FakeKernelAdapter) -> None:
        self.session = Session(key=b"hotpot_km fake")
        self.shell_channel = _Channel(kernel)
        self.control_channel = _Channel(kernel)


class FakePriority:
    """Stands in for :class:`~hotpot_km.priority.ProcessPriority`: stopping the fake kernel
    stops its warm-up clock."""

    def __init__(self, kernel: FakeKernelAdapter) -> None:
        self._kernel = kernel
        self.pid = kernel.pid or 0
        self.lowered = False
        self.stops = 0  # how often the pool stopped the kernel

    def lower(self) -> None:
        self.lowered = True

    async def lower_all(self) -> None:
        self.lowered = True

    def restore(self) -> bool:
        was, self.lowered = self.lowered, False
        return was

    def stop(self) -> bool:
        self.stops += 1
        self._kernel.stopped(True)
        return True

    def cont(self) -> None:
        self._kernel.stopped(False)


@dataclass(eq=False)
class FakeHandout:
    """What a fake kernel's host takes over at handout: the kernel and its slot."""

    adapter: FakeKernelAdapter
    slot: Slot

    async def end(self) -> None:
        """The host shuts the kernel down: its slot is free again."""
        await self.adapter.shutdown()
        self.slot.release()


class FakeKernelAdapter:
    """One fake pooled kernel (see the module docstring); the test inspects its fields."""

    def __init__(self, host: FakeHost, name: str, kernel_id: str) -> None:
        self.host = host
        self.name = name
        self.kernel_id = kernel_id
        self.spec = host.specs.get(name, FakeKernelSpec())
        self.pid: int | None = next(_pids)
        self.priority = FakePriority(self)
        self.alive = False
        self.handed_out = False
        self.ended = False
        self._started_at: float | None = None
        self.ready_at: float | None = None  # when it answered kernel_info (its warm-up done)
        self._stopped_at: float | None = None
        self._stood = 0.0
        self._status: _Status | None = None
        self._owner = Session(key=b"hotpot_km fake")  # the session of whoever uses it after handout
        self._client: _Client | None = None

    # -- KernelAdapter ---------------------------------------------------------------------

    async def prepare(self, kwargs: dict[str, Any]) -> tuple[LaunchRequest, str | None]:
        if self.spec.prepare:
            await asyncio.sleep(self.spec.prepare)
        env = kwargs.pop("env", None) or {}
        cwd = kwargs.pop("cwd", None)
        return LaunchRequest(self.name, cwd, dict(env), fixed_options(kwargs)), self.spec.language

    async def start(self, timeout: float, slot: Slot) -> _Client:
        self.host.attempts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0)
        if self.spec.fail:
            raise RuntimeError(self.spec.fail)
        self.alive = True
        self._started_at = asyncio.get_running_loop().time()
        self.host.launched.append(self)
        if self.spec.die_at_start > 0:  # e.g. its port was taken before it could bind it
            self.spec.die_at_start -= 1
            self.alive = False
        self._client = _Client(self)
        return self._client

    def watch_statuses(self) -> _Status:
        self._status = _Status()
        return self._status

    async def is_alive(self) -> bool:
        return self.alive

    async def check_cwd(self, cwd: str) -> None:
        if cwd not in self.host.directories:
            raise OSError(2, "kernel working directory does not exist", cwd)

    def close_client(self) -> None:
        self._client = None

    def detach(self, slot: Slot) -> FakeHandout:
        self.handed_out = True
        return FakeHandout(self, slot)

    async def shutdown(self) -> None:
        self.stopped(False)
        self.alive = False
        self.ended = True
        await asyncio.sleep(0)

    # -- what the fake kernel does ---------------------------------------------------------

    @property
    def started_at(self) -> float | None:
        """When its process started (loop time)."""
        return self._started_at

    def starting_left(self) -> float:
        """Running seconds until it answers (inf while stopped)."""
        if self._started_at is None:
            return float("inf")
        if self._stopped_at is not None:
            return float("inf")
        ran = asyncio.get_running_loop().time() - self._started_at - self._stood
        return self.spec.warmup - ran

    def stopped(self, stop: bool) -> None:
        now = asyncio.get_running_loop().time()
        if stop and self._stopped_at is None:
            self._stopped_at = now
        elif not stop and self._stopped_at is not None:
            self._stood += now - self._stopped_at
            self._stopped_at = None

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        msg_type = request["header"]["msg_type"].replace("_request", "_reply")
        content: dict[str, Any] = {"status": "ok"}
        if msg_type == "kernel_info_reply":
            content["language_info"] = {"name": self.spec.language}
            self.ready_at = asyncio.get_running_loop().time()
        return {"msg_type": msg_type, "parent_header": request["header"], "content": content}

    def die(self) -> None:
        """The process exits on its own."""
        self.alive = False

    def run_cell(self, seconds: float) -> None:
        """Its new owner runs a cell that keeps it busy ``seconds`` (IOPub busy, then idle)."""
        parent = self._owner.msg("execute_request", {"code": ""})["header"]

        def status(state: str) -> None:
            if self._status is not None and self._client is not None:
                session = self._client.session
                msg = session.msg("status", {"execution_state": state}, parent=parent)
                self._status.put(session.serialize(msg, ident=b"kernel.fake.status"))

        status("busy")
        asyncio.get_running_loop().call_later(seconds, status, "idle")


@dataclass
class FakeHost:
    """A :class:`~hotpot_km.pool.model.PoolHost` of fake kernels: its settings are a
    :class:`PoolSettings` the test changes with :meth:`configure`."""

    settings: PoolSettings = field(default_factory=lambda: PoolSettings(idle_priority=False))
    specs: dict[str, FakeKernelSpec] = field(default_factory=dict)
    directories: set[str] = field(default_factory=lambda: {"/"})
    launched: list[FakeKernelAdapter] = field(default_factory=list)  # started ones
    attempts: list[float] = field(default_factory=list)  # loop time of every start attempt
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("hotpot_km.fake"))
    kernel_spec_manager: Any = None

    def configure(self, **changes: Any) -> None:
        self.settings = replace(self.settings, **changes)

    def pool_settings(self) -> PoolSettings:
        return self.settings

    def new_pool_kernel(self, kernel_name: str, kernel_id: str) -> FakeKernelAdapter:
        return FakeKernelAdapter(self, kernel_name, kernel_id)


@dataclass(eq=False)
class FakeStart:
    """One start request as a host made it: served warm (``handout``) or cold (``slot``)."""

    handout: FakeHandout | None
    slot: Slot | None
    waited: bool  # it claimed a kernel that was still warming

    @property
    def warm(self) -> bool:
        return self.handout is not None

    async def end(self) -> None:
        """The kernel the request got is shut down."""
        if self.handout is not None:
            await self.handout.end()
        elif self.slot is not None:
            self.slot.release()


async def start_kernel(
    pool: KernelPool, name: str, kwargs: Mapping[str, Any] | None = None
) -> FakeStart:
    """What a host does for a start with ``kwargs`` (start arguments other than cwd/env):
    reserve room, take a pooled kernel, else start cold in the reserved (or a freed) slot
    (see :class:`~hotpot_km.limited.LimitedKernelManager`). Raises
    ``MaximumKernelsException`` as the host would."""
    kwargs = kwargs or {}
    reservation = pool.reserve(name, kwargs)
    slot = reservation.slot
    if reservation.victim is not None:
        slot = await pool.discard(reservation.victim)
    claimed = reservation.kernel
    waited = claimed is not None and not claimed.is_ready
    handed, spare, _failure = await pool.take(
        LaunchRequest(name, None, {}, fixed_options(kwargs)), ready_only=False, kernel=claimed
    )
    if handed is not None:
        for unused in (slot, spare):
            if unused is not None:
                unused.release()
        return FakeStart(handed, None, waited)
    if slot is None:
        slot = spare
    elif spare is not None:
        spare.release()
    if slot is None:
        slot = await pool.cold_slot(name)
    return FakeStart(None, slot, waited)
