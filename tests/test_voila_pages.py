"""Voila pages give their kernels back, open pages keep them (``hotpot_km.pages``).

The seed's voila.json, verbatim, next to the notebook; the tests' short timeouts go into
the Jupyter config dir's voila.json, as a user would add them. Kernel processes are
counted from outside (the server's children); a page's kernel is alive while Voila's own
``GET /api/kernels/<id>`` answers 200.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import marked_kernels
from servers import (
    KernelSocket,
    Server,
    api,
    free_port,
    jupyter_server,
    log_tracebacks,
    port_of,
    running,
    voila_command,
    wait_for,
    websocket_status,
    write_notebook,
)
from test_browser import (
    CELL,
    VOILA_JSON,
    page,  # noqa: F401 (the Chromium page fixture)
    pooled_setup,
    probe_output,
    screenshot_on_failure,
    waiting_pids,
)

from hotpot_km.pages import default_max_kernels

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

POOL = 3  # the seed's kernel_pools


def voila_config(config_dir: Path, **sections: dict[str, Any]) -> None:
    """Add ``sections`` to the config dir's voila.json (a fork run already wrote one)."""
    path = config_dir / "voila.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    for name, traits in sections.items():
        config.setdefault(name, {}).update(traits)
    path.write_text(json.dumps(config))


def seed_app(tmp_path: Path, *cells: str) -> Path:
    """The seed's voila.json, verbatim, next to a notebook."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "voila.json").write_text(VOILA_JSON)
    write_notebook(root / "nb.ipynb", *(cells or ("print('page', 6 * 7)",)))
    return root


def voila(root: Path, tmp_path: Path) -> Any:
    port = free_port()
    return running(voila_command("nb.ipynb", port), cwd=root, port=port,
                   ready_path="/voila/files/voila.json", log=tmp_path / "voila.log")


def kernel_id_of(html: str) -> str:
    match = re.search(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"', html)
    assert match, html[-2000:]
    return match.group(1)


def kernel_model(server: Server, kernel_id: str) -> dict[str, Any] | None:
    """Voila's own model of a kernel (with its websocket count), None once it is gone."""
    response = requests.get(f"{server.url}/api/kernels/{kernel_id}", timeout=60)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def visit(server: Server, http: requests.Session | None = None) -> tuple[requests.Session, str]:
    """GET the page as a browser would (keeping its cookies); returns the page's kernel id."""
    http = http or requests.Session()
    response = http.get(server.url + "/", timeout=120)
    assert response.status_code == 200, server.log()[-3000:]
    return http, kernel_id_of(response.text)


def beacon(server: Server, http: requests.Session, kernel_id: str) -> int:
    """What the page's beforeunload handler sends: the _xsrf cookie's value as form data."""
    xsrf = http.cookies.get("_xsrf", "")
    response = http.post(f"{server.url}/voila/api/shutdown/{kernel_id}",
                         files={"_xsrf": (None, xsrf)}, timeout=60)
    return response.status_code


def voila_socket(server: Server, kernel_id: str) -> KernelSocket:
    sock = KernelSocket(server, kernel_id, token=None)
    sock.wait_live()
    return sock


def pool_back(server: Server, ready: Path) -> set[int]:
    """Once the pool holds its size again: the server's kernel processes."""
    wait_for(lambda: len(waiting_pids(ready, set())) >= POOL, timeout=180, what="the refill")
    return server.kernel_pids()


#: Exceptions in a server log that are not the pool's and lose nothing: a message sent to a
#: websocket that a closing tab closed meanwhile (jupyter_server doesn't await the write).
CLOSED_WEBSOCKET = ("tornado.websocket.WebSocketClosedError", "tornado.iostream.StreamClosedError")


#: jupyter_server's own races when a kernel is shut down (a page's beacon) while the closing
#: page's websocket connects or disconnects: its ``disconnect`` removes a connection twice
#: from ``_open_sockets``, its ``nudge`` reads the channels of a connection already closed.
SERVER_SHUTDOWN_RACES = (
    ("ZMQChannelsWebsocketConnection._open_sockets.remove(self)", "KeyError: <weakref"),
    ("iopub_channel = self.channels[\"iopub\"]", "KeyError: 'iopub'"),
)


def tracebacks(log: str) -> list[str]:
    """The server's tracebacks in its log (kernels write theirs to the same stream), but
    those of a write to a websocket that just closed and jupyter_server's own shutdown
    races (:data:`SERVER_SHUTDOWN_RACES`)."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        error = next((line for line in block.splitlines() if line and not line[0].isspace()), "")
        if error.startswith(CLOSED_WEBSOCKET) or "site-packages/ipykernel/" in block:
            continue
        if any(where in block and error.startswith(what) for where, what in SERVER_SHUTDOWN_RACES):
            continue
        found.append(block)
    return found


def shut_down_by_us(server: Server, kernel_id: str) -> bool:
    return f"shutting down kernel {kernel_id} of a Voila page" in server.log()


@pytest.mark.slow
def test_tabs_closed_give_their_kernels_back_and_an_open_tab_keeps_its_kernel(
    jupyter_dirs, tmp_path, page  # noqa: F811
):
    """Chromium, the seed's files: tabs opened and closed (closed, or navigated away) end
    their kernels through Voila's own beacon; a tab open for the whole test keeps its kernel,
    and its websocket, well past the page timeouts."""
    ready = pooled_setup(jupyter_dirs["config"], tmp_path)
    voila_config(jupyter_dirs["config"], PooledMappingKernelManager={
        "page_connect_timeout": 15, "page_disconnect_grace": 60})  # the beacon must do it
    root = seed_app(tmp_path, CELL)
    with voila(root, tmp_path) as server:
        before = pool_back(server, ready)
        assert len(before) == POOL
        with screenshot_on_failure(page, tmp_path / "failure.png", server):
            page.goto(server.url + "/")
            served = time.monotonic()  # the kept page's page_connect_timeout runs from here
            probe_output(page)
            kept = kernel_id_of(page.content())
            closed = []
            for n in range(4):
                tab = page.context.new_page()
                tab.goto(server.url + "/")
                probe_output(tab)
                kernel_id = kernel_id_of(tab.content())
                wait_for(lambda k=kernel_id: (kernel_model(server, k) or {}).get("connections"),
                         timeout=120, what="the tab's websocket")
                if n % 2:
                    tab.goto("about:blank")  # navigating away unloads the page too
                tab.close(run_before_unload=True)
                closed.append(kernel_id)
            for kernel_id in closed:
                wait_for(lambda k=kernel_id: kernel_model(server, k) is None, timeout=60,
                         what=f"the closed tab's kernel {kernel_id} shut down")
                assert not shut_down_by_us(server, kernel_id)  # Voila's beacon did it
            # past page_connect_timeout: the open tab is connected, no timer runs
            time.sleep(max(0.0, served + 15 + 1 - time.monotonic()))
            model = kernel_model(server, kept)
            assert model is not None and model["connections"] >= 1, model
            after = pool_back(server, ready)
            assert len(after) == POOL + 1  # the pool, and the open tab's kernel
        log = server.log()
        assert "403 POST" not in log and not tracebacks(log), log[-3000:]
    assert not marked_kernels()


def test_curl_visitors_kernels_are_shut_down_after_the_timeout(jupyter_dirs, tmp_path):
    """Plain GETs (no JavaScript, no websocket): each page's kernel ends
    ``page_connect_timeout`` seconds after its page was served; the pool is all that runs."""
    ready = pooled_setup(jupyter_dirs["config"], tmp_path)
    voila_config(jupyter_dirs["config"], PooledMappingKernelManager={"page_connect_timeout": 2})
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        before = pool_back(server, ready)
        kernel_ids = [visit(server)[1] for _ in range(4)]
        for kernel_id in kernel_ids:
            wait_for(lambda k=kernel_id: kernel_model(server, k) is None, timeout=60,
                     what=f"kernel {kernel_id} shut down")
            assert shut_down_by_us(server, kernel_id)
        assert "no websocket reached it within 2 s of its page" in server.log()
        assert len(pool_back(server, ready)) == len(before) == POOL
        assert not tracebacks(server.log())


@pytest.mark.slow
def test_a_page_whose_websocket_closed_ends_after_the_grace_and_an_open_one_stays(
    jupyter_dirs, tmp_path
):
    """A page whose websocket closed without the beacon (a killed browser) loses its kernel
    ``page_disconnect_grace`` seconds later; a websocket that reconnects within the grace
    keeps it; a page whose websocket stays open keeps its kernel."""
    voila_config(jupyter_dirs["config"], PooledMappingKernelManager={
        "page_connect_timeout": 60, "page_disconnect_grace": 3})
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        _, gone = visit(server)
        _, back = visit(server)
        _, kept = visit(server)
        open_socket = voila_socket(server, kept)
        try:
            voila_socket(server, gone).close()
            voila_socket(server, back).close()
            closed = time.monotonic()  # the reconnected page's grace runs from here
            returned = voila_socket(server, back)  # reconnects at once, within the grace
            wait_for(lambda: kernel_model(server, gone) is None, timeout=60,
                     what="the closed page's kernel shut down")
            assert "its page's websocket closed 3 s ago" in server.log()
            time.sleep(max(0.0, closed + 3 + 2 - time.monotonic()))  # past the grace of back
            for kernel_id in (back, kept):
                assert kernel_model(server, kernel_id)["connections"] == 1
            open_socket.wait_live()  # the kernel still answers its page
            returned.close()
        finally:
            open_socket.close()
        wait_for(lambda: kernel_model(server, back) is None, timeout=60, what="back shut down")
        assert not tracebacks(server.log())


def test_the_beacon_passes_with_the_cookie_and_xsrf_still_holds(jupyter_dirs, tmp_path):
    """The page sets the _xsrf cookie: the beacon with it shuts the kernel down (204).
    Without the cookie, with another value than the cookie's, or with no token, Voila still
    refuses it (403) and the kernel runs on: the XSRF check is jupyter_server's, unchanged.
    A websocket to the kernel afterwards is refused with a plain 404."""
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        http, kernel_id = visit(server)
        token = http.cookies.get("_xsrf")
        assert token, "the page set no _xsrf cookie"
        url = f"{server.url}/voila/api/shutdown/{kernel_id}"
        stranger = requests.post(url, files={"_xsrf": (None, token)}, timeout=60)
        assert stranger.status_code == 403  # the token without the cookie: a cross-site post
        forged = http.post(url, files={"_xsrf": (None, uuid.uuid4().hex)}, timeout=60)
        assert forged.status_code == 403
        missing = http.post(url, timeout=60)
        assert missing.status_code == 403
        assert kernel_model(server, kernel_id) is not None
        assert beacon(server, http, kernel_id) == 204
        assert kernel_model(server, kernel_id) is None
        # a closing page reconnects to the kernel its beacon ended: a plain 404, no traceback
        assert websocket_status(server, kernel_id, token=None) == 404
        assert not log_tracebacks(server.log())


SOAK_VISITS = 30


@pytest.mark.slow
def test_a_soak_of_browser_like_visits_leaves_no_kernel(jupyter_dirs, tmp_path):
    """30 visits, 3 at a time, as a browser makes them with the seed's files: the page, the
    kernel's websocket, then the beacon. Every request succeeds, no kernel is left in use,
    and once the pool has refilled the server runs the pool's kernels and nothing else."""
    ready = pooled_setup(jupyter_dirs["config"], tmp_path)
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        before = pool_back(server, ready)

        def one_visit(_: int) -> tuple[str, int]:
            http, kernel_id = visit(server)
            sock = voila_socket(server, kernel_id)
            try:
                return kernel_id, beacon(server, http, kernel_id)
            finally:
                sock.close()

        with ThreadPoolExecutor(3) as pool:
            visits = [pool.submit(one_visit, n) for n in range(SOAK_VISITS)]
            _, hung = wait(visits, timeout=SOAK_VISITS * 20)
            if hung:  # end the server, so that the visits' requests end too
                server.stop()
                raise AssertionError(f"{len(hung)} visits never ended:\n{server.log()[-4000:]}")
            results = [future.result() for future in visits]
        assert [status for _, status in results] == [204] * SOAK_VISITS
        assert len({kernel_id for kernel_id, _ in results}) == SOAK_VISITS
        assert all(kernel_model(server, kernel_id) is None for kernel_id, _ in results)
        after = pool_back(server, ready)
        print(f"kernel processes: {len(before)} before, {len(after)} after {SOAK_VISITS} visits")
        assert len(after) == len(before) == POOL
        log = server.log()
        assert not tracebacks(log) and "ERROR" not in log, log[-3000:]


def test_the_servers_own_culler_still_works_in_voila(jupyter_dirs, tmp_path):
    """jupyter_server's idle culler, configured as usual, ends an idle page's kernel even
    with the page timeouts off."""
    voila_config(jupyter_dirs["config"],
                 PooledMappingKernelManager={"page_connect_timeout": 0},
                 MappingKernelManager={"cull_idle_timeout": 2, "cull_interval": 1})
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        _, kernel_id = visit(server)
        wait_for(lambda: kernel_model(server, kernel_id) is None, timeout=60,
                 what="the culler's shutdown")
        assert re.search(rf"Culling '\w+' kernel '\w+' \({kernel_id}\) .* seconds of inactivity",
                         server.log())
        assert not shut_down_by_us(server, kernel_id)


def test_voila_without_max_kernels_gets_a_bound(jupyter_dirs, tmp_path):
    """The seed's voila.json names no max_kernels: Voila gets one from the machine's memory."""
    root = seed_app(tmp_path)
    with voila(root, tmp_path) as server:
        expected = default_max_kernels()
        assert expected >= 4
        assert f"max_kernels {expected}" in server.log()


def test_jupyter_server_kernels_outlive_their_websockets(jupyter_dirs, tmp_path):
    """In jupyter_server (JupyterLab, Notebook 7) a notebook's kernel outlives its tab, even
    with the page settings configured: they are Voila's; max_kernels stays unlimited."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 1}\n'
        "c.PooledMappingKernelManager.page_connect_timeout = 1\n"
        "c.PooledMappingKernelManager.page_disconnect_grace = 1\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path="/api/status",
                 log=tmp_path / "server.log") as server:
        response = api(server, "POST", "/api/kernels", json={"name": "python3"})
        assert response.status_code == 201, response.text
        kernel_id = response.json()["id"]
        KernelSocket(server, kernel_id).close()
        time.sleep(3)  # past both settings
        assert api(server, "GET", f"/api/kernels/{kernel_id}").status_code == 200
        status = api(server, "GET", "/api/hotpot_km/status").json()
        assert status["processes"]["max_kernels"] == 0
        assert "Voila page" not in server.log()
