"""Jupyter Kernel Gateway with the pool as its kernel manager."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import marked_kernels
from servers import TOKEN, KernelSocket, free_port, running
from test_servers import PROBE

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


def test_kernel_gateway_hands_out_pooled_kernels(jupyter_dirs, tmp_path):
    (jupyter_dirs["config"] / "jupyter_kernel_gateway_config.py").write_text(
        'c.KernelGatewayApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
    )
    port = free_port()
    argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={TOKEN}", "--JupyterWebsocketPersonality.list_kernels=True"]
    with running(argv, cwd=tmp_path, port=port, ready_path="/api", log=tmp_path / "kg.log") as server:
        import requests

        auth = {"Authorization": f"token {TOKEN}"}

        pooled = server.kernel_pids()
        assert len(pooled) == 2
        assert requests.get(server.url + "/api/kernels", headers=auth, timeout=30).json() == []
        kernel = requests.post(server.url + "/api/kernels", json={"name": "python3"}, headers=auth, timeout=60)
        assert kernel.status_code == 201, server.log()[-3000:]
        kid = kernel.json()["id"]
        sock = KernelSocket(server, kid)
        try:
            out, reply = sock.run(PROBE)
        finally:
            sock.close()
        assert reply["status"] == "ok"
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["pid"] in pooled
        assert [k["id"] for k in requests.get(server.url + "/api/kernels", headers=auth, timeout=30).json()] == [kid]
        # a request env (KG passes only PATH and KERNEL_* variables) reaches the kernel
        with_env = requests.post(
            server.url + "/api/kernels",
            json={"name": "python3", "env": {"KERNEL_USERNAME": "alice"}},
            headers=auth,
            timeout=60,
        )
        assert with_env.status_code == 201
        sock = KernelSocket(server, with_env.json()["id"])
        try:
            out, _ = sock.run(PROBE)
        finally:
            sock.close()
        assert json.loads(out.strip().splitlines()[-1])["env"]["KERNEL_USERNAME"] == "alice"
    assert not marked_kernels()
