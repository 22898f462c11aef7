"""Sessions through a remote gateway: jupyter_server in gateway mode → Jupyter Kernel Gateway.

The gateway runs on 127.0.0.1 with two kernelspecs: ``python3`` and ``python3-slow``,
whose launch takes ``slow`` seconds more (a shell that sleeps, then execs the same
ipykernel), standing in for a kernel pod being scheduled and started on Kubernetes.
The local server is a plain gateway-mode jupyter_server (cold) or one with
``hotpot_km.gateway.PooledGatewayMappingKernelManager`` (this project).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import requests
from environment import MARKER_VAR, JupyterDirs, Process, free_port
from server_bench import Server, ServerError, sessions

TOKEN = uuid.uuid4().hex
KERNELS = {"python3": "gateway: POST /api/sessions → 1+1 reply",
           "python3-slow": "gateway, launch +{slow} s (pod stand-in): POST /api/sessions → 1+1 reply"}


class KernelGateway:
    """Jupyter Kernel Gateway on 127.0.0.1 with the two kernelspecs."""

    def __init__(self, python: str, dirs: JupyterDirs, slow: int, log: Path) -> None:
        spec = dirs.data / "kernels" / "python3-slow"
        spec.mkdir(parents=True, exist_ok=True)
        argv = ["/bin/sh", "-c", f'sleep {slow}; exec "$0" "$@"',
                sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps(
            {"argv": argv, "display_name": f"Python 3, launch +{slow} s", "language": "python"}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(dirs.env(), KG_ENV_PROCESS_WHITELIST=MARKER_VAR)
        self.process = Process(
            [python, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
             f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.port_retries=0",
             f"--KernelGatewayApp.auth_token={TOKEN}",
             "--JupyterWebsocketPersonality.list_kernels=True"],
            env=env, cwd=dirs.work, log=log)

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.proc.poll() is not None:
                raise ServerError(f"the gateway exited early:\n{self.process.log()}")
            try:
                auth = {"Authorization": f"token {TOKEN}"}
                if requests.get(self.url + "/api", headers=auth, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the gateway is not up in {timeout} s:\n{self.process.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()


def server_config(dirs: JupyterDirs, gateway: KernelGateway, pooled: bool, pool: int) -> None:
    """The local server's config, as a user writes it for a gateway (and the pool)."""
    config: dict = {"GatewayClient": {"url": gateway.url, "auth_token": TOKEN}}
    if pooled:
        config["ServerApp"] = {
            "kernel_manager_class": "hotpot_km.gateway.PooledGatewayMappingKernelManager"}
        config["PooledKernelManager"] = {"kernel_pools": {name: pool for name in KERNELS},
                                         "_wait_at_startup": True}
    (dirs.config / "jupyter_server_config.json").write_text(json.dumps(config))


def gateway_sessions(python: str, base: Path, logs: Path, *, system: str, reps: int,
                     slow_reps: int, slow: int, pool: int) -> dict[str, list[float]]:
    """Session → first reply for each kernelspec, through the gateway; a full pool before
    every repetition (``wait_for_pool``), so the pooled rows measure hand-outs."""
    gateway_dirs = JupyterDirs(base, f"gateway-kg-{system}")
    gateway = KernelGateway(python, gateway_dirs, slow, logs / f"gateway-kg-{system}.log")
    server = None
    try:
        gateway.wait_up()
        dirs = JupyterDirs(base, f"gateway-server-{system}")
        server_config(dirs, gateway, system != "cold", pool)
        (dirs.work / "notebooks").mkdir()
        server = Server("server", python, dirs, [], cwd=dirs.work,
                        log=logs / f"gateway-server-{system}.log")
        server.wait_up(timeout=300)
        return {name: sessions(server, slow_reps if name == "python3-slow" else reps,
                               kernel_name=name)
                for name in KERNELS}
    finally:
        if server is not None:
            server.stop()
        gateway.stop()
