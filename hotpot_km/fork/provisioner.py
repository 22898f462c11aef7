"""Fork mode inside jupyter_client: a provisioner whose launch forks, and the pool's manager.

``ForkProvisioner`` is jupyter_client's ``LocalProvisioner`` (ports, connection
file, env, signals, shutdown) with one step changed: ``launch_kernel`` asks the
template to fork instead of spawning a process, and launches as usual when no
template can serve the start. The process it then holds is a
:class:`~hotpot_km.fork.host.ForkedProcess`, which answers ``poll``, ``wait``,
``send_signal``, ``kill`` and ``terminate`` by pidfd, so ``KernelManager``,
restarts and the pool's handout work unchanged.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

from jupyter_client.provisioning import LocalProvisioner

from ..adapters import PoolProcessManager
from ..compat.jupyter_client import reconcile_connection_info
from ..request import absolute_cwd, final_env, launch_env, launch_program, utf8_clean
from .host import ForkedProcess

if TYPE_CHECKING:
    from jupyter_client.connect import KernelConnectionInfo

    from .templates import Templates

#: Launch arguments a forked start honours; any other (stdout=..., ...) means a launch.
_FORKABLE_KWARGS = frozenset({"cwd", "env", "independent", "kernel_id", "extra_arguments"})


class ForkProvisioner(LocalProvisioner):  # type: ignore[misc]
    """``LocalProvisioner`` that forks its kernel from the kernel name's template."""

    def __init__(self, *, templates: Templates, wait_for_template: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._templates = templates
        self._wait = wait_for_template

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        # A forked kernel reads its connection file at once, not half a second later:
        # after a restart with new ports, the file must already say so (jupyter_client
        # only rewrites it after the launch, racing a launched kernel's start).
        reconcile_connection_info(self.parent, self.connection_info)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        process = await self._fork(cmd, kwargs)
        if process is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = process
        self.pid = process.pid
        self.pgid = process.pid  # the child called setsid() before it answered
        self.cwd = kwargs.get("cwd", pathlib.Path.cwd())
        return self.connection_info

    async def _fork(self, cmd: list[str], kwargs: dict[str, Any]) -> ForkedProcess | None:
        if set(kwargs) - _FORKABLE_KWARGS:
            return None
        texts = [str(kwargs.get("cwd") or ""), *cmd]
        for key, value in (kwargs.get("env") or {}).items():
            texts += [key, value]
        if not all(utf8_clean(text) for text in texts):
            return None  # the birth travels as JSON: such text is launched, exactly
        name = self.parent.kernel_name
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        base = None
        if not kwargs.get("independent"):
            # as jupyter_client's launch_kernel does: the kernel's parent poller watches us
            env["JPY_PARENT_PID"] = str(os.getpid())
        if self._wait:
            base = env  # the pool's own start: its env is the pool's, not a request's
        else:
            spec = self.kernel_spec
            full = await final_env(spec, None)
            # what a pooled launch keeps (see launch_env): every child shows the template's
            base = launch_env(full, spec.env or {}, spec.language, launch_program(spec))
            base["JPY_PARENT_PID"] = str(os.getpid())
        cwd = absolute_cwd(kwargs.get("cwd"))
        argv = _expand_user(cmd)
        return await self._templates.fork(name, argv, cwd, env, base, wait=self._wait)

    async def wait(self) -> int | None:
        if isinstance(self.process, ForkedProcess):
            status = await self.process.wait_exit()
            self.process.close()
            self.process = None
            return status
        return await super().wait()

    async def cleanup(self, restart: bool = False) -> None:
        if isinstance(self.process, ForkedProcess) and self.process.exited():
            self.process.close()
        await super().cleanup(restart=restart)


def _expand_user(cmd: list[str]) -> list[str]:
    """``~`` in a kernelspec's argv, as jupyter_client's ``launch_kernel`` expands it."""
    return [os.path.expanduser(arg) for arg in cmd]


class TemplateKernelManager(PoolProcessManager):  # type: ignore[misc]
    """The pool's manager for a kernel name in fork mode: its kernels are forked.

    The kernelspec is known only once the pool has read it (off the loop), so
    the provisioner is chosen here, at the start: a :class:`ForkProvisioner` if
    a template can reproduce the kernelspec, else the kernelspec's own.
    """

    templates: Templates | None = None

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        templates = self.templates
        if self.provisioner is None and templates is not None:
            spec = self.kernel_spec
            if spec is not None and templates.reproducible(self.kernel_name, spec):
                self.provisioner = ForkProvisioner(
                    templates=templates,
                    wait_for_template=True,
                    kernel_id=self.kernel_id or kw.get("kernel_id"),
                    kernel_spec=spec,
                    parent=self,
                )
        return await super()._async_pre_start_kernel(**kw)
