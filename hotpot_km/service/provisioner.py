"""``hotpot-km-provisioner``: the launch step of any Jupyter client's own ``KernelManager``.

Named in a kernelspec's ``metadata.kernel_provisioner`` (``hotpot-km kernelspec
install`` writes it), so papermill, nbconvert, nbclient, nbmake and jupyter_server
use it with no code change. A start asks the user's pool service for a kernel,
sending the cwd and final env this process would give a cold start; the service
applies them to a warm kernel and leases it to this process. When the service is
down or can't serve the request, the kernel starts cold through the kernelspec's
own provisioner, with one log line saying why.

A restart relaunches cold *in place*: same ports, same key, same connection file,
because clients such as a JupyterLab page keep their sockets open across a
restart and can't follow a port change. A pooled kernel has its own ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import select
import signal
import sys
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase, LocalProvisioner
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from traitlets import Bool, Dict, Float

from ..handout import ReadyClients
from ..request import absolute_cwd, final_env, fixed_options
from .autostart import start_service
from .client import ServiceError, ServiceUnavailable, call
from .kernelspec import unwrap
from .paths import ServicePaths
from .procs import readable
from .protocol import info_from_wire

#: How long a start may wait for the service (it may wait for a warming kernel itself).
LAUNCH_TIMEOUT = 300.0


class ServiceProvisioner(ReadyClients, KernelProvisionerBase):  # type: ignore[misc]
    """A warm kernel from the pool service, else a cold start (see the module docstring).

    Clients of a leased kernel are ready in one round trip, as in-process
    (:mod:`hotpot_km.handout`): nbclient, papermill, nbconvert and nbmake then skip
    jupyter_client's 0.2 s quiet-IOPub wait per notebook."""

    inner = Dict(
        config=True,
        help="""The kernelspec's own kernel_provisioner stanza, used for cold starts
        (empty: jupyter_client's default, the local provisioner).""",
    )
    autostart = Bool(
        False,
        config=True,
        help="""Start the pool service in the background when none runs (that start is
        cold; later ones are warm).""",
    )
    idle_timeout = Float(
        600.0,
        config=True,
        help="Seconds an autostarted service keeps running with no kernel handed out.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inner: KernelProvisionerBase | None = None  # a cold or restarted process
        self._lease: str | None = None  # a leased process
        self._kept_ports: str | None = None  # a lease whose ports a restart reuses
        self._pidfd: int | None = None
        self._status: int | None = None
        self._waited = False
        self._handed: dict[str, Any] | None = None
        self._handed_cmd: list[str] = []
        self._cwd: str | None = None
        self._launched = False
        self._paths = ServicePaths.default()

    # -- launching ---------------------------------------------------------------------------

    def _in_process_pool(self) -> bool:
        """Under a hotpot_km in-process manager, which pools kernels itself: start cold.
        Such a manager exists only once its module was imported; a runner that never
        imported it does not pay for the import (the pool engine, prometheus_client)."""
        limited = sys.modules.get("hotpot_km.limited")
        if limited is None:
            return False
        return isinstance(getattr(self.parent, "parent", None), limited.LimitedKernelManager)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        restarting, self._launched = self._launched, True
        self._use_ready_client(False)
        if restarting:
            return await self._cold(kwargs, keep_ports=self._kept_ports is not None)
        if self._in_process_pool():
            return await self._cold(kwargs)
        reason = await self._from_service(kwargs)
        if reason is None:
            self._use_ready_client(True)
            return {**kwargs, "cwd": self._cwd, "cmd": self._handed_cmd}
        self.log.warning(
            "hotpot_km: starting the %r kernel cold: %s", self.parent.kernel_name, reason
        )
        return await self._cold(kwargs)

    async def _from_service(self, kwargs: dict[str, Any]) -> str | None:
        """Lease a pooled kernel for this start; ``None`` on success, else why not."""
        km = self.parent
        spec = self.kernel_spec
        try:
            cwd = absolute_cwd(kwargs.get("cwd"))
            env = await final_env(spec, kwargs.get("env"), via=self)
            options = fixed_options(kwargs)
            json.dumps(options)
        except (TypeError, ValueError) as error:
            return f"start arguments the pool service can't take ({error})"
        policy = getattr(km, "_transport_encryption_policy", None)
        try:
            self._paths.check()
            reply = await call(
                self._paths.socket,
                "launch",
                timeout=LAUNCH_TIMEOUT,
                kernel_name=km.kernel_name,
                spec={"argv": spec.argv, "env": spec.env, "language": spec.language},
                cwd=cwd,
                env=env,
                options=options,
                encryption=policy() if policy is not None else "disabled",
            )
        except ServiceUnavailable as error:
            if error.absent and self.autostart:
                started = await asyncio.to_thread(
                    start_service, self._paths, self.idle_timeout, km.kernel_name
                )
                return f"{error}; {started}"
            return str(error)
        except ServiceError as error:
            return f"the pool service {'refused' if error.refused else 'failed'}: {error}"
        except OSError as error:
            return str(error)
        self._lease = reply["lease"]
        self._handed = info_from_wire(reply["connection_info"])
        self._handed_cmd = list(reply["cmd"])
        self._cwd = cwd
        self._status, self._waited = None, False
        await self._watch(reply.get("pid"))
        self.log.debug(
            "hotpot_km: the pool service handed out a %r kernel (pid %s)",
            km.kernel_name,
            reply.get("pid"),
        )
        return None

    async def _watch(self, pid: Any) -> None:
        """Poll the leased process locally through a pidfd, once the service confirms that
        the pid still names our kernel (so a reused pid can't fool us)."""
        if not isinstance(pid, int) or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            status = (await self._ask("poll"))["status"]
        except (ServiceUnavailable, ServiceError):
            status = -1
        if status is None:
            self._pidfd = fd
        else:
            os.close(fd)

    async def _cold(self, kwargs: dict[str, Any], keep_ports: bool = False) -> dict[str, Any]:
        if self._inner is None:
            self._inner = self._new_inner()
            if keep_ports and isinstance(self._inner, LocalProvisioner):
                # the manager still holds the leased kernel's ports and key: reuse them
                self._inner.ports_cached = True
        return await self._inner.pre_launch(**kwargs)

    def _new_inner(self) -> KernelProvisionerBase:
        """The kernelspec's own provisioner, as a cold start without hotpot_km would use."""
        spec = unwrap(self.kernel_spec)
        factory = KernelProvisionerFactory.instance(parent=self.parent.parent)
        inner = factory.create_provisioner_instance(self.kernel_id, spec, parent=self.parent)
        if isinstance(inner, ServiceProvisioner):  # never recurse into ourselves
            inner = LocalProvisioner(kernel_id=self.kernel_id, kernel_spec=spec, parent=self.parent)
        return inner

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if self._handed is not None:
            info, self._handed = self._handed, None
            self.connection_info = info
            return info
        assert self._inner is not None
        self.connection_info = await self._inner.launch_kernel(cmd, **kwargs)
        return self.connection_info

    async def post_launch(self, **kwargs: Any) -> None:
        if self._lease is None and self._inner is not None:
            await self._inner.post_launch(**kwargs)

    # -- the running process -----------------------------------------------------------------

    async def _ask(self, op: str, **fields: Any) -> dict[str, Any]:
        return await call(self._paths.socket, op, lease=self._lease, **fields)

    @property
    def has_process(self) -> bool:
        if self._lease is not None:
            return not self._waited
        return self._inner is not None and self._inner.has_process

    @property
    def pid(self) -> int | None:
        return getattr(self._inner, "pid", None) if self._lease is None else None

    @property
    def process(self) -> Any:
        """The local process of a cold start (for last-resort cleanup), if any."""
        return getattr(self._inner, "process", None) if self._lease is None else None

    @property
    def pgid(self) -> int | None:
        return getattr(self._inner, "pgid", None) if self._lease is None else None

    async def poll(self) -> int | None:
        if self._lease is None:
            return await self._inner.poll() if self._inner is not None else 0
        if self._status is not None:
            return self._status
        if self._pidfd is not None and not select.select([self._pidfd], [], [], 0)[0]:
            return None
        try:
            status = (await self._ask("poll"))["status"]
        except (ServiceUnavailable, ServiceError):
            status = -signal.SIGKILL  # leased kernels die with the service
        self._status = status
        return status

    async def wait(self) -> int | None:
        if self._lease is None:
            return await self._inner.wait() if self._inner is not None else 0
        while (status := await self.poll()) is None:
            if self._pidfd is not None:
                await readable(self._pidfd)
            else:  # no pidfd: only the service can tell
                await asyncio.sleep(0.1)
        self._waited = True
        return status

    async def _lease_op(self, op: str, **fields: Any) -> None:
        try:
            await self._ask(op, **fields)
        except ServiceUnavailable:
            pass  # the service is gone, and its kernels with it
        except ServiceError as error:
            self.log.debug("hotpot_km: %s of a leased kernel failed: %s", op, error)

    async def send_signal(self, signum: int) -> None:
        if self._lease is not None:
            if not self._waited:
                await self._lease_op("signal", signum=int(signum))
        elif self._inner is not None:
            await self._inner.send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if self._lease is not None:
            if not self._waited:
                await self._lease_op("kill")
        elif self._inner is not None:
            await self._inner.kill(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        if self._lease is not None:
            if not self._waited:
                await self._lease_op("terminate")
        elif self._inner is not None:
            await self._inner.terminate(restart=restart)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """A shutdown (not a restart) of a leased kernel: the service sees the process out
        (it exits on the request just sent, or is killed after the grace period), so the
        owner need not wait for it. A restart waits: the new process needs the ports."""
        if self._lease is None:
            if self._inner is not None:
                await self._inner.shutdown_requested(restart=restart)
            return
        if not restart and not self._waited:
            await self._lease_op("release", restart=False, wait=False)
            self._end_lease(status=0)

    def _end_lease(self, status: int) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._lease, self._status, self._waited = None, status, True

    async def cleanup(self, restart: bool = False) -> None:
        if self._lease is not None:
            lease = self._lease
            await self._lease_op("release", restart=restart)
            self._end_lease(status=self._status or 0)
            if restart:
                self._kept_ports = lease  # the service keeps them reserved for us
        elif self._inner is not None:
            await self._inner.cleanup(restart=restart)
        if not restart and self._kept_ports is not None:
            self._lease, self._kept_ports = self._kept_ports, None
            await self._lease_op("release", restart=False)
            self._lease = None

    # -- the rest of the provisioner interface -----------------------------------------------

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        if self._lease is None and self._inner is not None:
            return self._inner.get_shutdown_wait_time(recommended)
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        if self._lease is None and self._inner is not None:
            return self._inner.get_stable_start_time(recommended)
        return recommended

    def resolve_path(self, path_str: str) -> str | None:
        if self._lease is None and self._inner is not None:
            return self._inner.resolve_path(path_str)
        path = pathlib.Path(path_str).expanduser()
        if not path.is_absolute() and self._cwd is not None:
            path = (pathlib.Path(self._cwd) / path).resolve()
        return path.as_posix() if path.exists() else None
