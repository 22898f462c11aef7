"""Pooled kernels on real gateways (Kernel Gateway 3, Enterprise Gateway 3.3), reached
through jupyter_server in gateway mode configured as users write it."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gateways import GATEWAYS, gateway, local_server
from servers import KernelSocket, Server, api, new_session, wait_for, write_notebook, ws_probe

from hotpot_km.gateway import POOL_MARKER

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: A cell whose every kind of output must reach the client as from a cold kernel.
OUTPUTS = (
    "import sys\n"
    "from IPython.display import display, HTML\n"
    "print('out 1'); print('out 2')\n"
    "print('err', file=sys.stderr)\n"
    "display(HTML('<b>shown</b>'))\n"
    "40 + 2"
)


def outputs(server: Server, kernel_id: str, code: str) -> list[tuple[str, Any]]:
    """Every iopub output of one execution with the reply's status and count: the text of
    each stream, then the other outputs in order (a kernel flushes stdout and stderr on
    their own schedules, so how the two interleave differs from run to run)."""
    sock = KernelSocket(server, kernel_id)
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": sock.session,
              "username": "test", "version": "5.3", "date": ""}
    sock.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                             "channel": "shell",
                             "content": {"code": code, "silent": False, "store_history": True,
                                         "user_expressions": {}, "allow_stdin": False}}))
    seen: list[tuple[str, Any]] = []
    streams = {"stdout": "", "stderr": ""}
    reply = idle = None
    deadline = time.monotonic() + 60
    try:
        while reply is None or idle is None:
            assert time.monotonic() < deadline, "no reply from the kernel"
            msg = json.loads(sock.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_reply":
                reply = (kind, content["status"], content["execution_count"])
            elif kind == "status":
                idle = content["execution_state"] == "idle" or None
            elif kind == "stream":
                streams[content["name"]] += content["text"]
            elif kind in ("display_data", "execute_result", "error"):
                seen.append((kind, {k: v for k, v in content.items() if k != "transient"}))
    finally:
        sock.close()
    return [*streams.items(), *seen, reply]


def comparable(seen: dict[str, Any], kernel_id: str) -> dict[str, Any]:
    """A kernel's state without what differs between any two kernels (pid, own id)."""
    env = dict(seen["env"])
    if env.get("KERNEL_ID") == kernel_id:  # Enterprise Gateway tells each kernel its id
        env["KERNEL_ID"] = "<own id>"
    return {"cwd": seen["cwd"], "env": env, "session": seen["session"],
            "names": seen["names"], "execution_count": seen["execution_count"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", GATEWAYS)
def test_sessions_through_a_gateway_get_pooled_kernels_that_look_cold(kind, jupyter_dirs, tmp_path):
    root = tmp_path / "root"
    write_notebook(root / "sub" / "nb.ipynb", "1+1")
    write_notebook(root / "other" / "b.ipynb", "1+1")
    with gateway(kind, tmp_path / "gateway") as gw:
        # The reference: the same session through jupyter_server's own gateway code, cold.
        with local_server(gw, tmp_path / "cold", root, pooled=False) as cold:
            cold_id = new_session(cold, "sub/nb.ipynb")
            cold_seen = comparable(ws_probe(cold, cold_id), cold_id)
            cold_outputs = outputs(cold, cold_id, OUTPUTS)
        assert cold_outputs[:2] == [("stdout", "out 1\nout 2\n"), ("stderr", "err\n")]
        assert cold_seen["session"] == str(root / "sub" / "nb.ipynb")  # the gateway passes it

        with local_server(gw, tmp_path / "pooled", root, pooled=True) as server:
            pooled = gw.kernel_ids()
            assert len(pooled) == 2, gw.server.log()[-3000:]
            envs = gw.kernel_envs()
            # no marker unless configured: a pooled kernel's process env holds nothing of
            # this server's that a cold kernel's lacks
            assert len(envs) == 2 and not any(POOL_MARKER in env for env in envs.values()), envs
            assert api(server, "GET", "/api/kernels").json() == []  # not listed locally

            kernel_id = new_session(server, "sub/nb.ipynb")
            assert kernel_id in pooled
            seen = comparable(ws_probe(server, kernel_id), kernel_id)
            assert seen == cold_seen, (sorted(set(seen["env"].items()) ^ set(cold_seen["env"].items())))
            assert outputs(server, kernel_id, OUTPUTS) == cold_outputs
            assert [k["id"] for k in api(server, "GET", "/api/kernels").json()] == [kernel_id]

            # a restart is the gateway's; the kernel gets its session's env and cwd again
            response = api(server, "POST", f"/api/kernels/{kernel_id}/restart")
            assert response.status_code == 200, response.text
            assert comparable(ws_probe(server, kernel_id), kernel_id) == cold_seen

            # pooled kernels deleted behind the pool's back are never handed out...
            wait_for(lambda: len(gw.kernel_ids() - {kernel_id}) == 2, what="pool refilled")
            waiting = gw.kernel_ids() - {kernel_id}
            for lost in waiting:
                assert gw.api("DELETE", f"/api/kernels/{lost}").status_code == 204
            other = new_session(server, "other/b.ipynb")
            assert other not in waiting
            assert ws_probe(server, other)["cwd"] == cold_seen["cwd"]
            # ...and are replaced
            wait_for(lambda: len(gw.kernel_ids() - {kernel_id, other}) == 2, what="replaced")

            # SIGTERM: the server deletes its pooled kernels on the gateway, and its own
            assert server.stop() == 0
        assert gw.kernel_ids() == set(), gw.server.log()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", GATEWAYS)
def test_the_gateway_culler_spares_waiting_pooled_kernels(kind, jupyter_dirs, tmp_path: Path):
    cull = ("--MappingKernelManager.cull_idle_timeout=3", "--MappingKernelManager.cull_interval=1",
            "--MappingKernelManager.cull_connected=True")
    root = tmp_path / "root"
    root.mkdir()
    with gateway(kind, tmp_path / "gateway", *cull) as gw:
        keepalive = ("c.PooledGatewayMappingKernelManager.keepalive_interval = 1.0\n"
                     "c.PooledGatewayMappingKernelManager.pool_marker = '{host}:{pid}'\n")
        with local_server(gw, tmp_path / "pooled", root, pooled=True, extra=keepalive) as server:
            pooled = gw.kernel_ids()
            assert len(pooled) == 2
            # the marker an admin asked for tells the pool's kernels apart on the gateway
            marker = f"{socket.gethostname()}:{server.proc.pid}"
            envs = gw.kernel_envs()
            assert sorted(env.get(POOL_MARKER) for env in envs.values()) == [marker] * 2, envs
            # an idle kernel on the same gateway is culled meanwhile: the culler runs
            started = gw.api("POST", "/api/kernels",
                             json={"name": "python3", "env": {"KERNEL_USERNAME": "hotpot-user"}})
            assert started.status_code == 201, started.text
            idle = started.json()["id"]
            wait_for(lambda: idle not in gw.kernel_ids(), timeout=60, what="idle kernel culled")
            time.sleep(4)  # more than cull_idle_timeout again
            assert gw.kernel_ids() == pooled, gw.server.log()[-3000:]
