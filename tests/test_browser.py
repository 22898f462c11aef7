"""A real browser: JupyterLab 4 and Voila pages in headless Chromium, driven by Playwright.

Chromium is Debian's package (``apt-get install chromium``); Playwright only drives it,
nothing is downloaded at test time. Without chromium these tests fail: CI must not pass
by skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from conftest import MARKER, marked_kernels
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright
from servers import (
    TOKEN,
    Server,
    api,
    free_port,
    jupyter_lab,
    log_tracebacks,
    port_of,
    running,
    voila_command,
    wait_for,
    write_notebook,
)

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: Flags for Chromium in a sandboxless container on a closed network: without the
#: background-networking ones it keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: The seed's voila.json, verbatim.
VOILA_JSON = (
    '{"VoilaConfiguration": {"multi_kernel_manager_class": '
    '"hotpot_km.mapping.PooledMappingKernelManager"}, "PooledKernelManager": '
    '{"kernel_pools": {"python3": 3}, "_wait_at_startup": true}}'
)

TIMEOUT_MS = 120_000  # page loads and kernel starts on a loaded 2-core machine

#: The notebook's one cell: what the kernel sees, on one line the test can parse.
CELL = (
    "import json, os, sys\n"
    f"print('PROBE ' + json.dumps({{'cwd': os.getcwd(), 'marker': os.environ.get({MARKER!r}),"
    " 'pid': os.getpid(), 'warm': 'wave' in sys.modules}))"
)

#: Only pooled kernels import ``wave`` (ipykernel doesn't); each writes its pid into a
#: directory when its warm-up is done, so the test knows when a ready kernel waits.
INIT_FILE = """\
import os, pathlib, wave
pathlib.Path({ready!r}, str(os.getpid())).touch()
del os, pathlib, wave
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A page of headless Chromium with a fresh profile in the test's tmp dir."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=chromium(),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@contextmanager
def screenshot_on_failure(page: Page, path: Path, server: Server) -> Iterator[None]:
    """On failure, keep what the page showed and add the server's log to the error."""
    try:
        yield
    except BaseException as error:
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception:  # the page may be gone; the original error matters
            pass
        if isinstance(error, (AssertionError, PlaywrightError)):
            raise AssertionError(
                f"{error}\n(screenshot: {path})\nserver log:\n{server.log()[-6000:]}"
            ) from error
        raise


def pooled_setup(config_dir: Path, tmp_path: Path) -> Path:
    """The init file every pooled kernel runs; returns the directory of ready pids."""
    ready = tmp_path / "ready"
    ready.mkdir()
    (config_dir / "kernel_pool_init_python3.py").write_text(INIT_FILE.format(ready=str(ready)))
    return ready


def waiting_pids(ready: Path, used: set[int]) -> set[int]:
    """Pooled kernels that finished their warm-up, are alive and were not handed out yet."""
    pids = {int(p.name) for p in ready.iterdir()} - used
    return {pid for pid in pids if psutil.pid_exists(pid)}


def probe_output(page: Page, not_pid: int | None = None) -> dict[str, Any]:
    """The cell's output as shown in the page (waiting for one from a new kernel)."""
    output = page.locator(".jp-OutputArea-output").first
    if not_pid is not None:
        expect(output).not_to_contain_text(f'"pid": {not_pid},')
    expect(output).to_contain_text("PROBE {")
    match = re.search(r"PROBE (\{.*\})", output.inner_text())
    assert match, output.inner_text()
    return json.loads(match.group(1))


#: JupyterLab's own settings, in the isolated config dir: no news or update checks
#: (nothing to reach on a closed network, and no toast over the page).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def lab_settings(config_dir: Path) -> None:
    for name, settings in LAB_SETTINGS.items():
        path = config_dir / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))


def wait_kernel_idle(page: Page) -> None:
    """The notebook's kernel is connected and idle, as the status bar shows it
    ("Python 3 (ipykernel) | Idle"; before the session exists it says "No Kernel")."""
    status = page.locator('.jp-StatusBar-TextItem[title^="Change kernel"]')
    expect(status).to_have_text(re.compile(r"^(?!No Kernel).* \| Idle$"))


def menu(page: Page, name: str, command: str) -> None:
    page.get_by_role("menuitem", name=name, exact=True).click()
    page.locator(f'li.lm-Menu-item[data-command="{command}"]').click()


def run_cell(page: Page) -> None:
    """Run the selected (first) cell from the Run menu, staying on it."""
    wait_kernel_idle(page)
    menu(page, "Run", "notebook:run-cell")


def restart_from_kernel_menu(page: Page, kernel_path: str) -> None:
    """Kernel > Restart Kernel..., confirm, and wait until JupyterLab is back on the kernel."""
    menu(page, "Kernel", "kernelmenu:restart")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Restart Kernel?")
    with page.expect_response(
        lambda r: r.request.method == "POST"
        and urlsplit(r.url).path == f"{kernel_path}/restart"  # the URL has a cache buster
    ) as restarted:
        dialog.locator(".jp-Dialog-button.jp-mod-accept", has_text="Restart").click()
    assert restarted.value.status == 200, restarted.value.text()
    expect(dialog).to_have_count(0)
    wait_kernel_idle(page)


RESTARTS = 3


@pytest.mark.slow
def test_jupyterlab_runs_pooled_kernels_through_restarts(jupyter_dirs, tmp_path, page, monkeypatch):
    """The README's jupyter_server_config.py in JupyterLab: a notebook in a subdirectory
    runs on a pooled kernel with its own cwd and the server's env, and keeps doing so
    through restarts from the Kernel menu (each one takes another ready pooled kernel)."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        "c.ServerApp.kernel_websocket_connection_class = "
        '"hotpot_km.websocket.NoDelayWebsocketConnection"\n'
    )
    for name in ("JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        monkeypatch.delenv(name, raising=False)  # JupyterLab's state stays in the config dir
    lab_settings(jupyter_dirs["config"])
    ready = pooled_setup(jupyter_dirs["config"], tmp_path)
    root = tmp_path / "root"
    write_notebook(root / "sub" / "nb.ipynb", CELL)
    argv = jupyter_lab(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "lab.log") as server:
        with screenshot_on_failure(page, tmp_path / "failure.png", server):
            used: set[int] = set()
            wait_for(lambda: waiting_pids(ready, used), timeout=120, what="a ready pooled kernel")
            page.goto(f"{server.url}/lab/tree/sub/nb.ipynb?token={TOKEN}")
            expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()
            wait_kernel_idle(page)
            (session,) = api(server, "GET", "/api/sessions").json()
            kernel_path = f"/api/kernels/{session['kernel']['id']}"

            runs = []
            for restart in range(RESTARTS + 1):
                if restart:
                    wait_for(lambda: waiting_pids(ready, used), timeout=120,
                             what=f"a ready pooled kernel before restart {restart}")
                    restart_from_kernel_menu(page, kernel_path)
                run_cell(page)
                seen = probe_output(page, not_pid=runs[-1]["pid"] if runs else None)
                assert seen["cwd"] == str(root / "sub"), (restart, seen)
                assert seen["marker"] == os.environ[MARKER], (restart, seen)
                assert seen["warm"], f"run {restart} did not get a pooled kernel: {seen}"
                assert seen["pid"] not in used, (restart, seen)
                used.add(seen["pid"])
                runs.append(seen)
            assert len({r["pid"] for r in runs}) == RESTARTS + 1
            assert not log_tracebacks(server.log())
    assert not marked_kernels()


def test_voila_page_shows_the_output_of_a_pooled_kernel(jupyter_dirs, tmp_path, page):
    """The seed's voila.json, verbatim, next to the same notebook: Chromium shows the
    cell's output, computed in a pooled kernel in the notebook's directory."""
    ready = pooled_setup(jupyter_dirs["config"], tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "voila.json").write_text(VOILA_JSON)
    write_notebook(root / "sub" / "nb.ipynb", CELL)
    port = free_port()
    with running(voila_command("sub/nb.ipynb", port), cwd=root, port=port,
                 ready_path="/voila/files/nb.ipynb", log=tmp_path / "voila.log") as server:
        pooled = waiting_pids(ready, set())
        assert len(pooled) == 3  # _wait_at_startup: the pool was full before Voila listened
        with screenshot_on_failure(page, tmp_path / "failure.png", server):
            page.goto(server.url + "/")
            seen = probe_output(page)
            assert seen["cwd"] == str(root / "sub"), seen
            assert seen["marker"] == os.environ[MARKER], seen
            assert seen["warm"] and seen["pid"] in pooled, seen
            assert not log_tracebacks(server.log())
    assert not marked_kernels()
