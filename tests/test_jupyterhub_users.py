"""JupyterHub with its default LocalProcessSpawner: each user's single-user server, its
pool and every kernel it hands out run as that user, with that user's environment.

Spawning as other users takes a root hub: as root (``make test-root``, CI) the test
creates two system users and spawns both; as a normal user it spawns the only user such
a hub can serve, itself, and checks the same of it.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from conftest import TEMPLATE_MARK
from ports import free_port
from servers import KernelSocket, Server, running
from test_jupyterhub import ADMIN_TOKEN, BIN, CHP, Hub, pool, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("no_leftover_kernels")]

#: The system users a root hub spawns for (created if missing, removed afterwards).
SYSTEM_USERS = ("hotpot-hub-ann", "hotpot-hub-bob")

PROBE = (
    "import json, os, pwd\n"
    "print(json.dumps({'uid': os.getuid(), 'name': pwd.getpwuid(os.getuid()).pw_name,"
    " 'home': os.environ.get('HOME'), 'user': os.environ.get('USER'),"
    " 'hub_user': os.environ.get('JUPYTERHUB_USER'), 'who': os.environ.get('HOTPOT_TEST_WHO'),"
    " 'cwd': os.getcwd()}))"
)


def hub_config(tmp: Path, hub_port: int, proxy_api_port: int, internal_port: int) -> str:
    """LocalProcessSpawner with the README's pool settings on the single-user command line
    (nothing the spawned users must read lies in this root-only test directory)."""
    return f"""
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
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{str(BIN / 'jupyterhub-singleuser')!r}]
c.Spawner.args = [
    "--ServerApp.kernel_manager_class=hotpot_km.mapping.PooledMappingKernelManager",
    '--PooledKernelManager.kernel_pools={{"python3": 1}}',
]
c.Spawner.environment = {{
    "HOTPOT_TEST_WHO": lambda spawner: spawner.user.name,  # each user's own value
}}
c.JupyterHub.services = [{{"name": "tester", "api_token": {ADMIN_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["tester"]}}]
"""


def _kill_processes_of(user: str) -> None:
    for proc in psutil.process_iter(["username"]):
        if proc.info["username"] == user:
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture
def hub_users() -> Iterator[list[str]]:
    """System users as root (made here, removed after), else the user running the test."""
    if os.geteuid() != 0:
        yield [getpass.getuser()]
        return
    made = []
    for user in SYSTEM_USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh",
                            user], check=True)
            made.append(user)
    try:
        account = pwd.getpwnam(SYSTEM_USERS[0])
        try:  # as the spawner runs it: setgid, setgroups, setuid, exec
            ran = subprocess.run(
                [str(BIN / "python"), "-c", "import hotpot_km, jupyterhub"], cwd="/",
                user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                capture_output=True, text=True,
            )
            problem = ran.stderr[-2000:] if ran.returncode else ""
        except PermissionError as error:
            problem = str(error)
        assert not problem, (
            "the spawned users can't run this venv's Python: a root hub's users need a venv "
            "built from a Python they can read (.ci/run builds it from /usr/bin/python3): "
            + problem
        )
        yield list(SYSTEM_USERS)
    finally:
        for user in SYSTEM_USERS:
            _kill_processes_of(user)
        for user in made:
            subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)


def user_kernels(hub: Server, user: str) -> list[psutil.Process]:
    """The kernels (pooled or handed out) of ``user``'s server under ``hub``: its
    ipykernel processes, forked ones included, not a fork template."""
    found = []
    for proc in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if (proc.username() == user and "ipykernel" in cmdline
                    and TEMPLATE_MARK not in cmdline and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_each_users_pool_and_kernels_run_as_that_user_with_that_users_env(
    jupyter_dirs, tmp_path, hub_users
):
    assert CHP.exists(), f"{CHP} is missing: `make test` installs it (npm install)"
    hub_port, proxy_api_port, internal_port = free_port(), free_port(), free_port()
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(hub_config(tmp_path, hub_port, proxy_api_port, internal_port))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    argv = [str(BIN / "jupyterhub"), "-f", str(config)]
    with running(argv, cwd=tmp_path, port=hub_port, ready_path="/hub/api", env=env,
                 log=tmp_path / "jupyterhub.log", timeout=180) as server:
        hub = Hub(server)
        wait_for(lambda: hub.api("GET", "/").status_code == 200, 120, "the hub's route", server)
        for user in hub_users:
            assert hub.api("POST", f"/users/{user}").status_code == 201
            response = hub.api("POST", f"/users/{user}/server")
            assert response.status_code in (201, 202), response.text
        for user in hub_users:
            wait_for(lambda user=user: hub.server_ready(user), 120, f"{user}'s server", server)
            wait_for(lambda user=user: pool(hub, user)["ready"] == 1, 120, f"{user}'s pool",
                     server)

        for user in hub_users:
            account = pwd.getpwnam(user)
            # the pool's waiting kernel is the user's process
            waiting = user_kernels(server, user)
            assert len(waiting) == 1, [p.cmdline() for p in waiting]
            assert waiting[0].uids().real == account.pw_uid

            response = hub.user_api(user, "POST", "/kernels", json={"name": "python3"})
            assert response.status_code == 201, response.text
            kid = response.json()["id"]
            assert pool(hub, user)["starts"]["pooled"] == 1, pool(hub, user)
            sock = KernelSocket(SimpleNamespace(url=f"{hub.url}/user/{user}"), kid, token=None,
                                header=[f"Authorization: token {ADMIN_TOKEN}"])
            try:
                out, reply = sock.run(PROBE)
            finally:
                sock.close()
            assert reply["status"] == "ok", reply
            seen = json.loads(out.strip().splitlines()[-1])
            assert seen["uid"] == account.pw_uid and seen["name"] == user, seen
            assert seen["home"] == account.pw_dir and seen["user"] == user, seen
            assert seen["hub_user"] == user and seen["who"] == user, seen
            assert seen["cwd"] == account.pw_dir, seen  # the server's root: the user's home
            # every kernel process of the user's server is the user's, none anyone else's
            wait_for(lambda user=user: len(user_kernels(server, user)) == 2, 120,
                     f"{user}'s refill", server)
            assert {p.uids().real for p in user_kernels(server, user)} == {account.pw_uid}

        for user in hub_users:
            assert hub.api("DELETE", f"/users/{user}/server").status_code in (202, 204)
        for user in hub_users:
            wait_for(lambda user=user: not user_kernels(server, user), 120,
                     f"{user}'s kernels ending with the server", server)
