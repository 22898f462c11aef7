"""The few exchanges the pool has with a kernel.

The pool keeps one client per warm kernel (shell for the warm-up, control for the
handout), so a handout is one message on an already connected socket instead of a
new client and a readiness dance.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from queue import Empty
from typing import Any, Protocol

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.session import Session

from .compat.jupyter_client import opened_channels

#: Key under which the pool sends its data in a request's ``metadata``.
METADATA_KEY = "hotpot_km"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Channel(Protocol):
    """One channel of a kernel (shell or control), as the pool uses it."""

    def send(self, msg: dict[str, Any]) -> None: ...

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]: ...


class ShellClient(Protocol):
    """What the pool talks to a kernel through: a jupyter_client ``AsyncKernelClient``, or
    a gateway websocket (:mod:`hotpot_km.gateway`). ``get_msg`` raises ``queue.Empty``.
    A gateway websocket also answers the kernel's input requests: with what its
    ``answer_input`` callable returns for the prompt, if set."""

    session: Session

    @property
    def shell_channel(self) -> Channel: ...

    @property
    def control_channel(self) -> Channel: ...


class KernelDiedError(RuntimeError):
    """The kernel process exited while the pool was waiting for it."""


class KernelCodeError(RuntimeError):
    """Code run by the pool raised in the kernel; carries the kernel's own summary."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.ename = ename
        self.evalue = evalue
        self.traceback = [_ANSI.sub("", line) for line in traceback]
        super().__init__(f"{ename}: {evalue}" if evalue else ename)

    def summary(self) -> str:
        """``ename: evalue`` plus the innermost frame line of the kernel's traceback."""
        frames = [
            line.strip().splitlines()[0]
            for line in self.traceback
            if line.strip() and ("line " in line or "File " in line or "Cell " in line)
        ]
        where = f" ({frames[-1]})" if frames else ""
        return f"{self}{where}"


async def request_reply(
    client: ShellClient,
    msg_type: str,
    content: dict[str, Any],
    *,
    timeout: float,
    is_alive: Callable[[], Awaitable[bool]],
    metadata: dict[str, Any] | None = None,
    resend_every: float | None = None,
    stood_still: Callable[[], float] | None = None,
    channel: str = "shell",
) -> dict[str, Any]:
    """Send one request on the shell channel (or ``"control"``) and return its reply message.

    Replies to other requests (stale resends) are skipped. Fails fast with
    :class:`KernelDiedError` when the process exits, instead of waiting out the
    timeout; ``resend_every`` repeats the request while a starting kernel has
    not bound its sockets yet. ``stood_still`` tells how many seconds the kernel's
    process has been stopped so far: the timeout counts only the time it could run.
    """
    loop = asyncio.get_running_loop()
    still = stood_still or _never
    before = still()
    start_deadline = loop.time() + timeout
    sent: set[str] = set()

    chan = client.control_channel if channel == "control" else client.shell_channel

    def send() -> float:
        msg = client.session.msg(msg_type, content, metadata=metadata)
        chan.send(msg)
        sent.add(msg["header"]["msg_id"])
        return loop.time() + resend_every if resend_every else math.inf  # once, if not

    next_send = send()
    while True:
        now = loop.time()
        deadline = start_deadline + still() - before
        if now >= deadline:
            raise TimeoutError(f"no {msg_type} reply within {timeout:g} s")
        if now >= next_send:
            next_send = send()
        try:
            reply = await chan.get_msg(
                timeout=min(0.25, deadline - now, max(next_send - now, 0.001))
            )
        except Empty:
            if not await is_alive():
                raise KernelDiedError("the kernel process exited") from None
            continue
        if reply.get("parent_header", {}).get("msg_id") in sent:
            return reply


def _never() -> float:
    return 0.0


def close_client(client: AsyncKernelClient) -> None:
    """Close the channels the pool opened; ``stop_channels()`` would first create the others."""
    for channel in opened_channels(client):
        channel.close()


async def run_code(
    client: ShellClient,
    code: str,
    *,
    timeout: float,
    is_alive: Callable[[], Awaitable[bool]],
    data: Any = None,
    stood_still: Callable[[], float] | None = None,
    silent: bool = True,
    allow_stdin: bool = False,
) -> dict[str, Any]:
    """Run constant or user-written ``code`` silently; ``data`` travels as JSON metadata.

    Silent execution keeps the execution count and history at zero, as in a
    kernel nobody has used yet (``silent=False`` still stores no history, for kernels
    that report errors only to code that is not silent). Raises :class:`KernelCodeError`
    on an error reply. ``stood_still`` as for :func:`request_reply`; ``allow_stdin`` for
    code that asks the pool for input (see :class:`ShellClient`'s ``answer_input``).
    """
    reply = await request_reply(
        client,
        "execute_request",
        {
            "code": code,
            "silent": silent,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": False,
        },
        timeout=timeout,
        is_alive=is_alive,
        metadata={METADATA_KEY: data} if data is not None else None,
        stood_still=stood_still,
    )
    content = reply["content"]
    if content.get("status") != "ok":
        raise KernelCodeError(
            content.get("ename", "Error"), content.get("evalue", ""), content.get("traceback", [])
        )
    return content
