"""The ``hotpot-km`` command: ``serve``, ``status``, ``kernelspec install/uninstall``.

Jupyter applications (jupyter_core's ``JupyterApp``): configuration from
``hotpot_km_config.py`` / ``.json`` in the Jupyter config path and from
traitlets flags (``--PooledKernelManager.kernel_pools='{"python3": 2}'``),
Jupyter-style logging (``--debug``, ``--log-level``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.utils import ensure_dir_exists, ensure_event_loop
from traitlets import Bool, Dict, Float, Integer, Unicode, default

from .. import __version__, keeper
from ..limited import LimitedKernelManager
from ..pooled import PooledKernelManager
from .host import ServiceKernelManager
from .kernelspec import install, uninstall
from .leases import Leases
from .paths import ServicePaths, open_private
from .server import PoolServer


class HotpotApp(JupyterApp):
    """Shared by the subcommands: version, config file, log format."""

    version = __version__

    @default("config_file_name")
    def _config_file_name_default(self) -> str:
        return "hotpot_km_config"

    @default("log_format")
    def _log_format_default(self) -> str:
        return "[%(levelname)1.1s %(asctime)s.%(msecs)03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _log_datefmt_default(self) -> str:
        return "%H:%M:%S"


def supported() -> str | None:
    """Why the service can't run on this platform, or ``None``."""
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "SO_PEERCRED"):
        return "the pool service needs Linux (pidfd_open and SO_PEERCRED)"
    return None


class ServiceLock:
    """An exclusive lock on ``hotpot-km.lock``, held for the service's whole life."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; if another process holds it, return what it wrote (its pid)."""
        fd = open_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            return holder or "unknown"
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ServeApp(HotpotApp):
    """``hotpot-km serve``."""

    name = "hotpot-km-serve"
    description = """Keep pools of warm kernels and hand them to any Jupyter client of this user.

    Configured like PooledKernelManager (kernel_pools, python_imports,
    initialization_code, kernel_pool_init_<name> files, max_kernels, ...), from
    hotpot_km_config.py/.json in the Jupyter config path or from flags. Clients reach
    it through the hotpot-km-provisioner (see `hotpot-km kernelspec install`)."""
    examples = """hotpot-km serve --PooledKernelManager.kernel_pools='{"python3": 2}'"""
    classes = [ServiceKernelManager, PooledKernelManager, LimitedKernelManager]

    idle_timeout = Float(
        0.0,
        config=True,
        help="""Stop after this many seconds with no kernel handed out and no request
        (0: never). Autostarted services use the kernelspec's idle_timeout.""",
    )
    default_pools = Dict(
        value_trait=Integer(0),
        config=True,
        help="""Kernel pools to keep when the configuration sets no
        PooledKernelManager.kernel_pools (autostart passes the kernel that asked).""",
    )
    read_timeout = Float(
        30.0,
        config=True,
        help="""Seconds a client may take to send a request line; a connection that stalls
        longer gets an error and is closed (clients send each request at once).""",
    )
    exit_if_running = Bool(
        False,
        config=True,
        help="Exit quietly (status 0) when another service already runs for this runtime dir.",
    )

    aliases = {**base_aliases, "idle-timeout": "ServeApp.idle_timeout"}
    flags = dict(base_flags)

    def start(self) -> None:
        super().start()  # --generate-config
        why = supported()
        if why:
            self.log.critical("hotpot-km: %s", why)
            self.exit(1)
        paths = ServicePaths(self.runtime_dir)
        try:
            paths.check()
            ensure_dir_exists(self.runtime_dir, 0o700)
            paths.check_private()
            lock = ServiceLock(paths.lock)
            holder = lock.acquire()
        except OSError as error:
            self.log.critical("hotpot-km: %s", error)
            self.exit(1)
        if holder is not None:
            if self.exit_if_running:
                self.log.info("hotpot-km: a service already runs (pid %s)", holder)
                return
            self.log.critical(
                "hotpot-km: another pool service runs for %s (pid %s)", paths.socket, holder
            )
            self.exit(1)
        try:
            if self.default_pools and "kernel_pools" not in self.config.PooledKernelManager:
                self.config.PooledKernelManager.kernel_pools = dict(self.default_pools)
            manager = ServiceKernelManager(parent=self, log=self.log)  # may fill its pools first
            service = Service(manager, paths, self.idle_timeout, self.log, self.read_timeout)
            ensure_event_loop().run_until_complete(service.run())
        finally:
            lock.release()


class Service:
    """A running pool service: the engine's host, the leases and the socket."""

    def __init__(
        self,
        manager: ServiceKernelManager,
        paths: ServicePaths,
        idle_timeout: float,
        log: Any,
        read_timeout: float = 30.0,
    ) -> None:
        self.manager = manager
        self.paths = paths
        self.idle_timeout = idle_timeout
        self.log = log
        self.leases = Leases(log)
        info = {
            "pid": os.getpid(),
            "version": __version__,
            "socket": paths.socket,
            "started": time.time(),
            "idle_timeout": idle_timeout,
        }
        self.server = PoolServer(manager, self.leases, paths.socket, log, info, read_timeout)
        self._stop: asyncio.Event | None = None
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:  # asked twice: no more waiting, kill every kernel now
            self.log.warning(
                "hotpot_km: second %s; killing every kernel", signal.Signals(signum).name
            )
            keeper.kill_all()  # pooled and leased kernels alike
            os._exit(128 + signum)
        self.log.info("hotpot_km: %s received; stopping", signal.Signals(signum).name)
        assert self._stop is not None
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self.manager.kernel_pool.start()
        self.leases.start()
        try:
            await self.server.start()
            self.log.info(
                "hotpot_km: serving kernel pools %s on %s",
                json.dumps(dict(self.manager.kernel_pools)),
                self.paths.socket,
            )
            if not any(self.manager.kernel_pools.values()):
                self.log.warning(
                    "hotpot_km: no kernel_pools configured (PooledKernelManager.kernel_pools); "
                    "every start will be cold"
                )
            await self._until_stopped()
        finally:
            await self.server.close()
            await self.leases.close()
            await self.manager.shutdown_all(now=True)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.log.info("hotpot_km: the pool service stopped; no kernel is left")

    async def _until_stopped(self) -> None:
        assert self._stop is not None
        check = min(max(self.idle_timeout / 4, 0.5), 5.0) if self.idle_timeout > 0 else None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), check)
            if self._stop.is_set():
                return
            idle = time.monotonic() - self.server.last_activity
            if self.leases.running() == 0 and idle >= self.idle_timeout:
                self.log.info("hotpot_km: idle for %.0f s; stopping", idle)
                return


class KernelSpecInstallApp(HotpotApp):
    """``hotpot-km kernelspec install``."""

    name = "hotpot-km-kernelspec-install"
    description = """Install a kernelspec that is an existing one (default python3) plus the
    hotpot-km-provisioner, so every Jupyter client that starts it gets a warm kernel from
    the pool service. By default it takes the existing spec's place where Jupyter looks
    first: in a virtual or conda environment (JUPYTER_PREFER_ENV_PATH on, jupyter_core's
    default there) the environment's share/jupyter/kernels, else the user's kernel
    directory; `hotpot-km kernelspec uninstall` puts things back."""
    examples = """hotpot-km kernelspec install
    hotpot-km kernelspec install python3 --as python3-warm --sys-prefix
    hotpot-km kernelspec install --autostart --idle-timeout=900"""

    kernel_name = Unicode("python3", help="The kernelspec to wrap.")
    user = Bool(
        False,
        config=True,
        help="Install into the user's kernel directory, not where Jupyter looks first.",
    )
    prefix = Unicode("", config=True, help="Install into PREFIX/share/jupyter/kernels.")
    as_name = Unicode("", config=True, help="Install under this name instead of taking its place.")
    autostart = Bool(
        False,
        config=True,
        help="Let the first start of this kernel start the pool service in the background.",
    )
    idle_timeout = Float(
        600.0, config=True, help="Seconds an autostarted service stays up with nothing to do."
    )

    aliases = {
        **base_aliases,
        "prefix": "KernelSpecInstallApp.prefix",
        "as": "KernelSpecInstallApp.as_name",
        "idle-timeout": "KernelSpecInstallApp.idle_timeout",
    }
    flags = {
        **base_flags,
        "user": (
            {"KernelSpecInstallApp": {"user": True}},
            "Install into the user's kernel directory.",
        ),
        "sys-prefix": (
            {"KernelSpecInstallApp": {"prefix": sys.prefix}},
            "Install into Python's sys.prefix (this virtual or conda environment).",
        ),
        "autostart": (
            {"KernelSpecInstallApp": {"autostart": True}},
            "Start the pool service on first use.",
        ),
    }

    def parse_command_line(self, argv: Any = None) -> None:
        super().parse_command_line(argv)
        if self.extra_args:
            self.kernel_name = self.extra_args[0]

    def start(self) -> None:
        if self.user and self.prefix:
            self.exit("hotpot-km: choose either --user or --prefix/--sys-prefix")
        try:
            done = install(
                self.kernel_name,
                prefix=self.prefix or None,
                user=self.user,
                as_name=self.as_name or None,
                autostart=self.autostart,
                idle_timeout=self.idle_timeout,
            )
        except Exception as error:
            print(f"hotpot-km: {type(error).__name__}: {error}", file=sys.stderr)
            self.exit(1)
        print(f"Installed kernelspec {done.name} in {done.path} (from {done.wraps})")
        if done.replaced:
            print(
                "The kernelspec it replaced is kept; `hotpot-km kernelspec uninstall` puts it back."
            )
        if done.resolves_to and os.path.realpath(done.resolves_to) != os.path.realpath(done.path):
            print(
                f"Warning: {done.name!r} still resolves to {done.resolves_to}, which comes first "
                "in the kernel search path (see `jupyter --paths`), so Jupyter clients will not "
                "use the pool: install without --user/--prefix to install there, or change the "
                "path (JUPYTER_PATH, JUPYTER_PREFER_ENV_PATH).",
                file=sys.stderr,
            )
        elif done.resolves_to:
            print(f"Jupyter clients starting {done.name!r} now use this kernelspec.")


class KernelSpecUninstallApp(HotpotApp):
    """``hotpot-km kernelspec uninstall``."""

    name = "hotpot-km-kernelspec-uninstall"
    description = """Remove a kernelspec installed by `hotpot-km kernelspec install`, putting
    back the one it replaced."""
    kernel_name = Unicode("python3")
    prefix = Unicode("", config=True, help="Uninstall from PREFIX/share/jupyter/kernels.")
    user = Bool(False, config=True, help="Uninstall from the user's kernel directory.")
    aliases = {**base_aliases, "prefix": "KernelSpecUninstallApp.prefix"}
    flags = {
        **base_flags,
        "user": (
            {"KernelSpecUninstallApp": {"user": True}},
            "Uninstall from the user's kernel directory, not the install Jupyter finds first.",
        ),
        "sys-prefix": (
            {"KernelSpecUninstallApp": {"prefix": sys.prefix}},
            "Uninstall from Python's sys.prefix.",
        ),
    }

    def parse_command_line(self, argv: Any = None) -> None:
        super().parse_command_line(argv)
        if self.extra_args:
            self.kernel_name = self.extra_args[0]

    def start(self) -> None:
        try:
            print(uninstall(self.kernel_name, prefix=self.prefix or None, user=self.user))
        except (OSError, ValueError) as error:
            print(f"hotpot-km: {error}", file=sys.stderr)
            self.exit(1)


class KernelSpecApp(HotpotApp):
    """``hotpot-km kernelspec``."""

    name = "hotpot-km-kernelspec"
    description = "Install or uninstall kernelspecs that use the pool service."
    subcommands = {
        "install": (KernelSpecInstallApp, KernelSpecInstallApp.description.splitlines()[0]),
        "uninstall": (KernelSpecUninstallApp, KernelSpecUninstallApp.description.splitlines()[0]),
    }

    def start(self) -> None:
        super().start()  # runs the subcommand
        print(f"Specify a subcommand: {', '.join(self.subcommands)}", file=sys.stderr)
        self.exit(1)
