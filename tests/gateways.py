"""Real gateways for the tests: Jupyter Kernel Gateway 3 (from .venv) and Enterprise
Gateway 3.3 (from .venv-eg, built by ``make .venv-eg/.installed``), on 127.0.0.1, with
their own Jupyter dirs, and jupyter_server in gateway mode in front of them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import MARKER
from servers import TOKEN, Server, free_port, jupyter_server, port_of, running

ROOT = Path(__file__).resolve().parent.parent
EG_PYTHON = Path(os.environ.get("HOTPOT_KM_EG_PYTHON", ROOT / ".venv-eg" / "bin" / "python"))
GATEWAY_TOKEN = "hotpot-gateway-token"
GATEWAYS = ("kernel_gateway", "enterprise_gateway")


def gateway_kernelspecs(data_dir: Path, slow_seconds: float = 0) -> None:
    """``python3`` (the project's ipykernel), and ``python3-slow`` whose launch takes
    ``slow_seconds`` more, standing in for a kernel pod being scheduled."""
    kernels = data_dir / "kernels"
    for name, argv in (
        ("python3", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
        ("python3-slow", ["/bin/sh", "-c", f'sleep {slow_seconds}; exec "$0" "$@"',
                          sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
    ):
        (kernels / name).mkdir(parents=True, exist_ok=True)
        (kernels / name / "kernel.json").write_text(json.dumps(
            {"argv": argv, "display_name": name, "language": "python"}))


def gateway_command(kind: str, port: int, *extra: str) -> list[str]:
    """Kernel Gateway or Enterprise Gateway on 127.0.0.1 with a token, kernel listing on,
    and ``JPY_SESSION_NAME`` accepted from clients (as a deployment that wants
    ``__session__`` in kernels would configure it)."""
    if kind == "kernel_gateway":
        return [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
                f"--KernelGatewayApp.auth_token={GATEWAY_TOKEN}",
                "--JupyterWebsocketPersonality.list_kernels=True",
                "--JupyterWebsocketPersonality.env_whitelist=JPY_SESSION_NAME", *extra]
    if not EG_PYTHON.exists():
        pytest.fail(f"Enterprise Gateway's venv is missing ({EG_PYTHON}): run "
                    "`make .venv-eg/.installed` (make test does)")
    return [str(EG_PYTHON), "-m", "enterprise_gateway", "--EnterpriseGatewayApp.ip=127.0.0.1",
            f"--EnterpriseGatewayApp.port={port}", "--EnterpriseGatewayApp.port_retries=0",
            f"--EnterpriseGatewayApp.auth_token={GATEWAY_TOKEN}",
            "--EnterpriseGatewayApp.list_kernels=True",
            "--EnterpriseGatewayApp.client_envs=JPY_SESSION_NAME", *extra]


class Gateway:
    """A running gateway and REST calls to it."""

    def __init__(self, kind: str, server: Server) -> None:
        self.kind = kind
        self.server = server
        self.url = server.url

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {GATEWAY_TOKEN}"}
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def kernel_ids(self) -> set[str]:
        response = self.api("GET", "/api/kernels")
        assert response.status_code == 200, response.text
        return {k["id"] for k in response.json()}

    def kernel_envs(self) -> dict[int, dict[str, str]]:
        """pid → environment of every kernel process the gateway runs."""
        out = {}
        for child in psutil.Process(self.server.proc.pid).children(recursive=True):
            try:
                if "ipykernel" in " ".join(child.cmdline()) and child.status() != "zombie":
                    out[child.pid] = child.environ()
            except psutil.Error:
                continue
        return out


@contextmanager
def gateway(kind: str, base: Path, *extra: str, slow_seconds: float = 0) -> Iterator[Gateway]:
    """A gateway in ``base`` with Jupyter dirs of its own. Kernels inherit the test's marker
    (``no_leftover_kernels`` finds them) through each gateway's own allow-list."""
    dirs = {name: base / name for name in ("config", "data", "runtime", "work")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    gateway_kernelspecs(dirs["data"], slow_seconds)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
               JUPYTER_PREFER_ENV_PATH="0", KG_ENV_PROCESS_WHITELIST=MARKER,
               EG_INHERITED_ENVS=MARKER, PYTHONWARNINGS="ignore::DeprecationWarning")
    env.pop("JUPYTER_PATH", None)
    port = free_port()
    argv = gateway_command(kind, port, *extra)
    with running(argv, cwd=dirs["work"], port=port, env=env, ready_path="/api",
                 log=base / f"{kind}.log") as server:
        yield Gateway(kind, server)


def gateway_client_config(gw: Gateway, pooled: bool, pools: int = 2, extra: str = "") -> str:
    """jupyter_server_config.py for gateway mode, with or without the pool."""
    config = (f'c.GatewayClient.url = "{gw.url}"\n'
              f'c.GatewayClient.auth_token = "{GATEWAY_TOKEN}"\n'
              'c.GatewayClient.allowed_envs = "JPY_SESSION_NAME"\n')
    if pooled:
        config += (
            'c.ServerApp.kernel_manager_class = '
            '"hotpot_km.gateway.PooledGatewayMappingKernelManager"\n'
            f'c.PooledKernelManager.kernel_pools = {{"python3": {pools}}}\n'
            "c.PooledKernelManager._wait_at_startup = True\n"
            "c.PooledKernelManager.fill_delay = 0.0\n")
    return config + extra


@contextmanager
def local_server(gw: Gateway, base: Path, root: Path, *, pooled: bool, pools: int = 2,
                 extra: str = "") -> Iterator[Server]:
    """jupyter_server in gateway mode in front of ``gw``, configured as a user would."""
    config = base / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.py").write_text(
        gateway_client_config(gw, pooled, pools, extra))
    # the user the gateway starts kernels for (Enterprise Gateway refuses root)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), KERNEL_USERNAME="hotpot-user")
    argv = jupyter_server(base, root, "--ServerApp.jpserver_extensions={'voila.server_extension': False}")
    with running(argv, cwd=root, port=port_of(argv), env=env,
                 ready_path=f"/api/status?token={TOKEN}", log=base / "server.log") as server:
        yield server
