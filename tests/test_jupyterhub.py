"""A real JupyterHub (DummyAuthenticator, SimpleLocalProcessSpawner, configurable-http-proxy
from npm) whose single-user servers pool kernels, configured as the README says.

- A spawn does not wait for the pool: the user's server is up while its pool's warm-up is
  held back (an init file that waits for a gate file the test opens later).
- The user's first kernel is a pooled one, with the user's server's environment.
- jupyterhub-idle-culler stops a server nobody uses: the pool's kernels, which stay up and
  refill, are not activity; every kernel dies with the culled server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from conftest import MARKER, marked_kernels
from ports import free_port
from servers import KernelSocket, Server, running

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_kernels")]

ROOT = Path(__file__).resolve().parent.parent
#: configurable-http-proxy, installed by `make test` (npm install, never at test time).
CHP = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
BIN = Path(sys.executable).parent
ADMIN_TOKEN = "hotpot-test-hub-admin-token"

#: The pool's init file, in the user's ~/.jupyter: warm-ups wait for the gate file.
GATED_INIT = """\
import os, time
while not os.path.exists(os.environ["HOTPOT_TEST_GATE"]):
    time.sleep(0.1)
import colorsys
"""

PROBE = "import json, os, sys; print(json.dumps({'ppid': os.getppid(), 'pre': 'colorsys' in sys.modules, 'user': os.environ.get('JUPYTERHUB_USER'), 'home': os.environ.get('HOME')}))"


def hub_config(tmp: Path, hub_port: int, proxy_api_port: int, internal_port: int) -> str:
    """jupyterhub_config.py: the README's pool settings for single-user servers, plus
    what a test needs (ports, tmp dirs, root)."""
    return f"""
import sys
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {hub_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {internal_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.JupyterHub.db_url = "sqlite:///{tmp / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(tmp / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(tmp / 'jupyterhub.pid')!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(tmp / 'home' / '{username}')!r}
c.Spawner.cmd = [{str(BIN / 'jupyterhub-singleuser')!r}]
c.Spawner.args = [
    "--allow-root",  # the suite runs as root
    # the pool (README: JupyterHub)
    "--ServerApp.kernel_manager_class=hotpot_km.mapping.PooledMappingKernelManager",
    '--PooledKernelManager.kernel_pools={{"python3": 1}}',
]
c.Spawner.environment = {{
    "{MARKER}": {os.environ[MARKER]!r},
    "HOTPOT_TEST_GATE": {str(tmp / 'gate')!r},
    "JUPYTERHUB_ACTIVITY_INTERVAL": "2",  # how often servers report activity (default 300)
}}
c.JupyterHub.last_activity_interval = 2  # how often the hub reads the proxy's (default 300)
c.JupyterHub.services = [
    {{"name": "tester", "api_token": {ADMIN_TOKEN!r}}},
    # the README's culler; every request of the test through the proxy is activity
    {{"name": "idle-culler",
      "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=12",
                  "--cull-every=2"]}},
]
c.JupyterHub.load_roles = [
    {{"name": "admin", "services": ["tester"]}},
    {{"name": "idle-culler", "services": ["idle-culler"],
      "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}},
]
"""


class Hub:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {ADMIN_TOKEN}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers,
                                timeout=60, **kwargs)

    def user_api(self, user: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The user's own server, through the proxy, with the admin token."""
        headers = {"Authorization": f"token {ADMIN_TOKEN}"}
        return requests.request(method, f"{self.url}/user/{user}/api{path}", headers=headers,
                                timeout=60, **kwargs)

    def server_ready(self, user: str) -> bool:
        model = self.api("GET", f"/users/{user}").json()
        server = model.get("servers", {}).get("")
        return bool(server and server.get("ready"))


def wait_for(predicate, timeout: float, what: str, log: Server) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout:g} s:\n{log.log()[-4000:]}"
        time.sleep(0.2)


def pool(hub: Hub, user: str) -> dict[str, Any]:
    response = hub.user_api(user, "GET", "/hotpot_km/status")
    assert response.status_code == 200, response.text
    return response.json()["pools"]["python3"]


def test_jupyterhub_single_user_servers_pool_kernels_and_are_culled_when_idle(jupyter_dirs, tmp_path):
    assert CHP.exists(), f"{CHP} is missing: `make test` installs it (npm install)"
    hub_port, proxy_api_port, internal_port = free_port(), free_port(), free_port()
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(hub_config(tmp_path, hub_port, proxy_api_port, internal_port))
    home = tmp_path / "home" / "alice"
    (home / ".jupyter").mkdir(parents=True)
    (home / ".jupyter" / "kernel_pool_init_python3.py").write_text(GATED_INIT)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    argv = [str(BIN / "jupyterhub"), "-f", str(config)]
    with running(argv, cwd=tmp_path, port=hub_port, ready_path="/hub/api", env=env,
                 log=tmp_path / "jupyterhub.log", timeout=180) as server:
        hub = Hub(server)
        wait_for(lambda: hub.api("GET", "/").status_code == 200, 120, "the hub's route", server)
        assert hub.api("POST", "/users/alice").status_code == 201

        # the spawn completes while no pooled kernel can be ready (their warm-up waits for
        # the gate): the server does not wait for its pool
        started = time.monotonic()
        response = hub.api("POST", "/users/alice/server")
        assert response.status_code in (201, 202), response.text
        wait_for(lambda: hub.server_ready("alice"), 120, "alice's server", server)
        spawn_seconds = time.monotonic() - started
        state = pool(hub, "alice")
        assert state["size"] == 1 and state["ready"] == 0, state
        assert state["warming"] == 1, state  # the pool fills in the background
        print(f"spawn took {spawn_seconds:.2f} s with the pool's warm-up held back")

        # the user's first kernel is a warm one, with the user's server's environment
        (tmp_path / "gate").touch()
        wait_for(lambda: pool(hub, "alice")["ready"] == 1, 120, "the pool", server)
        response = hub.user_api("alice", "POST", "/kernels", json={"name": "python3"})
        assert response.status_code == 201, response.text
        kid = response.json()["id"]
        state = pool(hub, "alice")
        assert state["starts"]["pooled"] == 1 and state["starts"]["cold"] == 0, state

        user_server = SimpleNamespace(url=f"{hub.url}/user/alice")  # through the proxy
        sock = KernelSocket(user_server, kid, token=None,
                            header=[f"Authorization: token {ADMIN_TOKEN}"])
        try:
            out, reply = sock.run(PROBE)
        finally:
            sock.close()
        assert reply["status"] == "ok", reply
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["pre"] is True  # the init file's import: a pooled kernel
        assert seen["user"] == "alice" and seen["home"] == str(home)
        assert hub.user_api("alice", "DELETE", f"/kernels/{kid}").status_code == 204
        wait_for(lambda: pool(hub, "alice")["ready"] == 1, 120, "the pool's refill", server)
        assert marked_kernels(), "the refilled pooled kernel carries the test's marker"

        # nobody uses the server now: the idle culler stops it, pooled kernels and all
        wait_for(lambda: not hub.api("GET", "/users/alice").json().get("servers"), 180,
                 "the culler stopping alice's idle server", server)
        assert "Culling server alice" in server.log(), server.log()[-3000:]
