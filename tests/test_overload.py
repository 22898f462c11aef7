"""Overload is an answer, not a hang: at ``max_kernels`` every host says so at once, names the
limit, and loses nothing (Voila, jupyter_server, the pool service)."""

from __future__ import annotations

import logging
import os

import pytest
import requests
from conftest import marked_kernels
from jupyter_client.manager import AsyncKernelManager
from servers import api, jupyter_server, log_tracebacks, port_of, running, wait_for
from service_helpers import install_kernelspec, service
from test_service import PLAIN, pid_of
from test_voila_pages import beacon, seed_app, tracebacks, visit, voila, voila_config

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

LIMIT_MESSAGE = "the limit of 2 kernel processes (max_kernels) is reached"


def test_voila_at_max_kernels_answers_503_naming_the_limit(jupyter_dirs, tmp_path):
    """The seed's voila.json plus max_kernels 2: pages run until the limit, then the next one
    gets Voila's error page with 503 and the limit, at once; when a page closes, the next one
    is served."""
    voila_config(jupyter_dirs["config"], PooledKernelManager={"max_kernels": 2})
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        served = [visit(server)]
        while True:  # a second page fits unless a fork template holds a slot
            refused = requests.get(server.url + "/", timeout=120)
            if refused.status_code != 200:
                break
            served.append((None, None))
            assert len(served) <= 2, "max_kernels 2 let a third page start a kernel"
        assert refused.status_code == 503, refused.text[-2000:]
        assert LIMIT_MESSAGE in refused.text
        assert refused.headers.get("Retry-After")
        assert len(server.kernel_pids()) <= 2
        http, kernel_id = served[0]
        assert beacon(server, http, kernel_id) == 204
        wait_for(lambda: requests.get(server.url + "/", timeout=120).status_code == 200,
                 timeout=120, what="a page served once one closed")
        assert len(server.kernel_pids()) <= 2
        log = server.log()
        assert not tracebacks(log) and "500 GET" not in log, log[-3000:]
    assert not marked_kernels()


def test_jupyter_server_answers_503_at_max_kernels(jupyter_dirs, tmp_path):
    """POST /api/kernels and POST /api/sessions at the limit: 503 with the message, no
    session or kernel left behind; once a kernel is gone, a session starts."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 1}\n'
        "c.PooledKernelManager.max_kernels = 2\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path="/api/status",
                 log=tmp_path / "server.log") as server:
        kernels = []
        while True:  # two fit, or one when a fork template holds a slot
            refused = api(server, "POST", "/api/kernels", json={"name": "python3"})
            if refused.status_code != 201:
                break
            kernels.append(refused.json()["id"])
            assert len(kernels) <= 2, "max_kernels 2 let a third kernel start"
        assert kernels
        assert refused.status_code == 503, refused.text
        assert LIMIT_MESSAGE in refused.json()["message"]
        session = {"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                   "kernel": {"name": "python3"}}
        refused = api(server, "POST", "/api/sessions", json=session)
        assert refused.status_code == 503, refused.text
        assert LIMIT_MESSAGE in refused.json()["message"]
        assert api(server, "GET", "/api/sessions").json() == []
        assert sorted(k["id"] for k in api(server, "GET", "/api/kernels").json()) == sorted(kernels)
        assert api(server, "DELETE", f"/api/kernels/{kernels[0]}").status_code == 204
        created = api(server, "POST", "/api/sessions", json=session)
        assert created.status_code == 201, created.text
        assert len(server.kernel_pids()) <= 2
        assert not log_tracebacks(server.log())


def test_below_the_memory_floor_jupyter_server_answers_503_naming_it(jupyter_dirs, tmp_path):
    """A machine with less memory available than ``memory_floor`` (here: a floor no machine
    reaches): a new session is a 503 naming the floor, nothing is left half-started, and the
    server keeps serving."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 1}\n'
        "c.PooledKernelManager.memory_floor = 2**40  # MiB\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path="/api/status",
                 log=tmp_path / "server.log") as server:
        session = {"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                   "kernel": {"name": "python3"}}
        refused = api(server, "POST", "/api/sessions", json=session)
        assert refused.status_code == 503, refused.text
        assert "below the memory_floor" in refused.json()["message"]
        assert api(server, "GET", "/api/sessions").json() == []
        assert api(server, "GET", "/api/kernels").json() == []
        assert server.kernel_pids() == set()  # the pool does not grow below the floor either
        assert api(server, "GET", "/api/status").status_code == 200
        assert not log_tracebacks(server.log())


@pytest.fixture
def service_setup(jupyter_dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # the kernelspec goes to this test's data dir, not the suite's venv (see test_service.py)
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    return tmp_path


async def test_the_pool_service_refuses_a_lease_at_max_kernels_saying_why(service_setup, caplog):
    """``hotpot-km serve`` at max_kernels refuses the lease with the limit in its answer;
    the runner starts its kernel cold, saying why, and both kernels run."""
    install_kernelspec()
    caplog.set_level(logging.WARNING)
    with service(service_setup / "service.log", PLAIN, "--PooledKernelManager.max_kernels=1") as svc:
        leased, cold = AsyncKernelManager(kernel_name="python3"), AsyncKernelManager(kernel_name="python3")
        await leased.start_kernel()
        try:
            pid, _, _ = await pid_of(leased)
            assert pid in svc.kernel_pids()
            await cold.start_kernel()
            try:
                pid, ppid, _ = await pid_of(cold)
                assert ppid == os.getpid()
            finally:
                await cold.shutdown_kernel(now=True)
        finally:
            await leased.shutdown_kernel(now=True)
    lines = [r.getMessage() for r in caplog.records if "kernel cold" in r.getMessage()]
    assert lines == ["hotpot_km: starting the 'python3' kernel cold: the pool service refused: "
                     "no ready kernel in the pool (max_kernels=1 is reached)"]
