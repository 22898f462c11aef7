"""Ending kernels and freeing their slots: a slot comes back only once its process is
gone, so ``max_kernels`` counts every kernel process that still runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from jupyter_client.provisioning import KernelProvisionerBase

from ..budget import Slot
from .local import remove_files, until_gone
from .model import PooledKernel, PoolState

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
        self._claimed.discard(kernel)
        return kernel.slot

    def _drop(self, kernel: PooledKernel) -> None:
        """Shut down a kernel no request will use (idle, or given up by its claimer); its
        slot is freed once the process is gone."""
        kernel.claimed = False
        self._claimed.discard(kernel)
        idle = self._idle.get(kernel.name, [])
        if kernel in idle:
            idle.remove(kernel)
        if kernel.task is not None and not kernel.task.done():
            kernel.task.cancel()  # the warm-up shuts its kernel down when cancelled...
            kernel.task.add_done_callback(lambda _: self._end(kernel))  # ...if it had begun
        elif self._end(kernel).done() and _ended(kernel):
            kernel.slot.release()  # gone already, while a claimer still held it

    def _end(self, kernel: PooledKernel) -> asyncio.Task[None]:
        """The kernel's shutdown: one owned task, so no cancelled caller stops it halfway."""
        if kernel.ending is None:
            kernel.ending = self._spawn(
                self._shut_down(kernel), f"hotpot_km shut down {kernel.name}"
            )
        return kernel.ending

    async def _shut_down(self, kernel: PooledKernel) -> None:
        """Kill the process and wait until it is reaped. Only then is its slot free again:
        released here, or, if a request claimed the kernel, handed to it by :meth:`discard`."""
        kernel.close_client()
        self._resume(kernel)  # a stopped process would not see a SIGTERM
        try:
            await kernel.adapter.shutdown()
        except Exception:
            self.log.warning("hotpot_km: error shutting down a pooled kernel", exc_info=True)
        kernel.slot.unbind()
        # in the same step as the release: no request can take it as a victim after it
        idle = self._idle.get(kernel.name, [])
        if kernel in idle:
            idle.remove(kernel)
        self._warming.discard(kernel)  # a warm-up cancelled before it began never did
        if not kernel.claimed:
            kernel.slot.release()

    def retire(
        self,
        provisioner: KernelProvisionerBase,
        slot: Slot | None,
        files: Iterable[str],
        grace: float,
    ) -> None:
        """Finish a process's shutdown in the background: a replaced kernel (instant
        restarts), or one whose shutdown gave up waiting for it. ``slot`` is freed once
        the process is gone."""
        self._retiring += 1
        self._spawn(self._retire(provisioner, slot, list(files), grace), "hotpot_km retire")

    async def _retire(
        self, provisioner: KernelProvisionerBase, slot: Slot | None, files: list[str], grace: float
    ) -> None:
        try:
            if grace > 0:
                try:
                    await asyncio.wait_for(provisioner.wait(), grace)
                except asyncio.TimeoutError:
                    pass
            await until_gone(provisioner, self.log)
            if slot is not None:
                slot.release()
            await provisioner.cleanup(restart=False)
        except Exception:
            self.log.warning("hotpot_km: error retiring a replaced kernel", exc_info=True)
        finally:
            self._retiring -= 1
            remove_files(files)


def _ended(kernel: PooledKernel) -> bool:
    """Whether the kernel's shutdown finished, i.e. its process is gone."""
    ending = kernel.ending
    return ending is not None and ending.done() and not ending.cancelled()
