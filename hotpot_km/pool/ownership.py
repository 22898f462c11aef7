"""Ending kernels and freeing their slots: a slot comes back only once its process is
gone, so ``max_kernels`` counts every kernel process that still runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..budget import Slot
from ..tasks import OwnedTasks
from .kernels import PoolKernels
from .model import PooledKernel

#: How long a start waits for an evicted pooled kernel's process to be gone.
_GONE_WAIT = 10.0
#: How long ``aclose`` waits for shutdowns before giving up on processes that survive SIGKILL.
_CLOSE_WAIT = 60.0


class Endings:
    """Shuts pooled and replaced kernel processes down and sees them out: each shutdown is
    one task of the pool's (``tasks``), and a kernel's slot is freed only once its process
    is gone. Counts the replaced processes still being seen out (``retiring``)."""

    def __init__(
        self,
        kernels: PoolKernels,
        tasks: OwnedTasks,
        *,
        log: Callable[[], logging.Logger | logging.LoggerAdapter[Any]],
        resume: Callable[[PooledKernel], None],
        changed: Callable[[], None],
    ) -> None:
        self._places = kernels
        self._tasks = tasks
        self._log = log
        self._resume = resume  # a stopped process would not see a SIGTERM (see pausing.py)
        self._changed = changed  # the filler looks again
        self.retiring = 0

    async def discard(self, kernel: PooledKernel) -> Slot | None:
        """Shut a claimed kernel down; its slot comes back once the process is gone.

        ``None`` if that takes more than a few seconds: the slot is then freed whenever the
        process is gone, as it is if the caller is cancelled meanwhile.
        """
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled
        try:
            if kernel.task is not None:
                await asyncio.wait({kernel.task})
            await asyncio.wait({self.end(kernel)}, timeout=_GONE_WAIT)
        except BaseException:
            self.drop(kernel)
            raise
        finally:
            self._changed()
        if not _ended(kernel):
            self.drop(kernel)
            return None
        self._places.remove(kernel)
        return kernel.slot

    def drop(self, kernel: PooledKernel) -> None:
        """Shut down a kernel no request will use (idle, or given up by its claimer); its
        slot is freed once the process is gone."""
        self._places.remove(kernel)
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled...
            kernel.task.add_done_callback(lambda _: self.end(kernel))  # ...if it had begun
        elif self.end(kernel).done() and _ended(kernel):
            kernel.slot.release()  # gone already, while a claimer still held it

    def end(self, kernel: PooledKernel) -> asyncio.Task[None]:
        """The kernel's shutdown: one owned task, so no cancelled caller stops it halfway."""
        if kernel.ending is None:
            shutdown = self._shut_down(kernel)
            kernel.ending = self._tasks.spawn(shutdown, f"shut down {kernel.name}")
        return kernel.ending

    async def _shut_down(self, kernel: PooledKernel) -> None:
        """Kill the process and wait until it is reaped. Only then is its slot free again:
        released here, or, if a request claimed the kernel, handed to it by :meth:`discard`."""
        kernel.close_client()
        self._resume(kernel)
        try:
            await kernel.adapter.shutdown()
        except Exception:
            self._log().warning("hotpot_km: error shutting down a pooled kernel", exc_info=True)
        kernel.slot.unbind()
        # in the same step as the release: no request can take it as a victim after it
        self._places.ended(kernel)  # (a warm-up cancelled before it began never reported)
        if not kernel.claimed:
            kernel.slot.release()

    def retire(self, gone: Coroutine[Any, Any, None], slot: Slot | None) -> None:
        """See a process the host no longer uses out, in the background: a replaced kernel
        (instant restarts), or one whose shutdown gave up waiting for it. ``gone`` (the
        adapter's, e.g. :func:`~hotpot_km.adapters.local.see_out`) returns once the process is
        gone; only then is ``slot`` freed. The pool owns the task: ``aclose`` awaits it."""
        self.retiring += 1
        self._tasks.spawn(self._retire(gone, slot), "retire")

    async def _retire(self, gone: Coroutine[Any, Any, None], slot: Slot | None) -> None:
        try:
            await gone
            if slot is not None:
                slot.release()
        except Exception:
            self._log().warning("hotpot_km: error retiring a replaced kernel", exc_info=True)
        finally:
            self.retiring -= 1


def _ended(kernel: PooledKernel) -> bool:
    """Whether the kernel's shutdown finished, i.e. its process is gone."""
    ending = kernel.ending
    return ending is not None and ending.done() and not ending.cancelled()
