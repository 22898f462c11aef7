"""Pooled kernels as processes on this machine: launched by a plain
``AsyncKernelManager``, handed to a provisioner, and waited for until really gone."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerBase

from .. import keeper, priority
from ..budget import Slot
from ..compat.jupyter_client import encryption_policy, let_go, set_kernel_spec
from ..kernel_io import close_client
from ..langs import handout as handout_file
from ..languages import kernel_language, preparation_for
from ..pool.model import HandedOut
from ..priority import ProcessPriority
from ..request import (
    LaunchRequest,
    absolute_cwd,
    final_env,
    fixed_options,
    launch_env,
    launch_program,
)

if TYPE_CHECKING:
    from ..pool.engine import KernelPool


class PoolProcessManager(AsyncKernelManager):  # type: ignore[misc]
    """Manages one pooled process until handout. Its slot learns the process group in the
    launch step itself, and the launch is marked with its connection file until then, so a
    host killed during or right after a launch can't leave the kernel behind (see
    :mod:`hotpot_km.keeper`)."""

    slot: Slot | None = None
    #: names of the variables the process is launched with (see :func:`launch_env`); the
    #: rest of the pool's env reaches the kernel with its handout. ``None``: all of it.
    launch_keys: frozenset[str] | None = None

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if self.launch_keys is not None and kw.get("env") is not None:
            kw["env"] = {k: v for k, v in kw["env"].items() if k in self.launch_keys}
        with keeper.launching(self.connection_file):
            await super()._async_launch_kernel(kernel_cmd, **kw)
            if self.slot is not None:
                self.slot.bind(process_group(self.provisioner))


class LocalKernelAdapter:
    """A pooled kernel process on this machine, started by a plain ``AsyncKernelManager``
    (no restarter, no server bookkeeping or events) and handed to a provisioner."""

    def __init__(self, pool: KernelPool, manager: PoolProcessManager) -> None:
        self.pool = pool
        self.manager = manager
        manager.context = pool.zmq_context()  # one context for all pooled kernels
        self.priority: ProcessPriority | None = None
        self._start_kwargs: dict[str, Any] = {}
        self._client: AsyncKernelClient | None = None
        self._handed: KernelProvisionerBase | None = None  # the process's, once handed out
        #: where a language that is handed out through a file exchanges it with the kernel
        self.handout_path: str | None = None

    async def prepare(self, kwargs: dict[str, Any]) -> tuple[LaunchRequest, str | None]:
        spec = await self.pool.spec(self.manager.kernel_name)
        env = kwargs.pop("env", None)
        cwd = absolute_cwd(kwargs.pop("cwd", None))
        full = await final_env(spec, env)
        language = kernel_language(spec.language, spec.argv)
        process = launch_env(full, spec.env or {}, language, launch_program(spec))
        self.manager.launch_keys = frozenset(process)
        launch = LaunchRequest(
            self.manager.kernel_name,
            cwd,
            process,
            fixed_options(kwargs),
            encryption_policy(self.manager, kwargs.get("transport_encryption")),
            warmup_env=full,
        )
        set_kernel_spec(self.manager, spec)  # already read off the loop
        start_env = dict(os.environ if env is None else env)
        prep = preparation_for(language)
        if prep is not None and prep.handout_by_file:
            self.handout_path = await asyncio.to_thread(handout_file.new_handout_path)
            start_env[handout_file.HANDOUT_FILE_VAR] = self.handout_path
            # the pool's own exchange with the kernel: launched with it, gone at handout
            self.manager.launch_keys |= {handout_file.HANDOUT_FILE_VAR}
        self._start_kwargs = {"cwd": cwd, "env": start_env, **kwargs}
        return launch, language

    async def start(self, timeout: float, slot: Slot) -> AsyncKernelClient:
        cwd = self._start_kwargs["cwd"]
        await asyncio.to_thread(_check_program, self.manager.format_kernel_cmd, cwd)
        await keeper.ensure_running()
        self.manager.slot = slot  # bound to the process group in the launch step itself
        await asyncio.wait_for(self.manager.start_kernel(**self._start_kwargs), timeout)
        process = getattr(self.manager.provisioner, "process", None)
        self.pool.leftovers.add(process, self.manager.connection_file)
        pid = self.pid
        if pid is not None:
            self.priority = ProcessPriority(pid)
        client = self.manager.client(context=self.pool.zmq_context())
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        self._client = client
        return client

    def watch_statuses(self) -> zmq.asyncio.Socket:
        return subscribe_statuses(self.manager)

    async def is_alive(self) -> bool:
        if self._handed is not None:  # the host's manager owns it now: ask its process
            return await self._handed.poll() is None
        return bool(await self.manager.is_alive())

    async def check_cwd(self, cwd: str) -> None:
        await asyncio.to_thread(check_cwd, cwd)

    def close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close_client(client)

    def detach(self, slot: Slot) -> HandedOut:
        manager = self.manager
        provisioner = manager.provisioner
        assert provisioner is not None
        self.pool.leftovers.forget(getattr(provisioner, "pid", None))
        handed = HandedOut(
            provisioner=provisioner,
            connection_info=dict(manager.get_connection_info()),
            connection_file=manager.connection_file,
            cmd=list(manager.format_kernel_cmd()),
            slot=slot,
        )
        # The pool's manager must neither signal the process nor delete the
        # connection file the kernel was started with once it is collected.
        let_go(manager)
        self._handed = provisioner
        return handed

    async def shutdown(self) -> None:
        provisioner = self.manager.provisioner
        if self.priority is not None and self.priority.restore():
            # a process exits on its own threads: at idle priority on a busy machine that
            # could take long, so it dies at normal priority
            await asyncio.to_thread(priority.restore_process, self.priority.pid)
        try:
            if self.manager.has_kernel:
                await self.manager.shutdown_kernel(now=True)
            else:
                await self.manager.cleanup_resources()
        finally:
            await until_gone(provisioner, self.pool.log)
            self.pool.leftovers.forget(getattr(provisioner, "pid", None))
            if self.handout_path is not None:
                await asyncio.to_thread(handout_file.discard, self.handout_path)

    @property
    def pid(self) -> int | None:
        return getattr(self.manager.provisioner or self._handed, "pid", None)


def check_cwd(path: str) -> None:
    """Fail like a cold start's ``Popen(cwd=...)`` would, before anything is sent."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, "kernel working directory does not exist", path) from None
    except PermissionError:
        raise OSError(errno.EACCES, "kernel working directory is not accessible", path) from None
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "kernel working directory is not a directory", path)
    if not os.access(path, os.X_OK):
        raise OSError(errno.EACCES, "kernel working directory is not accessible", path)


def _check_program(format_cmd: Callable[[], list[str]], cwd: str) -> None:
    """Fail like ``Popen`` would for a kernelspec whose program does not exist."""
    program = format_cmd()[0]
    if os.sep in program:
        found = os.path.isfile(os.path.join(cwd, os.path.expanduser(program)))
    else:
        found = shutil.which(program) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def subscribe_statuses(manager: AsyncKernelManager) -> zmq.asyncio.Socket:
    """An IOPub socket for the kernel's own topics (``kernel.<ident>.status``...): the pool
    sees its execution state without receiving anyone's output."""
    socket = manager.connect_iopub()
    socket.setsockopt(zmq.UNSUBSCRIBE, b"")
    socket.setsockopt(zmq.SUBSCRIBE, b"kernel.")
    return socket


async def see_out(
    provisioner: KernelProvisionerBase,
    files: Iterable[str],
    grace: float,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Give a process ``grace`` seconds to exit, then end it (:func:`until_gone`), clean its
    provisioner up and remove its ``files``: what the pool awaits before freeing the slot of
    a process it retires (:meth:`~hotpot_km.pool.ownership.Endings.retire`)."""
    try:
        if grace > 0:
            try:
                await asyncio.wait_for(provisioner.wait(), grace)
            except asyncio.TimeoutError:
                pass
        await until_gone(provisioner, log)
        try:
            await provisioner.cleanup(restart=False)
        except Exception:
            log.warning("hotpot_km: error cleaning up a retired kernel", exc_info=True)
    finally:
        remove_files(files)


async def until_gone(
    provisioner: KernelProvisionerBase | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Return once the provisioner's process is gone (reaped), SIGKILLing it every second
    meanwhile. jupyter_client's own shutdown stops waiting after a few seconds and carries
    on; a kernel's slot must not be freed before its process is really gone."""
    if provisioner is None:
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_kill = started
    warned = False
    while True:
        try:
            if not provisioner.has_process or await provisioner.poll() is not None:
                return
            if loop.time() >= next_kill:
                await provisioner.kill()
                next_kill = loop.time() + 1.0
        except Exception:
            log.debug("hotpot_km: error waiting for a kernel process to end", exc_info=True)
        if not warned and loop.time() - started > 10:
            warned = True
            log.warning(
                "hotpot_km: kernel process %s is still alive 10 s after SIGKILL; it keeps its "
                "place under max_kernels until it is gone",
                getattr(provisioner, "pid", None),
            )
        await asyncio.sleep(0.05)


def process_group(provisioner: KernelProvisionerBase | None) -> int | None:
    """The process group of a local kernel process that is still running, if known
    (jupyter_client starts local kernels in a session, hence a group, of their own)."""
    process = getattr(provisioner, "process", None)
    if process is None or process.poll() is not None:
        return None
    return getattr(provisioner, "pgid", None) or process.pid


def remove_files(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError:
            logging.getLogger(__name__).debug("could not remove %s", path, exc_info=True)
