"""The launch step of a host's own ``KernelManager``: take a warm process, or start one.

The host (jupyter_server, Voila, a plain ``AsyncMultiKernelManager``) creates
its ``KernelManager`` exactly as usual; hotpot_km only gives it this
provisioner. Whatever the server does around a kernel (activity tracking,
culling, restart callbacks, metrics, websockets) stays its own code, and
restarts come back here, so they can take warm kernels too.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_client.provisioning import KernelProvisionerBase, LocalProvisioner
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from . import keeper
from .adapters import process_group, remove_files, see_out
from .budget import Slot
from .compat.jupyter_client import encryption_policy, set_kernel_spec
from .handout import ReadyClients
from .pool import PooledKernel
from .request import ColdReason, LaunchRequest, absolute_cwd, final_env, fixed_options

if TYPE_CHECKING:
    from jupyter_client.connect import KernelConnectionInfo

    from .pool import KernelPool, Reservation

#: Called after a relaunch gave a kernel other ports or another key: (kernel id, old info).
ConnectionChanged = Callable[[str, "KernelConnectionInfo"], Awaitable[None]]


class PooledProvisioner(ReadyClients, KernelProvisionerBase):  # type: ignore[misc]
    """Serves launches from a :class:`~hotpot_km.pool.KernelPool`, else through the
    kernelspec's own provisioner (a cold start, counted against ``max_kernels``)."""

    def __init__(
        self,
        *,
        pool: KernelPool,
        reservation: Reservation,
        on_connection_changed: ConnectionChanged | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._pool = pool
        self._claimed: PooledKernel | None = reservation.kernel
        self._victim: PooledKernel | None = reservation.victim
        self._slot: Slot | None = reservation.slot
        self._inner: KernelProvisionerBase | None = None
        self._adopted = False  # the inner provisioner came from the pool
        self._files: list[str] = []  # connection files of adopted processes
        self._request: LaunchRequest | None = None
        self._launched = False
        self._pooled_launch: dict[str, Any] | None = None
        self._handout_failure: ColdReason | None = None
        self._on_connection_changed = on_connection_changed
        self._previous: dict[str, Any] | None = None  # connection info before a restart

    # -- launching ---------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        try:
            return await self._pre_launch(kwargs)
        except BaseException:
            await self._give_back()
            raise

    async def _pre_launch(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        km = self.parent
        name = km.kernel_name
        started, restarting = time.monotonic(), self._launched
        try:
            self.kernel_spec = self._pool.cached_spec(name) or await self._pool.spec(name)
        except Exception:  # e.g. no such kernelspec: the pool had nothing for this start
            self._report(name, restarting, self._pool.cold_reason(name, None), started)
            raise
        set_kernel_spec(km, self.kernel_spec)
        request = LaunchRequest(
            kernel_name=name,
            cwd=absolute_cwd(kwargs.get("cwd")),
            env=await final_env(self.kernel_spec, kwargs.get("env"), via=self),
            options=fixed_options(kwargs),
            encryption=encryption_policy(km),
        )
        self._request = request
        if self._victim is not None:
            victim, self._victim = self._victim, None
            self._slot = await self._pool.discard(victim)
        self._launched = True
        handed = None
        if not restarting or self._pool.warm_restarts:
            handed = await self._take_from_pool(request, ready_only=restarting)
        self._use_ready_client(bool(handed))
        if handed:
            self._report(name, restarting, None, started)
            return {**kwargs, "cwd": request.cwd, "cmd": handed}
        reason = self._handout_failure or self._pool.cold_reason(name, request)
        if self._inner is not None and await self._inner.poll() is None:
            await self._finish_inner()  # a process still running keeps its slot till it is gone
        if self._slot is None:
            self._slot = await self._pool.cold_slot(name)
        self._report(name, restarting, reason, started)
        # a cold start reads the kernelspec afresh, as jupyter_client's own would
        self.kernel_spec = await self._pool.spec(name)
        set_kernel_spec(km, self.kernel_spec)
        if self._inner is not None and self._adopted:
            self._relaunch_adopted()
        if self._inner is None:
            self._inner = self._new_inner()
        await keeper.ensure_running()
        return await self._inner.pre_launch(**kwargs)

    async def _take_from_pool(self, request: LaunchRequest, ready_only: bool) -> list[str] | None:
        """Hand out a pooled kernel for ``request``; try one more ready one if the first failed."""
        kernel, self._claimed = self._claimed, None
        handed, spare, self._handout_failure = await self._pool.take(
            request, ready_only=ready_only, kernel=kernel
        )
        if spare is not None:
            if self._slot is None:
                self._slot = spare  # a failed handout's slot serves the cold start
            else:
                spare.release()
        if handed is None:
            return None
        if self._inner is not None:
            await self._finish_inner()
        if self._slot is not None:
            self._slot.release()  # the pooled process brings its own
        self._slot = handed.slot
        self._inner, self._adopted = handed.provisioner, True
        self._files = [handed.connection_file]
        self._pooled_launch = handed.connection_info
        self.log.debug("hotpot_km: handed out a pooled %r kernel", request.kernel_name)
        return list(handed.cmd)

    def _report(self, name: str, restart: bool, reason: ColdReason | None, started: float) -> None:
        """Tell the pool's observers how this start was served: pooled, or cold and why."""
        seconds = time.monotonic() - started
        self._pool.observer.kernel_started(
            name, pooled=reason is None, reason=reason, restart=restart, seconds=seconds
        )
        if reason is not None:
            self.log.debug("hotpot_km: starting a %r kernel cold (%s)", name, reason)

    def _relaunch_adopted(self) -> None:
        """A cold restart of a handed-out process: its provisioner relaunches it for the host's
        manager, which holds the same ports and key (as jupyter_client's own restart keeps
        them), so clients connected before the restart keep working."""
        assert self._inner is not None
        self._inner.parent = self.parent
        self._inner.kernel_id = self.kernel_id
        self._inner.kernel_spec = self.kernel_spec
        self._adopted = False

    def _new_inner(self) -> KernelProvisionerBase:
        """The kernelspec's own provisioner, as a cold start would use (or the host's own)."""
        host = getattr(self.parent.parent, "new_cold_provisioner", None)
        if host is not None:  # e.g. fork mode: forked from the template instead
            inner = host(self.kernel_id, self.kernel_spec, self.parent)
            if inner is not None:
                return inner
        factory = KernelProvisionerFactory.instance(parent=self.parent.parent)
        inner = factory.create_provisioner_instance(
            self.kernel_id, self.kernel_spec, parent=self.parent
        )
        if isinstance(inner, PooledProvisioner):  # never recurse into ourselves
            inner = LocalProvisioner(
                kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self.parent
            )
        return inner

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        try:
            if self._pooled_launch is not None:
                info, self._pooled_launch = self._pooled_launch, None
                self.connection_info = info
                return info
            assert self._inner is not None and self._slot is not None
            with keeper.launching(self.parent.connection_file):
                self.connection_info = await self._inner.launch_kernel(cmd, **kwargs)
                self._slot.bind(process_group(self._inner))
            return self.connection_info
        except BaseException:
            await self._give_back()
            raise

    async def post_launch(self, **kwargs: Any) -> None:
        if self._inner is not None and not self._adopted:
            await self._inner.post_launch(**kwargs)
        previous, self._previous = self._previous, None
        if previous is None or self._on_connection_changed is None:
            return
        if previous != dict(self.parent.get_connection_info()):
            try:
                await self._on_connection_changed(self.kernel_id, previous)
            except Exception:
                self.log.warning(
                    "hotpot_km: could not move the clients of kernel %s to its new ports",
                    self.kernel_id,
                    exc_info=True,
                )

    async def _give_back(self) -> None:
        """After a failed launch: release what this start held and no process uses."""
        if self._claimed is not None:
            self._pool.unclaim(self._claimed)
            self._claimed = None
        if self._victim is not None:
            slot = await self._pool.discard(self._victim)
            self._victim = None
            if slot is not None:
                slot.release()
        if not self.has_process and self._slot is not None:
            self._slot.release()
            self._slot = None

    # -- the running process -----------------------------------------------------------------

    @property
    def restarts_warm(self) -> bool:
        """A restart under way will hand out the ready pooled kernel it claimed (read by
        :class:`~hotpot_km.handout._HandoutStart`)."""
        return self._claimed is not None and self._launched

    @property
    def has_process(self) -> bool:
        return self._inner is not None and self._inner.has_process

    @property
    def pid(self) -> int | None:
        return getattr(self._inner, "pid", None)

    async def poll(self) -> int | None:
        if self._inner is None:
            return 0
        status = await self._inner.poll()
        if status is not None and self._slot is not None:
            self._slot.release()  # the process is gone; a restart takes a new slot
            self._slot = None
        return status

    async def wait(self) -> int | None:
        status = await self._inner.wait() if self._inner is not None else 0
        if self._slot is not None and not self.has_process:
            self._slot.release()
            self._slot = None
        return status

    async def send_signal(self, signum: int) -> None:
        if self._inner is not None:
            await self._inner.send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if self._inner is not None:
            await self._inner.kill(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        if self._inner is not None:
            await self._inner.terminate(restart=restart)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """On a restart with a ready pooled kernel, let the old process finish in the
        pool's background instead of waiting for it: the restart is then instant."""
        if self._inner is not None:
            await self._inner.shutdown_requested(restart=restart)
        if not restart or self._request is None or self._inner is None:
            return
        if not self._pool.warm_restarts:
            return
        kernel = self._pool.claim(self._request.kernel_name, self._request, ready_only=True)
        if kernel is None:
            return
        self._claimed = kernel
        grace = self.get_shutdown_wait_time(self.parent.shutdown_wait_time)
        inner, self._inner = self._inner, None
        slot, self._slot = self._slot, None
        files, self._files = self._files, []
        self._pool.retire(see_out(inner, files, grace, self._pool.log), slot)

    async def cleanup(self, restart: bool = False) -> None:
        if restart:
            self._previous = dict(self.parent.get_connection_info())
        if self._inner is not None and not restart:
            await self._finish_inner()
        elif self._inner is not None:
            # keep the ports: a cold relaunch reuses them (see _relaunch_adopted)
            await self._inner.cleanup(restart=True)
            files, self._files = self._files, []
            remove_files(files)  # the pool's connection file of a handed-out process
        if not restart and self._slot is not None and not self.has_process:
            self._slot.release()
            self._slot = None

    async def _finish_inner(self) -> None:
        """Final cleanup of a process we will not relaunch through its provisioner. One still
        running (jupyter_client's shutdown stops waiting for a killed kernel after 5 s) goes
        to the pool with its slot, which is freed once the process is gone."""
        inner, self._inner = self._inner, None
        files, self._files = self._files, []
        if inner is not None and inner.has_process and await inner.poll() is None:
            slot, self._slot = self._slot, None
            self._pool.retire(see_out(inner, files, 0, self._pool.log), slot)
            return
        if inner is not None:
            await inner.cleanup(restart=False)
        remove_files(files)

    # -- the rest of the provisioner interface -----------------------------------------------

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        if self._inner is not None:
            return self._inner.get_shutdown_wait_time(recommended)
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        if self._inner is not None:
            return self._inner.get_stable_start_time(recommended)
        return recommended

    def resolve_path(self, path_str: str) -> str | None:
        if self._inner is not None and not self._adopted:
            return self._inner.resolve_path(path_str)
        path = pathlib.Path(path_str).expanduser()
        if not path.is_absolute() and self._request is not None:
            path = (pathlib.Path(self._request.cwd) / path).resolve()
        return path.as_posix() if path.exists() else None
