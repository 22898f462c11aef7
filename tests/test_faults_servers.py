"""Faults around real servers: signals, isolation of requests, exposure of pooled kernels,
culling. jupyter_server and Voila run as subprocesses on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests
from conftest import (
    kernel_children,
    marked_kernels,
    pooled_manager,
)
from kernel_helpers import probe, shut_down
from servers import (
    TOKEN,
    Server,
    api,
    connection_file_ids,
    free_port,
    jupyter_server,
    log_tracebacks,
    new_session,
    port_of,
    running,
    voila_command,
    wait_for,
    websocket_status,
    write_notebook,
    ws_probe,
    ws_run,
)

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


def server_config(config_dir: Path, *, pools: int = 2, wait: bool = True, extra: str = "") -> None:
    (config_dir / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        f'c.PooledKernelManager.kernel_pools = {{"python3": {pools}}}\n'
        f"c.PooledKernelManager._wait_at_startup = {wait}\n"
        "c.PooledKernelManager.fill_delay = 0.0\n" + extra
    )


def voila_config(app_dir: Path, *, pools: int = 2, wait: bool = True) -> None:
    (app_dir / "voila.json").write_text(
        json.dumps(
            {
                "VoilaConfiguration": {
                    "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"
                },
                "PooledKernelManager": {
                    "kernel_pools": {"python3": pools},
                    "_wait_at_startup": wait,
                    "fill_delay": 0.0,
                },
            }
        )
    )


#: A Voila cell printing what the kernel sees, base64-encoded so HTML escaping can't garble it.
VOILA_STATE = (
    "import base64, json, os\n"
    "print('STATE', base64.b64encode(json.dumps({'pid': os.getpid(), 'cwd': os.getcwd(),"
    " 'env': dict(os.environ), 'session': globals().get('__session__'),"
    " 'names': sorted(k for k in globals() if not k.startswith('_'))}).encode()).decode())"
)


def voila_state(page: str) -> dict:
    match = re.search(r"STATE ([A-Za-z0-9+/=]+)", page)
    assert match, page[-2000:]
    return json.loads(base64.b64decode(match.group(1)))


@contextmanager
def app_server(
    app: str, tmp_path: Path, dirs: dict[str, Path], *, pools: int = 2, wait: bool = True,
    extra: str = "",
) -> Iterator[Server]:
    """jupyter_server or Voila with the pool configured as users write it."""
    tmp = tmp_path / "tmp"  # Voila's connection dir goes under TMPDIR
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp))
    if app == "jupyter_server":
        server_config(dirs["config"], pools=pools, wait=wait, extra=extra)
        root = tmp_path / "root"
        write_notebook(root / "nb.ipynb", "1+1")
        argv = jupyter_server(tmp_path, root)
        with running(argv, cwd=root, port=port_of(argv), env=env,
                     ready_path=f"/api/status?token={TOKEN}", log=tmp_path / "server.log") as s:
            yield s
    else:
        app_dir = tmp_path / "app"
        app_dir.mkdir()
        voila_config(app_dir, pools=pools, wait=wait)
        write_notebook(app_dir / "dashboard.ipynb", VOILA_STATE)
        port = free_port()
        with running(voila_command("dashboard.ipynb", port), cwd=app_dir, port=port, env=env,
                     ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as s:
            yield s


def voila_page(server: Server, query: str = "") -> str:
    page = requests.get(server.url + "/" + query, timeout=120)
    assert page.status_code == 200, server.log()[-3000:]
    return page.text


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- 4. shutdown -------------------------------------------------------------------------------

SLOW_INIT = (
    "import os, pathlib, time\n"
    "pathlib.Path({where!r}, str(os.getpid())).touch()\n"
    "time.sleep(120)\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("state", ["filling", "full", "handed_out"])
@pytest.mark.parametrize("app", ["jupyter_server", "voila"])
def test_signal_stops_the_server_and_every_kernel(
    jupyter_dirs, tmp_path, unwatched_kernels, app, state, sig
):
    """Kernels here don't exit when their parent dies, so any kernel the server leaves
    behind stays visible."""
    warming = tmp_path / "warming"
    warming.mkdir()
    if state == "filling":
        (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
            SLOW_INIT.format(where=str(warming))
        )
    with app_server(app, tmp_path, jupyter_dirs, wait=state != "filling") as server:
        if state == "filling":
            wait_for(lambda: any(warming.iterdir()), what="a pooled kernel runs its init code")
        elif state == "handed_out":
            if app == "jupyter_server":
                new_session(server, "nb.ipynb")
                assert api(server, "POST", "/api/kernels", json={"name": "python3"}).ok
            else:
                voila_page(server, "?a=1")
                voila_page(server, "?b=2")
        kernels = server.kernel_pids()
        assert len(kernels) >= (1 if state == "filling" else 2)
        assert set(kernels) <= {p.pid for p in marked_kernels()}
        server.stop(sig)  # fails if the server does not exit
        assert server.proc.returncode is not None
    wait_for(lambda: not marked_kernels(), timeout=5, what="every kernel process gone")


async def test_shutdown_all_right_after_the_pool_filled_and_twice(jupyter_dirs):
    """``shutdown_all()`` in the same breath as the warm-up that woke the filler: the
    filler's cancellation must not get lost (it once did, and shutdown hung)."""
    km = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0, max_warming=2)
    await km.wait_for_pool()
    assert len(kernel_children()) == 1
    await shut_down(km)
    assert not kernel_children()
    await shut_down(km)  # twice is fine
    assert not kernel_children()


async def test_shutdown_all_while_filling_with_handed_out_kernels_and_concurrently(
    jupyter_dirs, tmp_path
):
    warming = tmp_path / "warming"
    warming.mkdir()
    km = pooled_manager(
        kernel_pools={},
        fill_delay=0,
        max_warming=2,
        initialization_code={"python3": SLOW_INIT.format(where=str(warming))},
    )
    handed = await km.start_kernel()
    assert (await probe(km, handed))["execution_count"] == 1
    km.kernel_pools = {"python3": 3}  # warming now, stuck in their init code
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(list(warming.iterdir())) < 2:
        assert loop.time() < deadline, "pooled kernels never reached their init code"
        await asyncio.sleep(0.1)
    assert len(kernel_children()) >= 3
    await asyncio.wait_for(asyncio.gather(km.shutdown_all(), km.shutdown_all()), 30)
    assert not kernel_children()
    await shut_down(km)
    assert km.list_kernel_ids() == []


# -- 7. isolation ------------------------------------------------------------------------------


def test_voila_requests_never_share_a_kernel_or_its_values(jupyter_dirs, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    voila_config(app, pools=2)
    # the second cell leaves traces that a reused kernel would carry to the next request
    write_notebook(
        app / "dashboard.ipynb",
        VOILA_STATE,
        "os.environ['HOTPOT_LEAK'] = os.environ['QUERY_STRING']\nLEAKED_GLOBAL = 1",
    )
    port = free_port()
    with running(voila_command("dashboard.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2
        tokens = [uuid.uuid4().hex for _ in range(3)]
        states = [voila_state(voila_page(server, f"?who={token}")) for token in tokens]
        pids = [s["pid"] for s in states]
        assert len(set(pids)) == 3  # never handed out twice
        assert set(pids[:2]) <= pooled
        for token, state in zip(tokens, states, strict=True):
            env = state["env"]
            assert env["QUERY_STRING"] == f"who={token}"
            assert f"who={token}" in env["VOILA_REQUEST_URL"]
            assert "HOTPOT_LEAK" not in env
            assert "LEAKED_GLOBAL" not in state["names"]
            assert state["cwd"] == str(app)
            others = [t for t in tokens if t != token]
            seen = json.dumps(state)
            assert not [t for t in others if t in seen], "a kernel saw another request's values"
        assert not log_tracebacks(server.log())


def test_jupyter_server_sessions_never_share_a_kernel_or_its_values(jupyter_dirs, tmp_path):
    server_config(jupyter_dirs["config"], pools=2)
    root = tmp_path / "root"
    tokens = {name: f"{name}-{uuid.uuid4().hex}" for name in ("alpha", "beta", "gamma")}
    for token in tokens.values():
        write_notebook(root / token / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2
        kernels = {}
        for name in ("alpha", "beta"):
            kernels[name] = new_session(server, f"{tokens[name]}/nb.ipynb")
        seen = {name: ws_probe(server, kid) for name, kid in kernels.items()}

        # the first session's kernel leaves traces, then its session ends
        reply = ws_run(server, kernels["alpha"],
                       "import os\nos.environ['HOTPOT_LEAK'] = 'alpha'\nLEAKED_GLOBAL = 1")
        assert reply["status"] == "ok"
        sessions = api(server, "GET", "/api/sessions").json()
        alpha = next(s["id"] for s in sessions if s["kernel"]["id"] == kernels["alpha"])
        assert api(server, "DELETE", f"/api/sessions/{alpha}").status_code == 204
        wait_for(lambda: alive(seen["alpha"]["pid"]) is False, what="alpha's kernel gone")

        kernels["gamma"] = new_session(server, f"{tokens['gamma']}/nb.ipynb")
        seen["gamma"] = ws_probe(server, kernels["gamma"])

        pids = [s["pid"] for s in seen.values()]
        assert len(set(pids)) == 3  # never handed out twice
        assert {seen["alpha"]["pid"], seen["beta"]["pid"]} <= pooled
        for name, state in seen.items():
            assert state["env"]["JPY_SESSION_NAME"].endswith(f"{tokens[name]}/nb.ipynb")
            assert state["session"] == state["env"]["JPY_SESSION_NAME"]
            assert state["cwd"] == str(root / tokens[name])
            assert state["execution_count"] == 1
            assert "HOTPOT_LEAK" not in state["env"]
            assert "LEAKED_GLOBAL" not in state["names"]
            text = json.dumps(state)
            others = [t for n, t in tokens.items() if n != name]
            assert not [t for t in others if t in text], f"{name} saw another session's values"


# -- 8. exposure -------------------------------------------------------------------------------


def assert_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"{path.name} has mode {oct(mode)}"


def assert_unreachable(server: Server, kernel_id: str, token: str | None = TOKEN) -> None:
    assert api(server, "GET", f"/api/kernels/{kernel_id}").status_code == 404
    assert websocket_status(server, kernel_id, token=token) == 404


def test_jupyter_server_never_exposes_pooled_kernels(jupyter_dirs, tmp_path):
    server_config(jupyter_dirs["config"], pools=2)
    root = tmp_path / "root"
    write_notebook(root / "nb.ipynb", "1+1")
    runtime = jupyter_dirs["runtime"]
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2
        pool_ids = connection_file_ids(runtime)
        assert len(pool_ids) == 2
        assert api(server, "GET", "/api/kernels").json() == []
        assert api(server, "GET", "/api/sessions").json() == []
        for kid in pool_ids:
            assert_private(next(Path(runtime).rglob(f"kernel-{kid}.json")))
            assert_unreachable(server, kid)
            assert api(server, "POST", f"/api/kernels/{kid}/interrupt").status_code == 404
            assert api(server, "DELETE", f"/api/kernels/{kid}").status_code == 404
            # (jupyter_server answers a restart of any unknown id with 500, pooled or not)
            assert api(server, "POST", f"/api/kernels/{kid}/restart").status_code >= 400
        assert server.kernel_pids() == pooled  # none of that touched them

        # A session may name its kernel id (jupyter_server starts the kernel under that id).
        # Naming a pooled kernel's id must not reach that kernel or disturb it: the session
        # gets what a plain server gives (201, the id asked for), the pool stays intact.
        files = {pid: connection_file_of(pid) for pid in pooled}
        contents = {pid: path.read_text() for pid, path in files.items()}
        newest = max(files.values(), key=lambda path: path.stat().st_mtime_ns)
        wanted = newest.name[len("kernel-"):-len(".json")]
        response = api(server, "POST", "/api/sessions",
                       json={"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                             "kernel": {"id": wanted, "name": "python3"}})
        assert response.status_code == 201, response.text
        kid = response.json()["kernel"]["id"]
        assert kid == wanted
        handed = ws_probe(server, kid)["pid"]
        assert handed in pooled
        assert [k["id"] for k in api(server, "GET", "/api/kernels").json()] == [kid]
        for pid in pooled - {handed}:  # still waiting in the pool, untouched
            assert files[pid].read_text() == contents[pid], "a pooled kernel's file was rewritten"
        for pool_id in pool_ids - {kid}:
            assert_unreachable(server, pool_id)
        for path in runtime.glob("kernel-*.json"):
            assert_private(path)


def connection_file_of(pid: int) -> Path:
    """The connection file a kernel process was started with (its ``-f`` argument)."""
    argv = psutil.Process(pid).cmdline()
    return Path(argv[argv.index("-f") + 1])


def test_voila_never_exposes_pooled_kernels(jupyter_dirs, tmp_path):
    with app_server("voila", tmp_path, jupyter_dirs, pools=2) as server:
        match = re.search(r"Storing connection files in (\S+?)\.?\s*$", server.log(), re.M)
        assert match, server.log()[-3000:]
        directory = Path(match.group(1))
        pool_ids = connection_file_ids(directory)
        assert len(pool_ids) == 2
        for kid in pool_ids:
            assert_private(next(directory.rglob(f"kernel-{kid}.json")))
            assert websocket_status(server, kid, token=None) == 404
        state = voila_state(voila_page(server))
        assert state["pid"] in server.kernel_pids()
        for kid in pool_ids:
            assert websocket_status(server, kid, token=None) == 404
        for path in directory.glob("kernel-*.json"):
            assert_private(path)


def culled(server: Server) -> int:
    """How many kernels the server culled (its "Culling '<state>' kernel ..." lines)."""
    return server.log().count("Culling '")


# -- 9. culling --------------------------------------------------------------------------------


@pytest.mark.slow
def test_culling_spares_pooled_kernels_and_starts_at_handout(jupyter_dirs, tmp_path):
    server_config(
        jupyter_dirs["config"],
        pools=2,
        extra="c.MappingKernelManager.cull_idle_timeout = 4\n"
        "c.MappingKernelManager.cull_interval = 1\n",
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2

        # an idle handed-out kernel is culled: the culler runs
        first = api(server, "POST", "/api/kernels", json={"name": "python3"}).json()["id"]
        wait_for(lambda: api(server, "GET", f"/api/kernels/{first}").status_code == 404,
                 timeout=30, what="the idle kernel culled")
        assert culled(server) == 1
        waiting = {pid for pid in pooled if alive(pid)}
        assert len(waiting) == 1  # the other one sat in the pool all along, and was spared
        time.sleep(2)

        # the pooled kernel that sat longer than the timeout is handed out: not culled at once
        before = server.kernel_pids()
        kid = api(server, "POST", "/api/kernels", json={"name": "python3"}).json()["id"]
        assert kid in [k["id"] for k in api(server, "GET", "/api/kernels").json()]
        time.sleep(2.5)  # more than cull_interval, less than cull_idle_timeout
        response = api(server, "GET", f"/api/kernels/{kid}")
        assert response.status_code == 200
        assert response.json()["execution_state"] != "dead"
        assert all(alive(pid) for pid in before), "a kernel was culled right after handout"
        assert culled(server) == 1
        assert all(alive(pid) for pid in waiting)
        assert ws_probe(server, kid)["pid"] in waiting
