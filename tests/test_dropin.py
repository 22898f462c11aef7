"""The pooled managers close like any kernel manager: through the server's own shutdown path
(also with no user kernel, also in-process), when dropped without ``shutdown_all()``, and
without stalling on a start that waits for a warming kernel. The peers' own suites run
against them in ``make test-peers`` (tests/peers/)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import warnings
from pathlib import Path

import psutil
import pytest
from conftest import kernel_children, marked_kernels
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from servers import TOKEN, api, jupyter_server, port_of, running
from traitlets.config import Config

from hotpot_km import PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

POOLED = "hotpot_km.mapping.PooledMappingKernelManager"


def pool_files(runtime: Path) -> list[Path]:
    return sorted((runtime / "hotpot_km_pool").glob("kernel-*.json"))


def hotpot_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """ResourceWarnings about what a pool owns: processes, zmq sockets and contexts."""
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, ResourceWarning)
        and any(word in str(w.message) for word in ("subprocess", "socket", "context"))
    ]


def test_server_with_only_pooled_kernels_stops_them(jupyter_dirs, tmp_path):
    """No user kernel: the manager lists none (a MultiKernelManager is then falsy), yet
    the server's cleanup_kernels must close the pool before the process exits."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        f'c.ServerApp.kernel_manager_class = "{POOLED}"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(
        argv,
        cwd=root,
        port=port_of(argv),
        ready_path=f"/api/status?token={TOKEN}",
        log=tmp_path / "server.log",
    ) as server:
        assert api(server, "GET", "/api/kernels").json() == []
        assert len(server.kernel_pids()) == 2
        assert len(pool_files(jupyter_dirs["runtime"])) == 2
        assert server.stop(signal.SIGTERM) == 0
    # gone when the server is: not left to the keeper that sees them out after it
    assert not marked_kernels(), server.log()[-3000:]
    assert not pool_files(jupyter_dirs["runtime"])
    assert "Task was destroyed" not in server.log()


def test_server_stopped_while_a_start_waits_for_a_warming_kernel(jupyter_dirs, tmp_path):
    """With use_pending_kernels the POST returns at once; the start waits for the pool's
    warming kernel while the server stops. The kernel is handed out during shutdown_all and
    shut down with the rest, without the refill's settling wait (fill_idle_timeout, here
    longer than the pool's whole close wait: shutdown_all would give up on it and log so)."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        f'c.ServerApp.kernel_manager_class = "{POOLED}"\n'
        "c.AsyncMappingKernelManager.use_pending_kernels = True\n"
        'c.PooledKernelManager.kernel_pools = {"python3": 1}\n'
        "c.PooledKernelManager.fill_idle_timeout = 3600.0\n"
        "c.PooledKernelManager.initialization_code = {'python3': 'import time; time.sleep(2)'}\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(
        argv,
        cwd=root,
        port=port_of(argv),
        ready_path=f"/api/status?token={TOKEN}",
        log=tmp_path / "server.log",
    ) as server:
        response = api(server, "POST", "/api/kernels", json={"name": "python3"})
        assert response.status_code == 201, response.text
        assert server.stop(signal.SIGTERM, timeout=120) == 0
    log = server.log()
    assert "did not finish" not in log, log[-3000:]
    assert not marked_kernels(), log[-3000:]
    assert not pool_files(jupyter_dirs["runtime"])


async def test_in_process_server_stop_leaves_nothing(jupyter_dirs):
    """A ServerApp stopped in-process (pytest-jupyter, embedding apps): the pool's tasks
    are awaited, its processes reaped, its zmq context closed; the collector finds nothing."""
    from jupyter_server.serverapp import ServerApp

    config = Config(
        {
            "ServerApp": {"kernel_manager_class": POOLED, "open_browser": False},
            "PooledKernelManager": {"kernel_pools": {"python3": 2}},
        }
    )
    app = ServerApp(config=config)
    try:
        app.initialize(argv=["--ServerApp.port=0"], new_httpserver=False)
        manager = app.kernel_manager
        await manager.wait_for_pool()
        assert len(kernel_children()) == 2
        await app._cleanup()
    finally:
        ServerApp.clear_instance()
    pool = manager.kernel_pool
    assert pool.closed
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("hotpot_km") and not t.done()]
    assert not left
    assert not kernel_children()
    assert not pool_files(jupyter_dirs["runtime"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del app, manager, pool
        gc.collect()
    assert not hotpot_warnings(caught)


def test_dropped_manager_closes_its_pool(jupyter_dirs):
    """A manager dropped without shutdown_all() after its event loop closed (what tornado's
    gen_test does after every jupyter_client test): the collector's pass ends its pooled
    kernel and removes its connection file, with no ResourceWarning and without blocking."""
    # jupyter_client's provisioner factory is a singleton that keeps the first manager that
    # asks for it as its parent for good (stock managers alike): let it have another one
    KernelProvisionerFactory.instance()
    # what earlier tests of this worker left for the collector (e.g. a stock manager's
    # context in a reference cycle) is collected now, not counted below as this manager's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    async def use() -> list[int]:
        km = PooledKernelManager(kernel_pools={"python3": 1}, fill_delay=0.0)
        await km.wait_for_pool()
        kid = await km.start_kernel()
        await km.shutdown_kernel(kid, now=True)
        await km.wait_for_pool()  # refilled: a pooled kernel is running, another handed out
        return [p.pid for p in kernel_children()]

    loop = asyncio.new_event_loop()
    pids = loop.run_until_complete(use())
    assert pids
    assert pool_files(jupyter_dirs["runtime"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.close()
        del loop
        gc.collect()
    assert not hotpot_warnings(caught)
    alive = [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive
    assert not pool_files(jupyter_dirs["runtime"])


async def test_unservable_start_is_logged_once(jupyter_dirs, caplog):
    """Starts the pool can never serve (their start arguments differ from pool_kwargs) go
    cold, and the log says so once per kernel name and reason, not once per start."""
    km = PooledKernelManager(kernel_pools={"python3": 1})
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                kid = await km.start_kernel(stdout=subprocess.DEVNULL)
                await km.shutdown_kernel(kid, now=True)
        said = [r.getMessage() for r in caplog.records if "went cold" in r.getMessage()]
        assert len(said) == 1, said
        assert "start_arguments" in said[0] and "pool_kwargs" in said[0]
        stats = km.kernel_pool.stats.for_name("python3")
        assert stats["starts"]["cold_reasons"] == {"start_arguments": 2}
    finally:
        await km.shutdown_all()
