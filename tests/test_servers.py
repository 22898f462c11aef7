"""The pool inside real servers, configured exactly as users write it."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest
from conftest import marked_kernels
from servers import (
    TOKEN,
    KernelSocket,
    api,
    free_port,
    jupyter_server,
    log_tracebacks,
    port_of,
    running,
)
from servers import write_notebook as notebook

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

VOILA_JSON = """{
  "VoilaConfiguration": {"multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
  "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}
}
"""

PROBE = (
    "import os, json\n"
    "print(json.dumps({'cwd': os.getcwd(), 'session': globals().get('__session__'),"
    " 'env': dict(os.environ), 'pid': os.getpid()}))"
)


def server_config(config_dir: Path, pools: int = 2, extra: str = "") -> None:
    (config_dir / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        f'c.PooledKernelManager.kernel_pools = {{"python3": {pools}}}\n'
        "c.PooledKernelManager._wait_at_startup = True\n" + extra
    )


def probe_ws(server, kernel_id: str) -> dict:
    sock = KernelSocket(server, kernel_id)
    try:
        out, reply = sock.run(PROBE)
    finally:
        sock.close()
    assert reply["status"] == "ok", reply
    data = json.loads(out.strip().splitlines()[-1])
    data["execution_count"] = reply["execution_count"]
    return data


def start_session(server, path: str) -> str:
    response = api(
        server,
        "POST",
        "/api/sessions",
        json={"path": path, "type": "notebook", "name": path.rsplit("/", 1)[-1],
              "kernel": {"name": "python3"}},
    )
    assert response.status_code == 201, response.text
    return response.json()["kernel"]["id"]


def test_jupyter_server_session_restart_and_listing(jupyter_dirs, tmp_path):
    server_config(jupyter_dirs["config"])
    root = tmp_path / "root"
    notebook(root / "sub" / "nb.ipynb", "1+1")
    notebook(root / "other.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2
        assert api(server, "GET", "/api/kernels").json() == []

        kid = start_session(server, "sub/nb.ipynb")
        seen = probe_ws(server, kid)
        assert seen["pid"] in pooled
        assert seen["cwd"] == str(root / "sub")
        assert seen["env"]["JPY_SESSION_NAME"].endswith("sub/nb.ipynb")
        assert seen["session"] == seen["env"]["JPY_SESSION_NAME"]
        assert seen["execution_count"] == 1
        assert [k["id"] for k in api(server, "GET", "/api/kernels").json()] == [kid]
        assert api(server, "GET", f"/api/kernels/{kid}").status_code == 200

        # a second session: its own env, another pooled kernel
        kid2 = start_session(server, "other.ipynb")
        seen2 = probe_ws(server, kid2)
        assert seen2["pid"] in pooled and seen2["pid"] != seen["pid"]
        assert seen2["cwd"] == str(root)
        assert seen2["env"]["JPY_SESSION_NAME"].endswith("other.ipynb")

        # restart keeps cwd and env
        response = api(server, "POST", f"/api/kernels/{kid}/restart")
        assert response.status_code == 200, response.text
        again = probe_ws(server, kid)
        assert again["pid"] != seen["pid"]
        assert again["cwd"] == seen["cwd"]
        assert again["env"]["JPY_SESSION_NAME"] == seen["env"]["JPY_SESSION_NAME"]
        assert again["session"] == seen["session"]
        assert sorted(k["id"] for k in api(server, "GET", "/api/kernels").json()) == sorted(
            [kid, kid2]
        )
    assert not marked_kernels()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_jupyter_server_exit_leaves_no_kernel(jupyter_dirs, tmp_path, sig):
    server_config(jupyter_dirs["config"], pools=2)
    root = tmp_path / "root"
    notebook(root / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        start_session(server, "nb.ipynb")  # one handed out, one refilling
        assert marked_kernels()
        server.stop(sig)
    assert not marked_kernels()


def voila(app: Path, notebook_name: str, port: int) -> list[str]:
    return [sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", notebook_name]


def test_voila_with_the_seed_voila_json(jupyter_dirs, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(VOILA_JSON)
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text("import wave\n")
    notebook(
        app / "dashboard.ipynb",
        "import os, sys\n"
        "print('PREIMPORTED', 'wave' in sys.modules)\n"
        "print('CWD', os.getcwd())\n"
        "print('PID', os.getpid())\n"
        "print('URL', os.environ.get('VOILA_REQUEST_URL'))",
    )
    port = free_port()
    with running(voila(app, "dashboard.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 3
        import requests

        pids = []
        for query in ("?a=1", "?b=2"):
            page = requests.get(server.url + "/" + query, timeout=120)
            assert page.status_code == 200, server.log()[-3000:]
            text = page.text
            assert "PREIMPORTED True" in text
            assert f"CWD {app}" in text
            pid = int(re.search(r"PID (\d+)", text).group(1))
            assert pid in pooled
            pids.append(pid)
            url = re.search(r"URL (\S+)", text).group(1)
            assert query in url  # each kernel sees its own request, never the other's
        assert pids[0] != pids[1]
        assert not log_tracebacks(server.log())
    assert not marked_kernels()


def test_jupyter_server_with_transport_encryption(jupyter_dirs, tmp_path):
    """jupyter_server passes transport_encryption; pooled kernels are launched with the same
    policy, and their CurveZMQ keys travel with the handout."""
    server_config(
        jupyter_dirs["config"], extra='c.MappingKernelManager.transport_encryption = "required"\n'
    )
    root = tmp_path / "root"
    notebook(root / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = server.kernel_pids()
        assert len(pooled) == 2
        kid = start_session(server, "nb.ipynb")
        seen = probe_ws(server, kid)
        assert seen["pid"] in pooled
        assert seen["cwd"] == str(root)
        runtime = Path(jupyter_dirs["runtime"])
        connection = json.loads((runtime / f"kernel-{kid}.json").read_text())
        assert connection.get("curve_publickey")
    assert not marked_kernels()
