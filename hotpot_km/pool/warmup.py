"""A new kernel's warm-up: start it and run the bootstrap, imports, configured code and
init files, at idle CPU priority while nobody waits for it; back off after failures."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_config_path

from .. import priority
from ..kernel_io import KernelCodeError, KernelDiedError, request_reply, run_code
from ..langs import handout as handout_file
from ..languages import Preparation, init_file_extension, preparation_for
from .backoff import Severity
from .model import PooledKernel, PoolSettings, WarmupError
from .settling import bootstrap_data, dump_env_by_stdin
from .state import PoolState

#: The source name of the bootstrap step (in warm-up errors).
BOOTSTRAP = "hotpot_km bootstrap"


class Warmup(PoolState):
    """Brings a launched kernel to ready, or ends it and records why not."""

    async def _warm(self, kernel: PooledKernel) -> None:
        settings = self._host.pool_settings()
        loop = asyncio.get_running_loop()
        source = "kernel start"
        try:
            kwargs = dict(settings.launch_kwargs.get(kernel.name, {}))
            kernel.launch, kernel.language = await kernel.adapter.prepare(kwargs)
            kernel.prepared.set()
            self._templates[kernel.name] = (kernel.launch, kernel.language)
            began, still = loop.time(), kernel.stood_still()
            client = await kernel.adapter.start(settings.startup_timeout, kernel.slot)
            kernel.client = client
            prio = kernel.adapter.priority
            if prio is not None and not kernel.claimed and await self._may_lower(kernel, settings):
                prio.lower()  # threads it starts from now on inherit it
            self.pauses.pause(kernel, settings.refill_pause)  # if a handed-out kernel settles now
            kernel.statuses = kernel.adapter.watch_statuses()
            alive = kernel.adapter.is_alive
            reply = await request_reply(
                client,
                "kernel_info_request",
                {},
                timeout=settings.startup_timeout,
                is_alive=alive,
                resend_every=1.0,
                stood_still=kernel.stood_still,  # its timeouts don't count a pause
            )
            # what a cold start takes: the bound of a start's wait for a warming kernel
            took = loop.time() - began - (kernel.stood_still() - still)
            self._start_seconds.setdefault(kernel.name, deque(maxlen=10)).append(took)
            deadline, before = loop.time() + settings.init_timeout, kernel.stood_still()
            prep = preparation_for(kernel.language)
            steps = await self._warmup_steps(kernel, settings, reply["content"])
            for step, code, data, user in steps:
                source = step
                left = deadline + kernel.stood_still() - before - loop.time()
                if left <= 0:
                    raise TimeoutError
                if user and prep is not None:
                    await run_init_step(kernel, prep, code, left)
                    continue
                if step == BOOTSTRAP and prep is not None and prep.stdin:
                    kernel.started_env = await dump_env_by_stdin(
                        client, prep, timeout=left, is_alive=alive, stood_still=kernel.stood_still
                    )
                    continue
                if data is not None and prep is not None and prep.handout_by_file:
                    # such a kernel reads its step's data from a file, not the metadata
                    await write_step_data(kernel, data)
                    data = None
                await run_code(
                    client,
                    code,
                    timeout=left,
                    is_alive=alive,
                    data=data,
                    stood_still=kernel.stood_still,
                )
            if prio is not None:
                await prio.lower_all()
        except asyncio.CancelledError:
            kernel.ready.cancel()
            await asyncio.shield(self.endings.end(kernel))
            raise
        except Exception as error:
            self._warmup_failed(kernel, source, error, settings)
            kernel.ready.set_exception(WarmupError(self.backoff.last_error(kernel.name) or ""))
            kernel.ready.exception()  # retrieved: waiters re-raise it their own way
            await asyncio.shield(self.endings.end(kernel))
        else:
            if self.backoff.succeeded(kernel.name):
                self.log.info("hotpot_km: %r kernels warm up again", kernel.name)
            kernel.ready_since = self.sizing.clock()
            kernel.ready.set_result(None)
            self.observer.warmup_succeeded(kernel.name, kernel.ready_since - kernel.launched)
            self.log.debug("hotpot_km: pooled %r kernel ready", kernel.name)
        finally:
            self.kernels.warmed(kernel)
            self._wake_filler()

    async def _may_lower(self, kernel: PooledKernel, settings: PoolSettings) -> bool:
        """Whether a new warm-up may run at idle CPU priority: nobody waits for it, requests
        don't come as a stream (see Filling._pressed), and it can be brought back before handout."""
        if not settings.idle_priority or self._waiters or self._pressed(kernel.name):
            return False
        return await asyncio.to_thread(priority.can_restore)

    def _normal_priority(self, kernel: PooledKernel) -> None:
        """Back to normal CPU priority: someone waits for this kernel, or it is handed out."""
        self.pauses.resume(kernel)
        prio = kernel.adapter.priority
        if prio is None or not prio.restore():
            return
        if not kernel.ready.done():
            # still warming: threads it started since launch inherited SCHED_IDLE
            restore = asyncio.to_thread(priority.restore_process, prio.pid)
            kernel.restoring = self._spawn(restore, "restore priority")

    async def _at_normal_priority(self, kernel: PooledKernel) -> None:
        """:meth:`_normal_priority`, and wait until every thread of the kernel is back."""
        self._normal_priority(kernel)
        if kernel.restoring is not None:
            await kernel.restoring

    async def _warmup_steps(
        self, kernel: PooledKernel, settings: PoolSettings, info: Mapping[str, Any]
    ) -> list[tuple[str, str, Any, bool]]:
        """(source, code, data, user's code) in the documented order: imports, configured
        code, init files."""
        assert kernel.launch is not None
        steps: list[tuple[str, str, Any, bool]] = []
        prep = preparation_for(kernel.language)
        if prep is not None:
            data = None if prep.apply else bootstrap_data(kernel.launch)
            steps.append((BOOTSTRAP, prep.bootstrap, data, False))
            if settings.python_imports and prep.import_modules:
                modules = list(settings.python_imports)
                steps.append(("python_imports", prep.import_modules, {"modules": modules}, False))
        code = settings.initialization_code.get(kernel.name)
        if code:
            steps.append((f"initialization_code[{kernel.name!r}]", code, None, True))
        reported = (info.get("language_info") or {}).get("file_extension")
        extension = init_file_extension(kernel.language, reported)
        if extension:
            for path, text in await asyncio.to_thread(_read_init_files, kernel.name, extension):
                steps.append((path, text, None, True))
        return steps

    def _warmup_failed(
        self, kernel: PooledKernel, source: str, error: Exception, settings: PoolSettings
    ) -> None:
        """Log a failure once per cause and push the next warm-up of this name back."""
        if isinstance(error, KernelCodeError):
            cause = error.summary()
        elif isinstance(error, (asyncio.TimeoutError, TimeoutError)):
            limit = settings.init_timeout if source != "kernel start" else settings.startup_timeout
            cause = f"timed out after {limit:g} s"
        elif isinstance(error, KernelDiedError):
            cause = "the kernel process exited"
        else:
            cause = f"{type(error).__name__}: {error}"
        message = f"warm-up of a pooled {kernel.name!r} kernel failed in {source}: {cause}"
        # a death at start of a name that started fine: most likely a port taken meanwhile
        died_at_start = (
            isinstance(error, KernelDiedError)
            and source == "kernel start"
            and bool(self._start_seconds.get(kernel.name))
        )
        now = asyncio.get_running_loop().time()
        delay, severity = self.backoff.failed(
            kernel.name, message, now, settings.max_retry_delay, died_at_start=died_at_start
        )
        if severity is Severity.FORGIVEN:  # neither wait_full() nor a request gives up on it
            self.log.warning(
                "hotpot_km: %s (its kernels started before; a port taken meanwhile by another "
                "process does this). Retrying in %.1f s.",
                message,
                delay,
            )
        elif severity is Severity.NEW:
            self.log.error(
                "hotpot_km: %s. The kernel was shut down and is never handed out; "
                "retrying with back-off (next in %.1f s).",
                message,
                delay,
            )
        else:
            attempt = self.backoff.failures(kernel.name)
            self.log.debug("hotpot_km: %s (again, attempt %d)", message, attempt)
        self.observer.warmup_failed(kernel.name, warmup_step(source), message)


async def run_init_step(kernel: PooledKernel, prep: Preparation, code: str, timeout: float) -> None:
    """Run one init step (``initialization_code`` or an init file) the way ``prep`` lets
    the pool see it fail: through its ``run_init`` and a file, or non-silently. Raises
    :class:`KernelCodeError` if it failed, even where the kernel answered ``ok``."""
    assert kernel.client is not None
    run = functools.partial(
        run_code,
        kernel.client,
        timeout=timeout,
        is_alive=kernel.adapter.is_alive,
        stood_still=kernel.stood_still,
        silent=prep.init_silent,
    )
    path = getattr(kernel.adapter, "handout_path", None)
    if not prep.run_init or path is None:
        await run(code)
        return
    await asyncio.to_thread(handout_file.write_init, path, code)
    await run(prep.run_init)
    failed = await asyncio.to_thread(handout_file.init_outcome, path, code)
    if failed is not None:
        raise KernelCodeError("Error", failed, [])


async def write_step_data(kernel: PooledKernel, data: Any) -> None:
    """Write a warm-up step's data as JSON where a file-handout kernel's code reads it
    (:func:`~hotpot_km.langs.handout.init_path`); the code removes the file."""
    path = getattr(kernel.adapter, "handout_path", None)
    if path is None:
        raise OSError("the kernel's handout file is unknown")
    await asyncio.to_thread(handout_file.write_init, path, json.dumps(data))


def warmup_step(source: str) -> str:
    """The step (one of ``hotpot_km.events.WARMUP_STEPS``) a warm-up source belongs to."""
    if source == "kernel start":
        return "kernel_start"
    if source == BOOTSTRAP:
        return "bootstrap"
    if source == "python_imports":
        return "python_imports"
    if source.startswith("initialization_code["):
        return "initialization_code"
    return "init_file"


def _read_init_files(kernel_name: str, extension: str) -> list[tuple[str, str]]:
    """``kernel_pool_init_<name><ext>`` files in the Jupyter config path, in path order."""
    found = []
    for directory in jupyter_config_path():
        path = Path(directory) / f"kernel_pool_init_{kernel_name}{extension}"
        if path.is_file():
            found.append((str(path), path.read_text(encoding="utf-8")))
    return found
