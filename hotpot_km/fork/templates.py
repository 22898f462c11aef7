"""The fork templates of one manager: at most one per kernel name.

A template is started on the first start of a kernel name in fork mode and
lives until the manager shuts down, and is replaced when it dies or when the
pool's own launches change what it fixed (interpreter, startup-only env,
imports, the init files' imports). It is not a kernel: ``max_kernels`` does not
count it (its process group is registered with the keeper all the same). When a
template can't be had (the kernelspec is not one it can reproduce, it refused),
starts launch as usual, and the reason is logged once. When only the init files'
imports make it refuse, it is started again without them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from ..budget import KernelBudget, Slot
from ..languages import PYTHON
from ..pool.leftovers import Leftovers
from ..tasks import OwnedTasks
from .hoisting import describe, init_file_imports
from .host import ForkedProcess, TemplateError, TemplateKey, TemplateProcess, kernel_command

#: Deaths of a template (of the same key) after which fork mode gives up on that name.
MAX_DEATHS = 3


class ForkHost(Protocol):
    """What the templates need from the manager that owns them."""

    log: logging.Logger | logging.LoggerAdapter[Any]
    fork_from_template: Mapping[str, bool]
    kernel_pools: Mapping[str, Any]
    fork_by_default: bool  # names with a pool fork unless fork_from_template says otherwise
    python_imports: Sequence[str]
    startup_timeout: float
    init_timeout: float


@dataclass(eq=False)
class _Entry:
    """The current template of a kernel name, starting or running."""

    key: TemplateKey
    template: TemplateProcess | None = None
    task: asyncio.Task[TemplateProcess | None] | None = None
    ready: bool = False


@dataclass
class _History:
    key: TemplateKey | None = None
    deaths: int = 0
    refused: str | None = None
    dropped: str | None = None  # why this key's template goes without the init files' imports
    logged: set[str] = field(default_factory=set)


class Templates:
    """Starts, hands out, replaces and stops the templates of one manager."""

    def __init__(self, host: ForkHost, leftovers: Leftovers | None = None) -> None:
        self._host = host
        # a host dropped without shutdown_all(): its templates are killed with its pool's kernels
        self._leftovers = leftovers
        # not max_kernels': a template is no kernel; its slot registers its group with the keeper
        self._budget = KernelBudget(lambda: 0)
        self._entries: dict[str, _Entry] = {}
        self._history: dict[str, _History] = {}
        self._slots: dict[TemplateProcess, Slot] = {}
        self._live: set[TemplateProcess] = set()
        self._tasks = OwnedTasks("hotpot_km template")
        self.closed = False

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        return self._host.log

    def enabled(self, name: str) -> bool:
        """Whether kernels of ``name`` are forked (see ``fork_from_template``)."""
        config = self._host.fork_from_template
        if name in config:
            return bool(config[name])
        if "*" in config:
            return bool(config["*"])
        return self._host.fork_by_default and name in self._host.kernel_pools

    def _explicit(self, name: str) -> bool:
        """Whether the user asked for fork mode for ``name`` itself (else: by default)."""
        return bool(self._host.fork_from_template.get(name))

    # -- can this kernel be forked at all? -----------------------------------------------------

    def reproducible(self, name: str, spec: KernelSpec) -> bool:
        """Whether a template can start what ``spec`` starts (else: logged once, launched)."""
        reason = self._unreproducible(spec)
        if reason is not None:
            self._note(name, reason)
            return False
        return True

    @staticmethod
    def _unreproducible(spec: KernelSpec) -> str | None:
        if (spec.language or "").lower() != "python":
            return f"its kernelspec's language is {spec.language!r}, not Python"
        if kernel_command(spec.argv) is None:
            shown = " ".join(spec.argv)
            return (
                f"its kernelspec's argv ({shown}) is not '<python> [flags] -m ipykernel_launcher …'"
            )
        provisioner = (spec.metadata or {}).get("kernel_provisioner")
        factory = KernelProvisionerFactory.instance()
        name = (provisioner or {}).get("provisioner_name", factory.default_provisioner_name)
        if name != "local-provisioner" or (provisioner or {}).get("config"):
            return f"its kernelspec is started by the {name!r} provisioner"
        return None

    # -- forking -------------------------------------------------------------------------------

    async def fork(
        self,
        name: str,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str],
        base_env: Mapping[str, str],
        *,
        wait: bool,
    ) -> ForkedProcess | None:
        """Fork the kernel ``argv`` describes, or ``None``: launch it instead.

        ``base_env`` is the env the template is started with if there is none yet
        (never a request's own: /proc/<pid>/environ of every child shows it).
        ``wait``: wait for a template that is starting (the pool's refills) rather
        than launch (a request in front of a user); at most half of
        ``startup_timeout``, so a slow template never fails a refill: past that,
        the kernel is launched and later refills fork.
        """
        if self.closed or not self.enabled(name):
            return None
        missing = unsupported()
        if missing is not None:
            self._note(name, missing)
            return None
        split = kernel_command(argv)
        if split is None:
            self._note(name, "the command to start is not '<python> -m ipykernel_launcher …'")
            return None
        imports = tuple(self._host.python_imports)
        hoisted = await asyncio.to_thread(init_file_imports, name)
        key = TemplateKey(tuple(split[0]), startup_values(env), imports, hoisted)
        template = await self._template(name, key, cwd, base_env, argv, wait=wait)
        if template is None:
            return None
        if any(env.get(k) != v for k, v in template.launch_env.items()):
            # a child's process env is the template's: only for starts whose env holds it
            return None
        try:
            return await template.fork(argv, cwd, env, timeout=self._host.startup_timeout)
        except TemplateError as error:
            self.log.warning(
                "hotpot_km: forking a %r kernel failed (%s); launching it instead", name, error
            )
            return None

    async def _template(
        self,
        name: str,
        key: TemplateKey,
        cwd: str,
        env: Mapping[str, str],
        argv: Sequence[str],
        *,
        wait: bool,
    ) -> TemplateProcess | None:
        entry = self._entries.get(name)
        if entry is not None and entry.key != key:
            if not wait:
                return None  # a request with other startup-only values: launched
            self._retire(name)  # the pool's own launches changed: a new template
            entry = None
        if entry is None:
            base = dict(env)
            if startup_values(base) != key.startup_env:
                return None  # the request's startup values are not the pool's: launched
            history = self._history.setdefault(name, _History())
            if history.key != key:
                history.key, history.deaths, history.refused, history.dropped = key, 0, None, None
            if history.refused is not None:
                return None
            room = len(b"\0".join(os.fsencode(a) for a in argv)) + 1024
            entry = self._begin(name, key, cwd, base, room)
            if entry is None:
                return None
        if entry.ready and entry.template is not None and entry.template.alive:
            return entry.template
        if not wait or entry.task is None:
            return None
        task = entry.task
        try:
            template = await asyncio.wait_for(asyncio.shield(task), self._host.startup_timeout / 2)
        except asyncio.TimeoutError:
            self.log.debug("hotpot_km: the fork template for %r is still starting", name)
            return None
        except asyncio.CancelledError:
            if task.cancelled():  # retired meanwhile, not our caller's cancellation
                return None
            raise
        return template if template is not None and template.alive else None

    def _begin(
        self, name: str, key: TemplateKey, cwd: str, env: dict[str, str], room: int
    ) -> _Entry | None:
        entry = _Entry(key)
        self._entries[name] = entry
        entry.task = self._spawn(self._start(name, entry, cwd, env, room), name)
        return entry

    async def _start(
        self, name: str, entry: _Entry, cwd: str, env: dict[str, str], room: int
    ) -> TemplateProcess | None:
        """Start the template of ``entry``; without the init files' imports if they fail."""
        history = self._history.setdefault(name, _History())
        key = entry.key
        if history.dropped is not None:
            key = dataclasses.replace(key, hoisted=())
        while True:
            try:
                template = await self._start_one(name, entry, key, cwd, env, room)
            except TemplateError as error:
                if error.stage == "hoisted" and key.hoisted:
                    history.dropped = str(error)
                    self.log.warning(
                        "hotpot_km: the fork template for %r kernels can't import what its "
                        "init files import (%s): %s. It serves with python_imports alone; the "
                        "init files still import those modules in each kernel.",
                        name,
                        describe(key.hoisted),
                        error,
                    )
                    key = dataclasses.replace(key, hoisted=())
                    continue
                history.refused = str(error)
                if history.refused not in history.logged:
                    history.logged.add(history.refused)
                    self.log.log(
                        logging.ERROR if self._explicit(name) else logging.WARNING,
                        "hotpot_km: the fork template for %r kernels failed: %s. Kernels of %r "
                        "are launched instead.",
                        name,
                        error,
                        name,
                    )
                self._forget(name, entry)
                return None
            except BaseException:
                self._forget(name, entry)
                raise
            entry.ready = True
            self.log.info(
                "hotpot_km: fork template for %r kernels ready (pid %s)", name, template.pid
            )
            return template

    async def _start_one(
        self, name: str, entry: _Entry, key: TemplateKey, cwd: str, env: dict[str, str], room: int
    ) -> TemplateProcess:
        slot = self._budget.try_take()
        assert slot is not None  # an unlimited budget
        # the slot registers the template's process group with the host's keeper
        template = TemplateProcess(name, key, self.log, self._exited, on_spawn=slot.bind)
        entry.template = template
        self._slots[template] = slot
        self._live.add(template)
        timeout = self._host.startup_timeout + self._host.init_timeout
        try:
            await template.start(cwd, env, room, timeout)
        except BaseException:
            if template.process is None:
                self._release(template)
            raise
        if self._leftovers is not None and template.process is not None and template.socket:
            self._leftovers.add_template(template.process, template.socket)
        return template

    def _exited(self, template: TemplateProcess, status: int | None) -> None:
        """A template process is gone (stopped or died): free its slot, replace it on demand."""
        self._release(template)
        if self._leftovers is not None:
            self._leftovers.forget_template(template.pid)
        entry = self._entries.get(template.name)
        # one that exits while starting is its start's to handle (it may start another)
        if entry is not None and entry.template is template and entry.ready:
            self._forget(template.name, entry)
            if not template.stopping and not self.closed:
                history = self._history.setdefault(template.name, _History())
                history.deaths += 1
                if history.deaths >= MAX_DEATHS:
                    history.refused = f"it exited {history.deaths} times"
                self.log.warning(
                    "hotpot_km: the fork template for %r kernels exited (status %s); the kernels "
                    "it forked keep running. %s",
                    template.name,
                    status,
                    f"Kernels of {template.name!r} are launched from now on."
                    if history.refused
                    else "The next start of one starts a new template.",
                )

    def _release(self, template: TemplateProcess) -> None:
        self._live.discard(template)
        slot = self._slots.pop(template, None)
        if slot is not None:
            slot.release()

    def _forget(self, name: str, entry: _Entry) -> None:
        if self._entries.get(name) is entry:
            del self._entries[name]

    def _retire(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        if entry.template is not None:
            self._spawn(entry.template.aclose(), name)

    def _note(self, name: str, reason: str) -> None:
        """Why ``name``'s kernels are launched, once per reason: a warning if the user asked
        for fork mode for it, else (fork mode by default) an info line."""
        history = self._history.setdefault(name, _History())
        if reason not in history.logged:
            history.logged.add(reason)
            if self._explicit(name):
                self.log.warning(
                    "hotpot_km: fork_from_template[%r] is set, but %s; its kernels are "
                    "launched instead",
                    name,
                    reason,
                )
            else:
                self.log.info(
                    "hotpot_km: %r kernels are launched, not forked from a template: %s",
                    name,
                    reason,
                )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    # -- shutdown ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop every template (the kernels they forked are their owners' to stop)."""
        self.closed = True
        for name in list(self._entries):
            self._retire(name)
        await self._tasks.join()


@functools.cache
def unsupported() -> str | None:
    """Why fork mode can't work on this system, or ``None``: it needs pidfds (Linux ≥ 5.3)."""
    if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
        return "fork mode needs Linux (pidfds, Linux 5.3 or later)"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as error:
        return f"fork mode needs pidfds (Linux 5.3 or later): {error}"
    return None


def startup_values(env: Mapping[str, str]) -> tuple[tuple[str, str | None], ...]:
    """The variables a Python process reads only at start, as a template fixes them."""
    return tuple((k, env.get(k)) for k in sorted(PYTHON.startup_env))
