"""Running code in kernels from tests, through the kernel's own client."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.multikernelmanager import AsyncMultiKernelManager

PROBE = """
import os, sys, json
print(json.dumps({
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "session": globals().get("__session__"),
    "modules": sorted(m for m in ("colorsys", "wave", "_hotpot_km") if m in sys.modules),
    "pid": os.getpid(),
    "user_names": sorted(k for k in globals() if not k.startswith("_")),
}))
"""


class ColdReference(AsyncMultiKernelManager):
    """jupyter_client alone, for a test's reference cold start of a kernel that works. It
    returns once the kernel answered, and starts it once more if it died before that:
    jupyter_client picks a kernel's ports in this process, and another process (the other
    test worker) can take one before the kernel binds it ("Address already in use")."""

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        for attempt in range(2):
            kernel_id = await super().start_kernel(*args, **kwargs)
            client = self.get_kernel(kernel_id).client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=60)
                return kernel_id
            except RuntimeError as error:
                if attempt or "died before replying" not in str(error):
                    raise
            finally:
                client.stop_channels()
            await self.shutdown_kernel(kernel_id, now=True)
        raise AssertionError("unreachable")


async def run(km: AsyncMultiKernelManager, kernel_id: str, code: str) -> tuple[str, dict]:
    """Run ``code`` in a kernel; return its stdout and the execute reply content."""
    client = km.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=30)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])

        reply = await client.execute_interactive(code, timeout=60, output_hook=hook)
        return "".join(out), reply["content"]
    finally:
        client.stop_channels()


async def probe(km: AsyncMultiKernelManager, kernel_id: str) -> dict:
    """What a kernel looks like from inside: cwd, env, session, imported test modules, pid."""
    out, reply = await run(km, kernel_id, PROBE)
    assert reply["status"] == "ok", reply
    data = json.loads(out.strip().splitlines()[-1])
    data["execution_count"] = reply["execution_count"]
    return data


def write_kernelspec(
    data_dir: Path, name: str, argv: list[str] | None = None, language: str = "python", **extra
) -> Path:
    """Write (or overwrite) ``<data_dir>/kernels/<name>/kernel.json``; default: a working ipykernel."""
    spec = {
        "argv": argv or [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": language,
        **extra,
    }
    path = data_dir / "kernels" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(spec))
    return path / "kernel.json"


def exited(pid: int) -> bool:
    """Whether child process ``pid`` exited with every thread of it: it can be reaped, or was.

    A SIGKILLed process shows as a zombie once its main thread is gone, but until its other
    threads are (slow at idle CPU priority on a busy machine) its parent cannot collect it
    and jupyter_client rightly calls it alive."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped, or not ours (a forked kernel is its template's child)
        try:
            process = psutil.Process(pid)
            return process.status() == psutil.STATUS_ZOMBIE and process.num_threads() <= 1
        except psutil.NoSuchProcess:
            return True


async def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> None:
    """Poll ``predicate`` (sync or async) until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"condition not reached in {timeout:g} s: {what}"
        await asyncio.sleep(0.1)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log records that carry a traceback, as text."""
    return [
        r.getMessage()
        for r in records
        if r.exc_info or "Traceback (most recent call last)" in r.getMessage()
    ]


async def shut_down(km: AsyncMultiKernelManager, timeout: float = 30.0) -> None:
    """``await km.shutdown_all()`` as callers write it (no extra task in between), failing
    the test instead of hanging if it never returns."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await km.shutdown_all()
    except asyncio.CancelledError:
        if expired:
            raise AssertionError(f"shutdown_all() did not return within {timeout:g} s") from None
        raise
    finally:
        handle.cancel()
