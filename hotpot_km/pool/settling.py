"""After a handout: the handout's control message and its reply, and a watch that holds
the refill until the kernel's new owner ran its first cell and the kernel went idle, so
the replacement's warm-up does not compete with the page or notebook being served; and
the same handout again for a kernel a remote gateway relaunched (:func:`reapply`)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable
from queue import Empty
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..kernel_io import (
    METADATA_KEY,
    KernelCodeError,
    KernelDiedError,
    ShellClient,
    request_reply,
    run_code,
)
from ..langs import handout as handout_file
from ..languages import HANDOUT_REPLY, HANDOUT_REQUEST, Preparation, preparation_for
from ..request import ColdReason, LaunchRequest
from ..tasks import OwnedTasks
from .kernels import PoolKernels
from .model import HandoutError, PooledKernel, PoolSettings
from .pausing import Pauses

#: Seconds a handed-out kernel must stay idle after its new owner's first execution
#: before its replacement starts (cells of a page follow each other much faster).
SETTLE_QUIET = 0.25


class Settlers:
    """Watches handed-out kernels until their refill may start: one task each, owned here
    (the pool cancels them when it closes)."""

    def __init__(
        self,
        kernels: PoolKernels,
        pauses: Pauses,
        *,
        settings: Callable[[], PoolSettings],
        log: Callable[[], logging.Logger | logging.LoggerAdapter[Any]],
        changed: Callable[[], None],
    ) -> None:
        self._places = kernels
        self._pauses = pauses
        self._settings = settings
        self._log = log
        self._changed = changed  # the filler looks again
        self.tasks = OwnedTasks()

    def watch(self, kernel: PooledKernel, handout: str | None) -> None:
        """A kernel was handed out (its place is ``settling``): watch it in the background
        until it settled, and stop the warm-ups under way meanwhile."""
        self._pauses.settling_began()
        self.tasks.spawn(self._settle(kernel, handout), "settle")

    async def _settle(self, kernel: PooledKernel, handout: str | None) -> None:
        """After a handout: check its reply, then hold the refill until the kernel went idle.

        Off the start's critical path. The refill waits (at most ``fill_idle_timeout``)
        until the kernel has run its first execute request from its new owner and then
        been idle for :data:`SETTLE_QUIET` seconds, so the replacement's warm-up does not
        compete with the page or notebook being served. ``fill_delay`` 0 refills at once.
        """
        settings = self._settings()
        log = self._log()
        loop = asyncio.get_running_loop()
        client = kernel.client
        alive = kernel.adapter.is_alive
        try:
            if handout is not None and client is not None:
                try:
                    await handout_reply(client, handout, settings.startup_timeout, alive)
                except KernelDiedError:
                    log.warning(
                        "hotpot_km: a handed-out %r kernel exited while applying the request's "
                        "cwd/env (its output says why); its manager restarts it",
                        kernel.name,
                    )
                    return
                except TimeoutError:
                    log.warning(
                        "hotpot_km: a handed-out %r kernel did not confirm its cwd/env within %g s",
                        kernel.name,
                        settings.startup_timeout,
                    )
            wait = settings.fill_idle_timeout if settings.fill_delay > 0 else 0.0
            if kernel.statuses is not None and client is not None and wait > 0:
                await _until_idle(kernel.statuses, client.session, loop.time() + wait, alive)
        except Exception:
            log.debug("hotpot_km: watching a handed-out kernel failed", exc_info=True)
        finally:
            kernel.close_client()
            self._places.settled(kernel)
            self._pauses.settling_ended()
            self._changed()


def send_handout(client: ShellClient, launch: LaunchRequest, request: LaunchRequest) -> str:
    """Send the handout control message that applies ``request`` to a kernel prepared for
    ``launch`` (see :mod:`hotpot_km.languages`); returns its message id. The values travel
    as JSON metadata; with nothing to apply no data is sent, and the kernel just opens its
    gate. ``cwd`` ``None`` leaves the kernel where it started."""
    changed = request.cwd != launch.cwd or dict(request.env) != dict(launch.env)
    data = {"cwd": request.cwd, "env": dict(request.env)} if changed else None
    msg = client.session.msg(HANDOUT_REQUEST, {}, metadata={METADATA_KEY: data} if data else None)
    client.control_channel.send(msg)
    return str(msg["header"]["msg_id"])


async def handout_reply(
    client: ShellClient, msg_id: str, timeout: float, is_alive: Callable[[], Awaitable[bool]]
) -> None:
    """Wait for the handout's reply; :class:`KernelDiedError` if the kernel exits instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError
        try:
            reply = await client.control_channel.get_msg(timeout=min(left, 0.25))
        except Empty:
            if not await is_alive():
                raise KernelDiedError("the kernel process exited") from None
            continue
        if reply["parent_header"].get("msg_id") == msg_id and reply["msg_type"] == HANDOUT_REPLY:
            return


async def apply_by_file(
    kernel: PooledKernel, prep: Preparation, request: LaunchRequest, timeout: float
) -> None:
    """The handout of a language without a control-message handler: write the request's
    cwd and the environment a cold start would have to the kernel's handout file, and run
    the language's constant ``apply`` code, which reads it. Raises :class:`HandoutError`
    (the kernel is discarded, never handed out) if anything fails."""
    assert kernel.launch is not None and kernel.client is not None
    path = getattr(kernel.adapter, "handout_path", None)
    if path is None:
        raise HandoutError("its handout file is unknown", ColdReason.HANDOUT_FAILED)
    cwd = request.cwd if request.cwd is not None else kernel.launch.cwd
    try:
        await asyncio.to_thread(
            handout_file.prepare_handout,
            path,
            prep.per_process_env,
            kernel.launch.env,
            (kernel.launch.cwd, cwd or "."),
            request.env,
        )
        await run_code(kernel.client, prep.apply, timeout=timeout, is_alive=kernel.adapter.is_alive)
        # the apply code's last step removes the file: some kernels (IRkernel, octave_kernel)
        # answer "ok" to silent code that failed
        if await asyncio.to_thread(os.path.exists, path):
            raise OSError("the kernel did not take its handout")
    except (OSError, KernelCodeError, KernelDiedError, TimeoutError) as error:
        await asyncio.to_thread(handout_file.remove, path)
        raise HandoutError(
            f"applying the request's cwd/env failed: {error}", ColdReason.HANDOUT_FAILED
        ) from None


async def dump_env_by_stdin(
    client: ShellClient,
    prep: Preparation,
    *,
    timeout: float,
    is_alive: Callable[[], Awaitable[bool]],
    stood_still: Callable[[], float] | None = None,
) -> dict[str, str]:
    """Run a stdin language's bootstrap: the environment the kernel reports in its input
    request's prompt (see :attr:`Preparation.stdin`). Raises :class:`KernelCodeError`."""
    if not hasattr(client, "answer_input"):
        raise KernelCodeError("Error", "this client can't answer input requests", [])
    prompts: list[str] = []

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return ""

    client.answer_input = answer
    try:
        await run_code(
            client,
            prep.bootstrap,
            timeout=timeout,
            is_alive=is_alive,
            stood_still=stood_still,
            silent=prep.init_silent,
            allow_stdin=True,
        )
    finally:
        client.answer_input = None
    try:
        fields = [base64.b64decode(field) for field in json.loads(prompts[0])]
    except (IndexError, ValueError, TypeError):
        raise KernelCodeError("Error", "the kernel did not report its environment", []) from None
    env: dict[str, str] = {}
    for field in fields:
        key, sep, value = field.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


async def apply_by_stdin(
    client: ShellClient,
    prep: Preparation,
    started: dict[str, str],
    launch: LaunchRequest,
    request: LaunchRequest,
    *,
    timeout: float,
    is_alive: Callable[[], Awaitable[bool]],
) -> None:
    """The handout of a stdin language: the request's cwd and the environment a cold start
    would have (as :func:`apply_by_file` computes it) as the line of input the language's
    constant ``apply`` code asks for (in pieces of :attr:`~Preparation.stdin_line_max`, if
    set); with :attr:`~Preparation.stdin_done`, the code's last request for input tells
    that it applied everything. Raises :class:`HandoutError`."""
    cwd = request.cwd if request.cwd is not None else launch.cwd
    env = handout_file.handout_env(
        started, launch.env, request.env, prep.per_process_env, (launch.cwd, cwd or "")
    )
    # the handout file's fields, each in base64: the cwd ("" for none), then KEY=value
    fields = [os.fsencode(cwd or "")] + [os.fsencode(f"{k}={v}") for k, v in env.items()]
    line = json.dumps([base64.b64encode(field).decode("ascii") for field in fields])
    size = prep.stdin_line_max
    lines = [line[i : i + size] for i in range(0, len(line), size)] + [""] if size else [line]
    asked: list[str] = []

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return lines[len(asked) - 1] if len(asked) <= len(lines) else ""

    try:
        if not hasattr(client, "answer_input"):
            raise OSError("this client can't answer input requests")
        client.answer_input = answer
        try:
            await run_code(
                client,
                prep.apply,
                timeout=timeout,
                is_alive=is_alive,
                silent=prep.init_silent,
                allow_stdin=True,
            )
        finally:
            client.answer_input = None
        done = [prep.stdin_done] if prep.stdin_done else []
        if [p.strip() for p in asked[len(lines) :]] != done or len(asked) < len(lines):
            raise OSError("the kernel did not take its handout")
    except (OSError, KernelCodeError, KernelDiedError, TimeoutError) as error:
        raise HandoutError(
            f"applying the request's cwd/env failed: {error}", ColdReason.HANDOUT_FAILED
        ) from None


def bootstrap_data(launch: LaunchRequest) -> dict[str, Any]:
    """What the language's bootstrap receives: the env the kernel was launched with, so the
    handout can tell the kernel's own additions from the launch's values, and the pool's
    whole env for its warm-up code (see :attr:`LaunchRequest.warmup_env`)."""
    return {"launch_env": dict(launch.env), "warmup_env": dict(launch.warmup_env)}


async def reapply(
    client: ShellClient,
    language: str | None,
    launch: LaunchRequest,
    request: LaunchRequest,
    timeout: float,
    is_alive: Callable[[], Awaitable[bool]],
) -> None:
    """Give a kernel that was relaunched with ``launch``'s arguments (a restart done by a
    remote gateway, outside the pool) ``request``'s cwd and env again: the bootstrap, then
    the handout, as for a pooled kernel."""
    prep = preparation_for(language)
    if prep is None:
        return
    # The gateway's websocket asks the new kernel for its info as it connects, on shell and
    # on control at once: some kernels need both answered before any code (see
    # Preparation.info_on_control).
    for channel in ("shell", "control") if prep.info_on_control else ("shell",):
        await request_reply(
            client,
            "kernel_info_request",
            {},
            timeout=timeout,
            is_alive=is_alive,
            resend_every=1.0,
            channel=channel,
        )
    if prep.stdin:
        started = await dump_env_by_stdin(client, prep, timeout=timeout, is_alive=is_alive)
        await apply_by_stdin(
            client, prep, started, launch, request, timeout=timeout, is_alive=is_alive
        )
        return
    await run_code(
        client, prep.bootstrap, timeout=timeout, is_alive=is_alive, data=bootstrap_data(launch)
    )
    await handout_reply(client, send_handout(client, launch, request), timeout, is_alive)


async def _until_idle(
    statuses: zmq.asyncio.Socket,
    session: Session,
    deadline: float,
    is_alive: Callable[[], Awaitable[bool]],
) -> None:
    """Until the kernel ran an execute request of its new owner and then stayed idle for
    :data:`SETTLE_QUIET` seconds, it exited, or ``deadline`` passed."""
    loop = asyncio.get_running_loop()
    quiet_until: float | None = None
    while True:
        now = loop.time()
        end = deadline if quiet_until is None else min(deadline, quiet_until)
        if now >= end:
            return
        if not await statuses.poll(int(min(end - now, 1.0) * 1000) + 1):
            if not await is_alive():
                return
            continue
        frames = await statuses.recv_multipart()
        _, parts = session.feed_identities(frames)
        msg = session.deserialize(parts)
        parent = msg.get("parent_header") or {}
        if msg["msg_type"] != "status" or parent.get("msg_type") != "execute_request":
            continue
        if parent.get("session") == session.session:
            continue  # the pool's own warm-up
        state = msg["content"].get("execution_state")
        if state == "busy":
            quiet_until = None
        elif state == "idle":
            quiet_until = loop.time() + SETTLE_QUIET
