"""Server-level measurements over HTTP and websockets, as a browser or JupyterLab would see them.

The servers run as subprocesses (``apps.py``) with the python of the system under
test; the clients here run in the project's venv, the same for every system.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import requests
import websocket
from environment import HERE, JupyterDirs, Process, free_port

TOKEN = uuid.uuid4().hex
SETTLE = 0.3  # seconds of quiet before each measured request: refills and shutdowns finish first


class ServerError(RuntimeError):
    """A server did not come up or answered a setup request with an error."""


class Server:
    """A jupyter_server or Voila subprocess on 127.0.0.1 with the ``/bench/pool`` endpoint."""

    def __init__(self, kind: str, python: Path | str, dirs: JupyterDirs, args: Sequence[str],
                 *, cwd: Path, log: Path, token: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"token {TOKEN}"
        if kind == "server":
            argv = [f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                    "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
                    f"--ServerApp.root_dir={cwd}", "--ServerApp.open_browser=False",
                    "--ServerApp.allow_root=True", *args]
        else:
            argv = ["--no-browser", f"--port={self.port}", "--Voila.ip=127.0.0.1",
                    "--Voila.port_retries=0", *args]
        self.warmup_failures: list[str] = []
        self.process = Process([str(python), str(HERE / "apps.py"), kind, *argv],
                               env={**dirs.env(), **(env or {})}, cwd=cwd, log=log)

    def wait_up(self, timeout: float = 180) -> float:
        """Wait until the server answers; returns when (perf_counter) it first did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.proc.poll() is not None:
                raise ServerError(f"server exited early:\n{self.process.log()}")
            try:
                if self.http.get(self.url + "/bench/pool?nowait=1", timeout=5).status_code == 200:
                    return time.perf_counter()
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"server not up in {timeout} s:\n{self.process.log()}")
            time.sleep(0.05)

    def wait_pool(self, settle: float = SETTLE) -> None:
        response = self.http.get(self.url + "/bench/pool", timeout=600)
        if response.status_code != 200:
            raise ServerError(f"the pool did not fill: {response.text}")
        self.warmup_failures += response.json().get("warmup_failures", [])
        time.sleep(settle)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=300, **kwargs)

    def stop(self) -> int | None:
        self.http.close()
        return self.process.stop()


class KernelSocket:
    """A jupyter_server kernel websocket; opening it waits for the kernel as JupyterLab does."""

    def __init__(self, server: Server, kernel_id: str) -> None:
        self.session = uuid.uuid4().hex
        url = (server.url.replace("http", "ws", 1)
               + f"/api/kernels/{kernel_id}/channels?session_id={self.session}&token={TOKEN}")
        self.ws = websocket.create_connection(url, timeout=300)

    def request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                  "username": "bench", "version": "5.3", "date": ""}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                 "channel": "shell", "content": content}))
        while True:
            msg = json.loads(self.ws.recv())
            if (msg.get("channel") == "shell"
                    and msg.get("parent_header", {}).get("msg_id") == msg_id):
                return msg

    def execute(self, code: str) -> dict[str, Any]:
        reply = self.request("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        if reply["content"]["status"] != "ok":
            raise ServerError(f"execution failed: {reply['content']}")
        return reply

    def execute_with_output(self, code: str) -> str:
        """Run ``code``; return its stdout once both its execute_reply and its idle status
        arrived (the output comes between its busy and idle status)."""
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                  "username": "bench", "version": "5.3", "date": ""}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                 "channel": "shell", "content": {
                                     "code": code, "silent": False, "store_history": True,
                                     "user_expressions": {}, "allow_stdin": False,
                                     "stop_on_error": True}}))
        out, replied, idle = [], False, False
        while not (replied and idle):
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise ServerError(f"execution failed: {msg['content']}")
                replied = True
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out)

    def close(self) -> None:
        self.ws.close()


def new_session(server: Server, path: str, kernel_name: str = "python3") -> tuple[str, str]:
    response = server.api("POST", "/api/sessions", json={
        "path": path, "type": "notebook", "name": path.rsplit("/", 1)[-1],
        "kernel": {"name": kernel_name}})
    if response.status_code != 201:
        raise ServerError(f"POST /api/sessions: HTTP {response.status_code} {response.text[:300]}")
    model = response.json()
    return model["id"], model["kernel"]["id"]


def sessions(server: Server, reps: int, kernel_name: str = "python3") -> list[float]:
    """POST /api/sessions → websocket → first execute_reply of ``1+1``; session deleted after."""
    samples = []
    for rep in range(reps):
        server.wait_pool()
        t0 = time.perf_counter()
        session_id, kernel_id = new_session(server, f"notebooks/session-{rep}.ipynb",
                                            kernel_name)
        sock = KernelSocket(server, kernel_id)
        sock.execute("1+1")
        samples.append(time.perf_counter() - t0)
        sock.close()
        server.api("DELETE", f"/api/sessions/{session_id}")
    return samples


def restarts(server: Server, reps: int) -> dict[str, list[float]]:
    """POST /api/kernels/<id>/restart → a new websocket (JupyterLab reconnects after a
    restart) → the first execute_reply, with its output; the POST alone is a breakdown."""
    session_id, kernel_id = new_session(server, "notebooks/restarted.ipynb")
    ready, post = [], []
    for rep in range(reps):
        server.wait_pool()
        t0 = time.perf_counter()
        response = server.api("POST", f"/api/kernels/{kernel_id}/restart")
        posted = time.perf_counter()
        if response.status_code != 200:
            raise ServerError(f"restart: HTTP {response.status_code} {response.text[:300]}")
        sock = KernelSocket(server, kernel_id)
        out = sock.execute_with_output(f"print('restarted', {rep})")
        ready.append(time.perf_counter() - t0)
        post.append(posted - t0)
        sock.close()
        if out != f"restarted {rep}\n":
            raise ServerError(f"the first request after a restart lost its output: {out!r}")
    server.api("DELETE", f"/api/sessions/{session_id}")
    return {"ready": ready, "post": post}


def event_loop(server: Server, up: float, work: Callable[[], None], interval: float = 0.02,
               ) -> tuple[list[float], float, list[int]]:
    """Latency of GET /api/status every ``interval`` s while ``work`` (the fill) runs.

    Returns the latencies, how long the work took from the server's first answer, and
    the HTTP statuses of answers that were errors (they are timed all the same).
    """
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    latencies = []
    failed = []
    while not done.is_set():
        t0 = time.perf_counter()
        response = server.api("GET", "/api/status")
        latencies.append(time.perf_counter() - t0)
        if response.status_code != 200:
            failed.append(response.status_code)
        time.sleep(interval)
    thread.join()
    if errors:
        raise errors[0]
    return latencies, time.perf_counter() - up, failed


def cold_fill(server: Server, count: int, code: str) -> None:
    """What a plain server does for the same kernels: start them and run the imports."""

    def one(i: int) -> None:
        response = server.api("POST", "/api/kernels", json={"name": "python3"})
        if response.status_code != 201:
            raise ServerError(f"POST /api/kernels: HTTP {response.status_code}")
        sock = KernelSocket(server, response.json()["id"])
        try:
            sock.execute(code)
        finally:
            sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


KERNEL_ID = re.compile(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"')


def voila_page(server: Server, expect: str) -> tuple[float, str | None, str | None]:
    """GET of the rendered page (whole body): seconds, its kernel id, and why it failed."""
    t0 = time.perf_counter()
    page = server.http.get(server.url + "/", timeout=300)
    elapsed = time.perf_counter() - t0
    if page.status_code != 200:
        return elapsed, None, f"HTTP {page.status_code}"
    if expect not in page.text:
        return elapsed, None, "page without the notebook's output"
    match = KERNEL_ID.search(page.text)
    return elapsed, match.group(1) if match else None, None


#: Tornado compares the X-XSRFToken header with the _xsrf cookie; a browser has both.
XSRF = uuid.uuid4().hex


def close_page(server: Server, kernel_id: str | None) -> None:
    """What the page's unload handler does: shut its kernel down."""
    if kernel_id:
        response = server.api("POST", f"/voila/api/shutdown/{kernel_id}",
                              headers={"X-XSRFToken": XSRF, "Cookie": f"_xsrf={XSRF}"})
        if response.status_code != 204:
            raise ServerError(f"page kernel shutdown: HTTP {response.status_code}")


def voila_pages(server: Server, reps: int, expect: str, phases: bool = False,
                ) -> tuple[list[float], list[str], list[dict[str, list[float]]]]:
    """Pages against a full, quiet pool; each page's kernel is shut down as on page unload.

    Returns the times of successful pages, a note per failed one (``HTTP 500``...), and
    with ``phases`` the server's phase timings of each page (see phases.py).
    """
    samples: list[float] = []
    failures: list[str] = []
    timings: list[dict[str, list[float]]] = []
    for _ in range(reps):
        server.wait_pool()
        if phases:
            server.api("GET", "/bench/phases")
        elapsed, kernel_id, failed = voila_page(server, expect)
        if failed:
            failures.append(failed)
            continue
        samples.append(elapsed)
        if phases:
            timings.append({**server.api("GET", "/bench/phases").json(), "page": [elapsed]})
        close_page(server, kernel_id)
    return samples, failures, timings


def kernel_processes(server: Server) -> int:
    """Kernel processes the server runs (pooled, warming and handed out): its children, and
    those of its fork templates (fork mode, the default, forks kernels from one)."""
    try:
        children = psutil.Process(server.process.proc.pid).children()
    except psutil.Error:
        return 0
    for child in list(children):
        try:
            if "hotpot_km/fork/template.py" in " ".join(child.cmdline()):
                children += child.children()
        except psutil.Error:
            continue
    count = 0
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()) and child.status() != "zombie":
                count += 1
        except psutil.Error:
            continue
    return count


def voila_refill_pages(server: Server, reps: int, pool: int, expect: str,
                       ) -> tuple[list[float], list[float]]:
    """Pages served while a refill warms up, each paired with a page of an idle pool.

    Each repetition times a page against the full, quiet pool (its kernel shut down as on
    page unload), waits for the pool to be full again, then page A takes a pooled kernel
    (and keeps it, as an open tab does) and, once its replacement has started, page B is
    timed. The two pages of a pair are seconds apart, so a drift of the machine's speed
    between repetitions or scenarios weighs on both alike. Returns (idle, refill) times.
    """
    idle, refill = [], []
    for _ in range(reps):
        server.wait_pool()
        elapsed, quiet, failed = voila_page(server, expect)
        if failed:
            raise ServerError(f"Voila page: {failed}")
        idle.append(elapsed)
        close_page(server, quiet)
        server.wait_pool()
        _, first, failed = voila_page(server, expect)
        if failed:
            raise ServerError(f"Voila page: {failed}")
        deadline = time.monotonic() + 120
        while kernel_processes(server) < pool + 1:  # page A's kernel + the pool, refilling
            if time.monotonic() > deadline:
                raise ServerError("no refill started after a page")
            time.sleep(0.01)
        elapsed, second, failed = voila_page(server, expect)
        if failed:
            raise ServerError(f"Voila page during a refill: {failed}")
        refill.append(elapsed)
        close_page(server, first)
        close_page(server, second)
    return idle, refill


def notebook(path: Path, *cells: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": src} for i, src in enumerate(cells)],
    }))
