"""Warm kernels on a remote gateway: jupyter_server in gateway mode → Kernel Gateway or
Enterprise Gateway (and through it Kubernetes, YARN, Docker).

Configure the local jupyter_server as usual for a gateway, plus the manager class::

    c.GatewayClient.url = "http://gateway:8888"
    c.ServerApp.kernel_manager_class = "hotpot_km.gateway.PooledGatewayMappingKernelManager"
    c.PooledKernelManager.kernel_pools = {"python3": 2}

The pooled kernels are started on the gateway (``POST /api/kernels``) by the same
engine as local ones (:class:`~hotpot_km.pool.KernelPool`), through
:class:`GatewayKernelAdapter`: warm-up over the gateway's websocket, liveness and
keep-alive over its REST API, deletion on shutdown. At hand-out the request's env and
cwd are applied as data, then jupyter_server adopts the remote kernel by its id through
its own ``GatewayKernelManager``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from jupyter_server.gateway.managers import GatewayMappingKernelManager
from traitlets import Bool, Float, List, Unicode

from .adapters.gateway import (
    LAUNCH_ONLY_ENV,
    POOL_MARKER,
    GatewayChannels,
    GatewayKernelAdapter,
    RemoteHandout,
    gateway_env,
)
from .pool import reapply
from .pooled import PooledKernelManager
from .request import LaunchRequest

__all__ = [
    "POOL_MARKER",
    "GatewayKernelAdapter",
    "PooledGatewayMappingKernelManager",
    "RestartError",
]


class RestartError(RuntimeError):
    """A pooled kernel a gateway restarted could not get its session's env and cwd again;
    the new process was shut down."""


class PooledGatewayMappingKernelManager(PooledKernelManager, GatewayMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's gateway kernel manager whose new kernels come warm from a pool of
    remote kernels (``c.ServerApp.kernel_manager_class``, with ``c.GatewayClient.url``).

    A start whose launch-only variables (:attr:`launch_only_env`) equal the pool's gets a
    pooled kernel with the request's env and cwd applied; any other start is the normal
    remote start. Pooled kernels are not listed by this server; on the gateway they carry
    ``KERNEL_HOTPOT_KM_POOL`` in their env if :attr:`pool_marker` is set, are kept from its
    idle culler while they wait,
    replaced when the gateway loses them, and deleted when this server stops.
    ``max_kernels`` counts the pool's own kernels only: the gateway limits the rest.
    """

    launch_only_env = List(
        Unicode(),
        list(LAUNCH_ONLY_ENV),
        config=True,
        help="""Env variables the gateway reads only when it starts a kernel (user, namespace,
        image, resources...). A start whose values differ from the pool's is a normal remote
        start instead of a pooled one.""",
    )

    mirror_working_dirs = Bool(
        False,
        config=True,
        help="""Whether the gateway starts kernels in KERNEL_WORKING_DIR (Enterprise
        Gateway's EG_MIRROR_WORKING_DIRS on Kubernetes); then a pooled kernel moves there at
        hand-out. Otherwise it stays where the gateway started it, as a cold kernel would.""",
    )

    keepalive_interval = Float(
        30.0,
        config=True,
        help="""Seconds between the empty silent executions each waiting pooled kernel gets, so a
        gateway that culls idle kernels even while connected (cull_connected) spares them.
        Keep it below the gateway's cull_idle_timeout.""",
    )

    pool_marker = Unicode(
        "",
        config=True,
        help="""Value of KERNEL_HOTPOT_KM_POOL in the env of this server's pooled kernels on
        the gateway, so an admin can tell them apart there (e.g. "{host}:{pid}": this
        server's host name and process id). Empty (default): no marker. The variable is
        fixed when the gateway starts the kernel, so it stays in the process env of the
        kernel handed out, where a cold kernel has none: leave it empty on a public
        server.""",
    )

    def pool_marker_value(self) -> str:
        """:attr:`pool_marker` with ``{host}`` and ``{pid}`` filled in."""
        return self.pool_marker.replace("{host}", socket.gethostname()).replace(
            "{pid}", str(os.getpid())
        )

    fork_by_default = False  # the kernels run on the gateway, not here

    def __init__(self, **kwargs: Any) -> None:
        self._handed: dict[str, tuple[RemoteHandout, LaunchRequest]] = {}
        super().__init__(**kwargs)
        if self.max_kernels:
            self.log.info("hotpot_km: max_kernels counts pooled kernels on the gateway only")

    def new_pool_kernel(self, kernel_name: str, kernel_id: str) -> GatewayKernelAdapter:  # type: ignore[override]
        return GatewayKernelAdapter(self, kernel_name, kernel_id)

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """The pool's kernels are started as for a notebook in the root directory."""
        kwargs = super().pool_launch_kwargs(kernel_name)
        path = kwargs.pop("path", None)
        if "cwd" not in kwargs:
            kwargs["cwd"] = self.cwd_for_path(path or "")
        return kwargs

    def remote_request(
        self, name: str, payload: Mapping[str, str], extras: Mapping[str, str] | None = None
    ) -> LaunchRequest:
        """A remote start as the pool compares it: its gateway env (plus what the pool adds
        to its own kernels), launch-only variables as fixed options, and the cwd the
        kernel gets on the gateway (``None``: wherever the gateway starts kernels)."""
        options = {f"env:{k}": payload.get(k) for k in self.launch_only_env if k in payload}
        cwd = payload.get("KERNEL_WORKING_DIR") if self.mirror_working_dirs else None
        return LaunchRequest(name, cwd, {**payload, **(extras or {})}, options, process_env=False)

    # -- the host's own code path ------------------------------------------------------------

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: str | None = None, **kwargs: Any
    ) -> str:
        """A pooled remote kernel adopted by id when the pool can serve the start, else
        jupyter_server's own remote start."""
        if kernel_id is None:
            name = kwargs.get("kernel_name") or self.default_kernel_name
            self._check_request(name, {k: v for k, v in kwargs.items() if k != "kernel_name"})
            cwd = kwargs.get("cwd")
            if cwd is None and path is not None:
                cwd = self.cwd_for_path(path)
            request = self.remote_request(name, gateway_env(kwargs.get("env"), cwd))
            self._pool.start()
            handed, spare, _failure = await self._pool.take(request, ready_only=False)
            if spare is not None:
                spare.release()
            if handed is not None and await self._adopt(handed.kernel_id, kwargs):
                self._handed[handed.kernel_id] = (handed, request)
                return str(handed.kernel_id)
        return await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)

    async def _adopt(self, kernel_id: str, kwargs: dict[str, Any]) -> bool:
        """Give a handed-out remote kernel to jupyter_server's gateway manager by its id."""
        try:
            await super().start_kernel(kernel_id=kernel_id, **kwargs)
        except Exception:
            self.log.warning(
                "hotpot_km: adopting pooled kernel %s failed", kernel_id, exc_info=True
            )
            self.remove_kernel(kernel_id)
            return False
        if not self.get_kernel(kernel_id).has_kernel:  # gone between hand-out and adoption
            self.remove_kernel(kernel_id)
            return False
        self.log.info("hotpot_km: handed out pooled remote kernel %s", kernel_id)
        return True

    async def restart_kernel(self, kernel_id: str, now: bool = False, **kwargs: Any) -> None:
        """The gateway restarts a kernel with the arguments it was started with, i.e. the
        pool's: a pooled kernel then gets its request's env and cwd again.

        If it can't (the new process died, hung, or is not the kernel it was), the new
        process is shut down, since it would run the user's code with the pool's env and
        cwd, and the restart fails with :class:`RestartError` (jupyter_server answers 500)."""
        await super().restart_kernel(kernel_id, now=now, **kwargs)
        handed = self._handed.get(kernel_id)
        if handed is None:
            return
        try:
            await self._reapply(*handed)
        except Exception as error:
            self.log.error(
                "hotpot_km: the restarted kernel %s could not get its session's env and cwd "
                "again (%s); it is shut down: start a new kernel",
                kernel_id,
                error,
            )
            try:
                await self.shutdown_kernel(kernel_id, now=True)
            except Exception:
                self.log.warning(
                    "hotpot_km: shutting down kernel %s failed", kernel_id, exc_info=True
                )
            raise RestartError(
                f"Kernel {kernel_id} was restarted but could not get its session's env and "
                f"cwd again ({error}); it was shut down: start a new kernel"
            ) from error

    async def _reapply(self, handed: RemoteHandout, request: LaunchRequest) -> None:
        timeout = self.pool_settings().startup_timeout
        channels = GatewayChannels(self.log)
        try:
            await channels.connect(handed.kernel_id, timeout)

            async def alive() -> bool:
                return not channels.lost

            await reapply(channels, handed.language, handed.launch, request, timeout, alive)
        finally:
            channels.close()

    def remove_kernel(self, kernel_id: str) -> Any:
        self._handed.pop(kernel_id, None)
        return super().remove_kernel(kernel_id)

    async def shutdown_all(self, now: bool = False) -> None:  # type: ignore[override]
        """Delete the pool's kernels on the gateway, then every kernel of this server."""
        await self._pool.aclose()
        await GatewayMappingKernelManager.shutdown_all(self, now=now)

    _async_shutdown_all = shutdown_all  # type: ignore[assignment]
