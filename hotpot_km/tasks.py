"""Tasks an object owns: the pool, the fork templates, the service's leases and Voila's page
kernels each start background work that must neither be garbage-collected while it runs
nor outlive its owner's close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class OwnedTasks:
    """Every task spawned here is referenced until it is done; :meth:`join` waits for all of
    them, including those spawned while it waits."""

    def __init__(self, prefix: str = "hotpot_km") -> None:
        self._prefix = prefix
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the running loop, owned here until it is done."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._prefix} {name}".strip())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def join(self, timeout: float | None = None) -> list[asyncio.Task[Any]]:
        """Wait until no task is left; return those still running after ``timeout`` seconds
        (none without one). A task logs its own errors: those it raised are collected here."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return list(self._tasks)
            done, _ = await asyncio.wait(list(self._tasks), timeout=left)
            for task in done:
                if not task.cancelled():
                    task.exception()
        return []
