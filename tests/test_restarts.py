"""No message lost after a restart, warm (a ready pooled kernel takes over) or cold, for every
way a client follows one. Real servers on 127.0.0.1 configured as the README says, real
websockets, real kernel clients."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import websocket
from conftest import MARKER, marked_kernels
from kernel_helpers import shut_down, tracebacks, write_kernelspec
from servers import (
    TOKEN,
    Server,
    api,
    free_port,
    jupyter_server,
    log_tracebacks,
    new_session,
    port_of,
    running,
    wait_for,
    write_notebook,
)

from hotpot_km import PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: Restarts per flow and kind: every flow is restarted 2 * RESTARTS times, warm and cold.
RESTARTS = 10
#: Imported by kernel_pool_init_python3.py only: a kernel that has it went through the pool
#: (by a call, not an import statement, which a fork template would do for cold starts too).
INIT_ONLY_MODULE = "wave"
BAD_LOG_LINES = ("Traceback", "Got events for closed stream", "Invalid Signature")
PORTS = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")

#: The first cell after each restart: a stream, a display_data and what the kernel looks like.
CELL = """\
import json, os, sys
from IPython.display import display
print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ),
                  "warm": %r in sys.modules}))
display({"text/plain": %r}, raw=True)
"""


def cell(token: str) -> str:
    return CELL % (INIT_ONLY_MODULE, token)


def write_init_file(config_dir: Path) -> None:
    (config_dir / "kernel_pool_init_python3.py").write_text(f"__import__({INIT_ONLY_MODULE!r})\n")


def check_cell(messages: list[dict[str, Any]], token: str) -> dict[str, Any]:
    """The cell's whole output arrived: busy, stdout, display_data, reply, idle."""
    kinds = [m["msg_type"] for m in messages]
    states = [m["content"]["execution_state"] for m in messages if m["msg_type"] == "status"]
    assert "busy" in states and "idle" in states, kinds
    reply = next(m for m in messages if m["msg_type"] == "execute_reply")
    assert reply["content"]["status"] == "ok", reply["content"]
    shown = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data"]
    assert shown == [token], kinds
    out = "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
    assert out, kinds
    return json.loads(out.strip().splitlines()[-1])


def check_restart(
    first: dict[str, Any], before: dict[str, Any], after: dict[str, Any], warm: bool
) -> None:
    """After a restart: a new process with the original request's cwd and env; a warm one came
    from the pool (with other ports and key), a cold one kept the kernel's ports and key."""
    assert after["pid"] != before["pid"]
    assert after["cwd"] == first["cwd"]
    assert after["env"] == first["env"]
    assert after["warm"] is warm
    if warm:
        assert after["connection"] != before["connection"]
    else:
        assert after["connection"] == before["connection"]


#: A kernel that could not bind a port jupyter_client chose for it, because another process on
#: the machine took it meanwhile (LocalPortCache only keeps ports apart within one process):
#: the kernel's own traceback in the log, not the server's.
def check_log(text: str, what: str) -> None:
    """No traceback but a kernel's on a port taken at start, and none of the other bad lines."""
    bad = log_tracebacks(text)
    bad += [line for line in text.splitlines()
            if any(b in line for b in BAD_LOG_LINES if b != "Traceback")]
    assert not bad, f"{what} log:\n" + "\n".join(bad[:20])


def connection(runtime: Path, kernel_id: str) -> dict[str, Any]:
    """Ports and key from the host's connection file of a kernel."""
    info = json.loads((runtime / f"kernel-{kernel_id}.json").read_text())
    return {name: info[name] for name in (*PORTS, "key")}


def ready_pooled(log: str, name: str = "python3") -> int:
    """Ready pooled kernels not yet handed out, counted from the server's debug log."""
    ready = log.count(f"hotpot_km: pooled {name!r} kernel ready")
    return ready - log.count(f"hotpot_km: handed out a pooled {name!r} kernel")


# -- websockets ----------------------------------------------------------------------------------


class WsClient:
    """A kernel websocket used as a frontend uses it (JSON protocol); keeps every message."""

    def __init__(self, server: Server, kernel_id: str, session_id: str | None) -> None:
        query = f"token={TOKEN}" + (f"&session_id={session_id}" if session_id else "")
        url = server.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?{query}"
        self.ws = websocket.create_connection(url, timeout=60)
        self.session = session_id or uuid.uuid4().hex
        self.received: list[dict[str, Any]] = []

    def execute(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                  "username": "test", "version": "5.3", "date": ""}
        content = {"code": code, "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                 "channel": "shell", "content": content}))
        return msg_id

    def answers(self, msg_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Every message answering ``msg_id``, once its execute_reply and idle status came."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [m for m in self.received if m["parent_header"].get("msg_id") == msg_id]
            kinds = [m["msg_type"] for m in mine]
            idle = any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                       for m in mine)
            if "execute_reply" in kinds and idle:
                return mine
            assert time.monotonic() < deadline, f"no complete answer in {timeout:g} s, got {kinds}"
            self.ws.settimeout(2)  # short reads: the server's pings would extend a long one
            try:
                self.received.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                continue

    def run(self, token: str) -> dict[str, Any]:
        return check_cell(self.answers(self.execute(cell(token))), token)

    def close(self) -> None:
        self.ws.close()


# -- the ways a frontend follows a restart -------------------------------------------------------


class Flow:
    """One kernel followed through restarts by one kind of client."""

    name = "c"

    def __init__(
        self, server: Server, kernel_id: str, work: Path, warm: bool, pooled: bool = True
    ) -> None:
        self.server = server
        self.kernel_id = kernel_id
        self.work = work
        self.warm = warm  # its restarts are warm
        self.pooled = pooled  # it was handed out by the pool
        self.cwd: str | None = None  # the working directory the kernel was started with
        self.watcher = server  # the server that watches the kernel's activity
        self.session = uuid.uuid4().hex
        self.sock: WsClient | None = WsClient(server, kernel_id, self.session)

    def before(self, token: str) -> None:
        """What the client does before the restart is posted."""

    def restart(self) -> None:
        response = api(self.server, "POST", f"/api/kernels/{self.kernel_id}/restart")
        assert response.status_code == 200, response.text

    def after(self, token: str) -> dict[str, Any]:
        """Run the first cell after the restart; returns what the kernel looks like."""
        assert self.sock is not None
        return self.sock.run(token)

    def last_activity(self) -> str:
        """The kernel model's ``last_activity`` (ISO 8601, UTC: ordered as text)."""
        return api(self.watcher, "GET", f"/api/kernels/{self.kernel_id}").json()["last_activity"]

    def reconnect(self, session_id: str | None) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = WsClient(self.server, self.kernel_id, session_id)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class KeepSocketOpen(Flow):
    """(c) keep the websocket open through the restart and go on using it; (f) the same
    through a gateway-mode server, whose proxy websocket to the gateway stays open."""

    name = "c"


class CloseThenReconnectSameSession(Flow):
    """(a) close the websocket, POST restart, reconnect with the same session_id. What the
    kernel sent while no socket was open is buffered by the server and must be replayed."""

    name = "a"

    def before(self, token: str) -> None:
        assert self.sock is not None
        flag = self.work / f"late-{token}"
        code = (f"import time, pathlib\ntime.sleep(0.2)\nprint('late {token}')\n"
                f"pathlib.Path({str(flag)!r}).touch()")
        self.late = (f"late {token}", self.sock.execute(code))
        self.close()
        wait_for(flag.exists, what="the late cell ran")
        wait_for(lambda: api(self.server, "GET", f"/api/kernels/{self.kernel_id}").json()[
            "execution_state"] == "idle", what="the late cell finished")

    def after(self, token: str) -> dict[str, Any]:
        self.reconnect(self.session)
        seen = super().after(token)
        assert self.sock is not None
        text, msg_id = self.late
        replayed = [m for m in self.sock.received if m["parent_header"].get("msg_id") == msg_id]
        kinds = [m["msg_type"] for m in replayed]
        assert "execute_reply" in kinds, f"buffered messages lost: {kinds}"
        assert any(m["msg_type"] == "stream" and m["content"]["text"].strip() == text
                   for m in replayed), f"buffered output lost: {kinds}"
        return seen


class CloseThenReconnectNewSession(Flow):
    """(b) close the websocket, POST restart, reconnect without a session id."""

    name = "b"

    def before(self, token: str) -> None:
        self.close()

    def after(self, token: str) -> dict[str, Any]:
        self.reconnect(None)
        return super().after(token)


class JupyterLabOrder(Flow):
    """(e) JupyterLab 4: POST restart with the socket open, then reconnect, same session_id."""

    name = "e"

    def after(self, token: str) -> dict[str, Any]:
        self.reconnect(self.session)
        return super().after(token)


def follow(flows: list[Flow], runtime: Path, ready: Callable[[], int]) -> None:
    """Restart each flow's kernel RESTARTS times, flows in parallel (warm restarts one at a
    time, each once a ready pooled kernel exists), checking every first cell afterwards."""
    lock = threading.Lock()

    def one(flow: Flow) -> None:
        assert flow.sock is not None
        first = flow.sock.run("first")
        assert first["warm"] is flow.pooled
        assert flow.cwd in (None, first["cwd"])
        first["connection"] = connection(runtime, flow.kernel_id)
        last = first
        for i in range(RESTARTS):
            token = f"{flow.name}{i}"
            where = f"flow ({flow.name}), {'warm' if flow.warm else 'cold'} restart {i + 1}"
            try:
                flow.before(token)
                if flow.warm:
                    with lock:
                        wait_for(lambda: ready() > 0, what="a ready pooled kernel")
                        flow.restart()
                else:
                    flow.restart()
                restarted = flow.last_activity()
                seen = flow.after(token)
                seen["connection"] = connection(runtime, flow.kernel_id)
                check_restart(first, last, seen, flow.warm)
                if flow.warm:  # the server watches the new process: the cell counts as activity
                    wait_for(lambda since=restarted: flow.last_activity() > since, what="activity")
            except AssertionError as error:
                raise AssertionError(f"{where}: {error}") from None
            last = seen
        flow.close()

    with ThreadPoolExecutor(len(flows)) as pool:
        for done in [pool.submit(one, flow) for flow in flows]:
            done.result()


@contextmanager
def pooled_jupyter_server(
    jupyter_dirs: dict[str, Path], tmp_path: Path, config: str
) -> Iterator[tuple[Server, Path]]:
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 4}\n'
        "c.PooledKernelManager._wait_at_startup = True\n" + config
    )
    write_init_file(jupyter_dirs["config"])
    root = tmp_path / "root"
    for name in "abce":
        write_notebook(root / name / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root, "--ServerApp.log_level=DEBUG")
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        yield server, root


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_jupyter_server_restarts_lose_nothing(jupyter_dirs, tmp_path, warm):
    """Flows (a), (b), (c) and (e), each on its own handed-out kernel, restarted RESTARTS
    times. Cold: warm restarts are off while pooled kernels are ready."""
    if warm:  # with the README's optional websocket class
        config = ("c.PooledKernelManager.fill_delay = 0.0\nc.PooledKernelManager.max_warming = 2\n"
                  "c.ServerApp.kernel_websocket_connection_class = "
                  '"hotpot_km.websocket.NoDelayWebsocketConnection"\n')
    else:
        config = ("c.PooledKernelManager.fill_delay = 3600.0\n"
                  "c.PooledKernelManager.warm_restarts = False\n")
    with pooled_jupyter_server(jupyter_dirs, tmp_path, config) as (server, root):
        # (a warm-up that failed at startup, e.g. on a port another process took, is retried)
        wait_for(lambda: ready_pooled(server.log()) >= 4, what="a full pool")
        flows = []
        for flow_class in (CloseThenReconnectSameSession, CloseThenReconnectNewSession,
                           KeepSocketOpen, JupyterLabOrder):
            kid = new_session(server, f"{flow_class.name}/nb.ipynb")
            flows.append(flow_class(server, kid, jupyter_dirs["work"], warm))
            flows[-1].cwd = str(root / flow_class.name)
        follow(flows, jupyter_dirs["runtime"], lambda: ready_pooled(server.log()))
        log = server.log()
        check_log(log, "server")
        for flow in flows:  # each restart's own kernel_info_request was answered
            assert log.count(f"Kernel info reply received: {flow.kernel_id}") == RESTARTS
            # every websocket of the flow had TCP_NODELAY with the class, none without it
            nodelay = log.count(f"websocket of kernel {flow.kernel_id}: TCP_NODELAY=1")
            assert nodelay >= 1 if warm else nodelay == 0
    assert not marked_kernels()


@pytest.mark.slow
def test_jupyter_server_in_front_of_a_pooled_kernel_gateway(jupyter_dirs, tmp_path, monkeypatch):
    """(f) a jupyter_server in gateway mode in front of Kernel Gateway 3 using the pool:
    restarts posted to the front server while its websocket (and its proxy websocket to the
    gateway) stays open. Warm: a pooled kernel; cold: a kernelspec without a pool."""
    write_kernelspec(jupyter_dirs["data"], "coldpy")
    write_init_file(jupyter_dirs["config"])
    # Kernel Gateway starts kernels with PATH, the whitelisted variables and the request's
    # KERNEL_* ones; the pool gets the same environment (README, "Jupyter Kernel Gateway").
    pool_env = {"PATH": os.environ["PATH"], MARKER: os.environ[MARKER]}
    (jupyter_dirs["config"] / "jupyter_kernel_gateway_config.py").write_text(
        'c.KernelGatewayApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        f"c.KernelGatewayApp.env_process_whitelist = [{MARKER!r}]\n"
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        f'c.PooledKernelManager.pool_kwargs = {{"python3": {{"env": {pool_env!r}}}}}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
        "c.PooledKernelManager.fill_delay = 0.0\n"
    )
    gateway_dir = tmp_path / "gateway"
    gateway_dir.mkdir()
    kg_port = free_port()
    kg_argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
               f"--KernelGatewayApp.port={kg_port}", "--KernelGatewayApp.port_retries=0",
               f"--KernelGatewayApp.auth_token={TOKEN}", "--KernelGatewayApp.log_level=DEBUG"]
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("KERNEL_HOTPOT_TEST", uuid.uuid4().hex)  # sent by the front server
    front_argv = jupyter_server(tmp_path, root, f"--GatewayClient.url=http://127.0.0.1:{kg_port}",
                                f"--GatewayClient.auth_token={TOKEN}")
    with running(kg_argv, cwd=gateway_dir, port=kg_port, ready_path="/api",
                 log=tmp_path / "gateway.log") as gateway, \
         running(front_argv, cwd=root, port=port_of(front_argv),
                 ready_path=f"/api/status?token={TOKEN}", log=tmp_path / "front.log") as front:
        wait_for(lambda: ready_pooled(gateway.log()) >= 2, what="a full pool")
        flows = []
        for name, warm in (("python3", True), ("coldpy", False)):
            response = api(front, "POST", "/api/kernels", json={"name": name})
            assert response.status_code == 201, front.log()[-3000:]
            kid = response.json()["id"]
            flows.append(KeepSocketOpen(front, kid, jupyter_dirs["work"], warm, pooled=warm))
            flows[-1].watcher = gateway
        follow(flows, jupyter_dirs["runtime"], lambda: ready_pooled(gateway.log()))
        check_log(front.log(), "front server")
        log = gateway.log()
        check_log(log, "gateway")
        for flow in flows:
            assert log.count(f"Kernel info reply received: {flow.kernel_id}") == RESTARTS
            assert flow.kernel_id in log
    assert not marked_kernels()


# -- a plain PooledKernelManager ----------------------------------------------------------------


async def run_cell(km: PooledKernelManager, kernel_id: str, token: str) -> dict[str, Any]:
    """(d) The cell through a KernelClient created now, as a notebook runner does."""
    client = km.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        messages: list[dict[str, Any]] = []
        reply = await client.execute_interactive(cell(token), timeout=60,
                                                 output_hook=messages.append)
        return check_cell([*messages, reply], token)
    finally:
        client.stop_channels()


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_restart_then_a_new_kernel_client(jupyter_dirs, caplog, warm):
    """(d) restart_kernel() on a plain PooledKernelManager, then a new KernelClient. A ready
    pooled kernel exists at every restart; cold: warm_restarts is off."""
    write_init_file(jupyter_dirs["config"])
    caplog.set_level(logging.DEBUG, logger="hotpot_test")
    km = PooledKernelManager(kernel_pools={"python3": 1}, fill_delay=0, warm_restarts=warm)
    km.log = logging.getLogger("hotpot_test")
    try:
        await km.wait_for_pool()
        env = dict(os.environ, RESTART_TEST=uuid.uuid4().hex)
        kid = await km.start_kernel(cwd=str(jupyter_dirs["data"]), env=env)
        kernel = km.get_kernel(kid)
        first = await run_cell(km, kid, "first")
        assert first["warm"] and first["env"]["RESTART_TEST"] == env["RESTART_TEST"]
        first["connection"] = {**kernel.get_connection_info(), "file": kernel.connection_file}
        last = first
        for i in range(RESTARTS):
            await km.wait_for_pool()
            await km.restart_kernel(kid)
            seen = await run_cell(km, kid, f"d{i}")
            seen["connection"] = {**kernel.get_connection_info(), "file": kernel.connection_file}
            try:
                check_restart(first, last, seen, warm)
            except AssertionError as error:
                what = "warm" if warm else "cold"
                raise AssertionError(f"{what} restart {i + 1}: {error}") from None
            last = seen
    finally:
        await shut_down(km)
    assert not tracebacks(caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
