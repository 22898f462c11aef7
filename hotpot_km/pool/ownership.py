"""Ending kernels and freeing their slots: a slot comes back only once its process is
gone, so ``max_kernels`` counts every kernel process that still runs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ..budget import Slot
from .model import PooledKernel
from .state import PoolState

#: How long a start waits for an evicted pooled kernel's process to be gone.
_GONE_WAIT = 10.0
#: How long ``aclose`` waits for shutdowns before giving up on processes that survive SIGKILL.
_CLOSE_WAIT = 60.0


class Ownership(PoolState):
    """Shuts pooled and replaced kernel processes down and sees them out."""

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
            await asyncio.wait({self._end(kernel)}, timeout=_GONE_WAIT)
        except BaseException:
            self._drop(kernel)
            raise
        finally:
            self._wake_filler()
        if not _ended(kernel):
            self._drop(kernel)
            return None
        self.kernels.remove(kernel)
        return kernel.slot

    def _drop(self, kernel: PooledKernel) -> None:
        """Shut down a kernel no request will use (idle, or given up by its claimer); its
        slot is freed once the process is gone."""
        self.kernels.remove(kernel)
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled...
            kernel.task.add_done_callback(lambda _: self._end(kernel))  # ...if it had begun
        elif self._end(kernel).done() and _ended(kernel):
            kernel.slot.release()  # gone already, while a claimer still held it

    def _end(self, kernel: PooledKernel) -> asyncio.Task[None]:
        """The kernel's shutdown: one owned task, so no cancelled caller stops it halfway."""
        if kernel.ending is None:
            kernel.ending = self._spawn(self._shut_down(kernel), f"shut down {kernel.name}")
        return kernel.ending

    async def _shut_down(self, kernel: PooledKernel) -> None:
        """Kill the process and wait until it is reaped. Only then is its slot free again:
        released here, or, if a request claimed the kernel, handed to it by :meth:`discard`."""
        kernel.close_client()
        self.pauses.resume(kernel)  # a stopped process would not see a SIGTERM
        try:
            await kernel.adapter.shutdown()
        except Exception:
            self.log.warning("hotpot_km: error shutting down a pooled kernel", exc_info=True)
        kernel.slot.unbind()
        # in the same step as the release: no request can take it as a victim after it
        self.kernels.ended(kernel)  # (a warm-up cancelled before it began never reported)
        if not kernel.claimed:
            kernel.slot.release()

    def retire(self, gone: Coroutine[Any, Any, None], slot: Slot | None) -> None:
        """See a process the host no longer uses out, in the background: a replaced kernel
        (instant restarts), or one whose shutdown gave up waiting for it. ``gone`` (the
        adapter's, e.g. :func:`~hotpot_km.adapters.local.see_out`) returns once the process is
        gone; only then is ``slot`` freed. The pool owns the task: ``aclose`` awaits it."""
        self._retiring += 1
        self._spawn(self._retire(gone, slot), "retire")

    async def _retire(self, gone: Coroutine[Any, Any, None], slot: Slot | None) -> None:
        try:
            await gone
            if slot is not None:
                slot.release()
        except Exception:
            self.log.warning("hotpot_km: error retiring a replaced kernel", exc_info=True)
        finally:
            self._retiring -= 1


def _ended(kernel: PooledKernel) -> bool:
    """Whether the kernel's shutdown finished, i.e. its process is gone."""
    ending = kernel.ending
    return ending is not None and ending.done() and not ending.cancelled()
