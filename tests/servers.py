"""Real servers for the tests: started as subprocesses on 127.0.0.1, talked to over HTTP/WS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import websocket
from conftest import kernel_children
from ports import free_port

TOKEN = "hotpot-test-token"


class Server:
    """A running server process; ``url`` is its base URL."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kernel_pids(self) -> set[int]:
        """Kernel processes of the server: its children, or its fork templates' (see
        ``conftest.kernel_children``)."""
        return {p.pid for p in kernel_children(self.proc.pid)}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if REENTRANT in self.log() and self.proc.poll() is None:
                # Voila logs from its SIGTERM handler: a signal that lands while the server
                # writes a log line raises in the handler, which then never stops the loop
                # (upstream; a user's second Ctrl-C or SIGTERM stops it). The same here.
                self.proc.send_signal(sig)
                try:
                    return self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop on {sig}:\n{self.log()[-3000:]}") from None


#: What Python's logging prints when a signal handler logs while the same stream is written.
REENTRANT = "RuntimeError: reentrant call inside <_io.BufferedWriter name='<stderr>'>"


@contextmanager
def running(
    argv: Sequence[str],
    *,
    cwd: Path,
    port: int,
    ready_path: str | None,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[Server]:
    """Start ``argv`` and wait until ``ready_path`` answers (None: a process that serves no
    HTTP, not waited for); stop it (SIGTERM) afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env or dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while ready_path is not None:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{server.log()[-5000:]}")
            try:
                response = requests.get(server.url + ready_path, timeout=5)
                if response.status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not up in time:\n{server.log()[-5000:]}")
            time.sleep(0.2)
        yield server
    except BaseException:
        try:
            server.stop()
        except AssertionError as error:  # keep the test's own error, not this one
            print(error, file=sys.stderr)
        raise
    else:
        server.stop()


def jupyter_server(tmp: Path, root: Path, *extra: str) -> list[str]:
    port = free_port()
    return [
        sys.executable,
        "-m",
        "jupyter_server",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        *extra,
    ]


def jupyter_lab(tmp: Path, root: Path, *extra: str) -> list[str]:
    """``jupyter lab`` as :func:`jupyter_server` starts the bare server; it reaches nothing
    outside (no news, no update checks)."""
    argv = jupyter_server(tmp, root, *extra)
    argv[2] = "jupyterlab"
    argv += ["--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    return argv


def port_of(argv: Sequence[str]) -> int:
    for arg in argv:
        if arg.startswith(("--ServerApp.port=", "--port=")):
            return int(arg.split("=", 1)[1])
    raise ValueError("no port in argv")


class KernelSocket:
    """A jupyter_server kernel websocket that runs code and collects stdout."""

    def __init__(self, server: Server, kernel_id: str, token: str | None = TOKEN,
                 header: list[str] | None = None) -> None:
        query = f"session_id={uuid.uuid4().hex}" + (f"&token={token}" if token else "")
        url = server.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?{query}"
        self.ws = websocket.create_connection(url, timeout=60, header=header)
        self.session = uuid.uuid4().hex

    def _send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                  "username": "test", "version": "5.3", "date": ""}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                 "channel": "shell", "content": content}))
        return msg_id

    def wait_live(self, timeout: float = 60) -> None:
        """Until this websocket hears the kernel on IOPub again. After a restart in place (same
        ports) jupyter_server's sockets reconnect by themselves, IOPub possibly a moment after
        shell, so a cell sent at once could lose its first output, cold kernel or not:
        jupyter_server's ``nudge`` does the same for a new websocket, and JupyterLab
        reconnects its websocket after every restart."""
        deadline = time.monotonic() + timeout
        reads = self.ws.gettimeout()
        try:
            while True:
                assert time.monotonic() < deadline, "the websocket never heard the kernel again"
                msg_id = self._send("kernel_info_request", {})
                retry = time.monotonic() + 0.2
                while (left := retry - time.monotonic()) > 0:
                    self.ws.settimeout(left)
                    try:
                        msg = json.loads(self.ws.recv())
                    except websocket.WebSocketTimeoutException:
                        break
                    if (msg.get("channel") == "iopub"
                            and (msg.get("parent_header") or {}).get("msg_id") == msg_id):
                        return
        finally:
            self.ws.settimeout(reads)

    def run(self, code: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        msg_id = self._send("execute_request", {"code": code, "silent": False,
                                                "store_history": True, "user_expressions": {},
                                                "allow_stdin": False})
        out: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            assert time.monotonic() < deadline, "no reply from the kernel"
            msg = json.loads(self.ws.recv())
            if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out), reply

    def close(self) -> None:
        self.ws.close()


def api(server: Server, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"token {TOKEN}"}
    response = requests.request(method, server.url + path, headers=headers, timeout=120, **kwargs)
    return response


def voila_command(notebook_name: str, port: int) -> list[str]:
    """Voila serving one notebook on 127.0.0.1 (run it in the notebook's directory)."""
    return [sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", notebook_name]


def websocket_status(server: Server, kernel_id: str, token: str | None = TOKEN) -> int | None:
    """HTTP status with which the kernel websocket handshake was refused; None if accepted."""
    try:
        sock = KernelSocket(server, kernel_id, token=token)
    except websocket.WebSocketBadStatusException as error:
        return error.status_code
    sock.close()
    return None


def connection_file_ids(directory: Path) -> set[str]:
    """Kernel ids named by the ``kernel-<id>.json`` connection files in ``directory`` (and below)."""
    return {p.name[len("kernel-"):-len(".json")] for p in Path(directory).rglob("kernel-*.json")}


def write_notebook(path: Path, *cells: str) -> None:
    """A python3 notebook with one code cell per source string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                            "language": "python"}},
                "cells": [
                    {"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [],
                     "execution_count": None, "source": src}
                    for i, src in enumerate(cells)
                ],
            }
        )
    )


WS_PROBE = (
    "import os, json\n"
    "print(json.dumps({'cwd': os.getcwd(), 'session': globals().get('__session__'),"
    " 'env': dict(os.environ), 'pid': os.getpid(),"
    " 'names': sorted(k for k in globals() if not k.startswith('_'))}))"
)


def ws_probe(server: Server, kernel_id: str) -> dict[str, Any]:
    """cwd, env, session, pid and user names of a kernel, asked over its websocket."""
    sock = KernelSocket(server, kernel_id)
    try:
        out, reply = sock.run(WS_PROBE)
    finally:
        sock.close()
    assert reply["status"] == "ok", reply
    data = json.loads(out.strip().splitlines()[-1])
    data["execution_count"] = reply["execution_count"]
    return data


def ws_run(server: Server, kernel_id: str, code: str) -> dict[str, Any]:
    sock = KernelSocket(server, kernel_id)
    try:
        _, reply = sock.run(code)
    finally:
        sock.close()
    return reply


def new_session(server: Server, path: str, kernel: dict[str, Any] | None = None) -> str:
    """POST /api/sessions for a notebook path; returns the session's kernel id."""
    response = api(
        server,
        "POST",
        "/api/sessions",
        json={"path": path, "type": "notebook", "name": path.rsplit("/", 1)[-1],
              "kernel": kernel or {"name": "python3"}},
    )
    assert response.status_code == 201, response.text
    return response.json()["kernel"]["id"]


def wait_for(predicate: Any, timeout: float = 60, what: str = "") -> None:
    """Poll a sync predicate until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in {timeout:g} s: {what}"
        time.sleep(0.1)


TRACEBACK = "Traceback (most recent call last):"
#: The exception line that ends a traceback: a class name (maybe dotted), then its message.
EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*[A-Z]\w*[a-z]\w*(?::|$)")
#: What a kernel prints when it dies at start because another process took one of the ports
#: jupyter_client picked for it (it picks them in the process that starts the kernel, so
#: test workers and servers side by side race for them); the pool, or jupyter_client's
#: restarter, starts another.
PORT_TAKEN = "Address already in use"


def log_tracebacks(log: str) -> list[str]:
    """Each traceback in a server's log, up to its exception line, but that of a kernel that
    died at start on a port taken meanwhile (:data:`PORT_TAKEN`). Kernels write to the
    server's stream, so other processes' lines may fall inside a traceback: server log
    lines ("[...") and lines of other output are passed over while looking for its end."""
    lines = log.splitlines()
    found = []
    for start, line in enumerate(lines):
        if TRACEBACK not in line:
            continue
        block = [line]
        for following in lines[start + 1 : start + 400]:
            if TRACEBACK in following:
                break
            block.append(following)
            if following[:1] not in ("", " ", "\t", "[") and EXCEPTION_LINE.match(following):
                break
        if PORT_TAKEN not in block[-1]:
            found.append("\n".join(block))
    return found
