"""Wall-clock timers around named functions, to say where a latency goes without a profiler.

A sampling profiler multiplies the cost of the many tiny calls on a handout path;
these timers add a few microseconds per call and measure awaited time too (the
kernel's side of a round trip). Stdlib only: ``apps.py`` installs them inside the
servers of either venv when ``HOTPOT_BENCH_PHASES`` is set.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

#: label -> durations in seconds, since the last :func:`take`.
TIMINGS: dict[str, list[float]] = {}

HANDOUT = [
    ("jupyter_client.multikernelmanager:AsyncMultiKernelManager.start_kernel",
     "start_kernel() in total"),
    ("hotpot_km.pooled:PooledKernelManager.pre_start_kernel",
     "  pre_start_kernel: a new KernelManager, the reservation"),
    ("jupyter_client.manager:KernelManager._async_pre_start_kernel",
     "  KernelManager pre-start: provisioner.pre_launch"),
    ("hotpot_km.provisioner:final_env", "    final_env(): the request's env as a cold start's"),
    ("hotpot_km.pool.claiming:Claiming.hand_out", "    KernelPool.hand_out"),
    ("hotpot_km.adapters.local:check_cwd", "      the request's cwd checked (off the loop)"),
    ("hotpot_km.pool.claiming:Claiming._detach", "      _detach: the process changes owner"),
    ("jupyter_client.manager:KernelManager._async_launch_kernel",
     "  KernelManager launch: connection info and file"),
    ("jupyter_client.manager:KernelManager._async_post_start_kernel",
     "  KernelManager post-start: control socket, restarter"),
]

SERVER = [
    ("jupyter_server.services.sessions.sessionmanager:SessionManager.create_session",
     "POST /api/sessions: create_session"),
    ("jupyter_server.services.kernels.kernelmanager:MappingKernelManager.start_kernel",
     "  MappingKernelManager.start_kernel"),
    ("jupyter_server.services.kernels.handlers:KernelActionHandler.post",
     "POST restart: the request handler"),
    ("hotpot_km.mapping:PooledMappingKernelManager.restart_kernel",
     "  PooledMappingKernelManager.restart_kernel"),
    ("jupyter_client.multikernelmanager:MultiKernelManager._async_restart_kernel",
     "    jupyter_client's restart_kernel"),
    ("hotpot_km.mapping:request_reply", "    kernel_info of the new process"),
    ("hotpot_km.mapping:PooledMappingKernelManager._reattach",
     "    the server's sockets moved to the new process"),
    ("jupyter_client.manager:KernelManager._async_shutdown_kernel",
     "      KernelManager shutdown of the replaced process"),
    ("hotpot_km.handout:_HandoutStart._async_shutdown_kernel",
     "      KernelManager shutdown of the replaced process (no pause: warm)"),
    ("jupyter_client.manager:KernelManager._async_interrupt_kernel", "        interrupt first"),
    ("jupyter_client.manager:KernelManager._async_request_shutdown",
     "        shutdown_request (the pool claims a kernel)"),
    ("jupyter_client.manager:KernelManager._async_finish_shutdown",
     "        wait for the process (the pool retires it)"),
    ("jupyter_client.manager:KernelManager._async_cleanup_resources", "    cleanup"),
    ("hotpot_km.handout:_HandoutStart._async_start_kernel",
     "      KernelManager start (a handout with a pool)"),
    ("jupyter_server.services.kernels.connection.channels:"
     "ZMQChannelsWebsocketConnection.prepare", "websocket open: kernel_info via the server"),
    ("jupyter_server.services.kernels.connection.channels:"
     "ZMQChannelsWebsocketConnection.nudge", "websocket open: nudge until iopub and state"),
]

VOILA = [
    ("jupyter_server.services.kernels.kernelmanager:MappingKernelManager.start_kernel",
     "hand-out: start_kernel()"),
    ("nbclient.client:NotebookClient.async_start_new_kernel_client",
     "readiness: nbclient's client, until wait_for_ready() returns"),
    ("nbclient.client:NotebookClient.async_execute_cell", "execution: the notebook's cells"),
    ("jinja2.environment:Environment.compile", "Jinja compiles the page templates"),
]


def record(label: str, seconds: float) -> None:
    TIMINGS.setdefault(label, []).append(seconds)


def _timed(func: Callable[..., Any], label: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                record(label, time.perf_counter() - start)

        return timed_async

    @functools.wraps(func)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = func(*args, **kwargs)
        if isinstance(result, asyncio.Future):  # e.g. nudge(): time it until resolved
            result.add_done_callback(lambda _: record(label, time.perf_counter() - start))
        else:
            record(label, time.perf_counter() - start)
        return result

    return timed


def install(targets: Iterable[tuple[str, str]]) -> list[str]:
    """Wrap each ``module:Class.attr`` (or ``module:function``); returns those not found."""
    missing = []
    for target, label in targets:
        module_name, _, path = target.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for name in parents:
                owner = getattr(owner, name)
            func = inspect.getattr_static(owner, attr)
        except (ImportError, AttributeError):
            missing.append(target)
            continue
        setattr(owner, attr, _timed(func, label))
    return missing


def take() -> dict[str, list[float]]:
    """The timings so far, and a fresh start."""
    out = {k: list(v) for k, v in TIMINGS.items()}
    TIMINGS.clear()
    return out
