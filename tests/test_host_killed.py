"""A host killed with SIGKILL leaves no kernel behind, whether or not its kernels watch it.

jupyter_server, Voila and a plain Python process holding a ``PooledKernelManager`` are
killed while the pool fills, when it is full, and with kernels handed out (pooled, cold,
and restarted cold). No kernel here notices its parent's death by itself: ``python3`` runs with
``--IPKernelApp.parent_handle=0``, and ``wrapped`` is a shell script that clears
``JPY_PARENT_PID`` and runs ipykernel without ``exec``, so that kernel is the host's
grandchild. Only ``hotpot_km.keeper`` can end them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import MARKER, _marked
from servers import (
    TOKEN,
    Server,
    api,
    free_port,
    jupyter_server,
    port_of,
    running,
    voila_command,
    wait_for,
    write_notebook,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("unwatched_kernels")]

POOLS = {"python3": 1, "wrapped": 1}

WRAPPER = """#!/bin/sh
# A kernelspec wrapper as people write them: no exec, so the kernel is this shell's child.
unset JPY_PARENT_PID
trap '' INT
"{python}" -m ipykernel_launcher -f "$1"
"""

#: Init code that keeps a pooled kernel warming: it leaves its pid in a directory, then waits.
SLOW_INIT = (
    "import os, pathlib, time\n"
    "pathlib.Path({where!r}, str(os.getpid())).touch()\n"
    "time.sleep(300)\n"
)

PYTHON_HOST = """
import asyncio, sys
from hotpot_km import PooledKernelManager

async def main(state):
    km = PooledKernelManager(kernel_pools={pools!r}, fill_delay=60, max_warming=2)
    if state != "filling":
        await km.wait_for_pool()
    if state == "handed_out":
        for name in ("python3", "wrapped", "wrapped"):  # the second "wrapped" starts cold
            kernel_id = await km.start_kernel(kernel_name=name)
        await km.restart_kernel(kernel_id)  # the pool is empty: a cold restart
    print("READY", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1]))
"""


def wrapped_kernelspec(data_dir: Path) -> None:
    path = data_dir / "kernels" / "wrapped"
    path.mkdir(parents=True)
    script = path / "wrapper.sh"
    script.write_text(WRAPPER.format(python=sys.executable))
    script.chmod(0o755)
    spec = {"argv": [str(script), "{connection_file}"], "display_name": "wrapped",
            "language": "python"}
    (path / "kernel.json").write_text(json.dumps(spec))


def marked(needle: str = "") -> list[psutil.Process]:
    """Live processes of this test (its marker or its directory, see conftest._marked),
    but the test itself."""
    marker = os.environ[MARKER]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if needle in " ".join(proc.cmdline()) and _marked(proc, marker):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[-100:]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


@contextmanager
def host(kind: str, tmp_path: Path, dirs: dict[str, Path], state: str) -> Iterator[Server]:
    """The host, configured as its users configure it, up and in ``state``."""
    tmp = tmp_path / "tmp"  # Voila's connection dir goes under TMPDIR
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    wait = state != "filling"
    log = tmp_path / f"{kind}.log"
    if kind == "jupyter_server":
        (dirs["config"] / "jupyter_server_config.py").write_text(
            'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
            f"c.PooledKernelManager.kernel_pools = {POOLS!r}\n"
            f"c.PooledKernelManager._wait_at_startup = {wait}\n"
            "c.PooledKernelManager.fill_delay = 60.0\n"
            "c.PooledKernelManager.max_warming = 2\n"
        )
        root = tmp_path / "root"
        root.mkdir()
        argv = jupyter_server(tmp_path, root)
        with running(argv, cwd=root, port=port_of(argv), env=env, log=log,
                     ready_path=f"/api/status?token={TOKEN}") as server:
            if state == "handed_out":
                for name in ("python3", "wrapped", "wrapped"):  # the second one starts cold
                    response = api(server, "POST", "/api/kernels", json={"name": name})
                    assert response.ok, response.text
                kernel_id = response.json()["id"]  # the pool is empty: a cold restart
                assert api(server, "POST", f"/api/kernels/{kernel_id}/restart").ok
            yield server
    elif kind == "voila":
        app = tmp_path / "app"
        (app).mkdir()
        (app / "voila.json").write_text(json.dumps({
            "VoilaConfiguration": {
                "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
            "PooledKernelManager": {"kernel_pools": POOLS, "_wait_at_startup": wait,
                                    "fill_delay": 60.0, "max_warming": 2},
        }))
        notebook = app / "dashboard.ipynb"
        write_notebook(notebook, "print('page')")
        content = json.loads(notebook.read_text())
        content["metadata"]["kernelspec"] = {"name": "wrapped", "display_name": "wrapped",
                                             "language": "python"}
        notebook.write_text(json.dumps(content))
        port = free_port()
        with running(voila_command("dashboard.ipynb", port), cwd=app, port=port, env=env,
                     log=log, ready_path="/voila/files/voila.json") as server:
            if state == "handed_out":
                for query in ("?pooled", "?cold"):
                    page = api(server, "GET", "/" + query)
                    assert page.status_code == 200 and "page" in page.text, server.log()[-3000:]
            yield server
    else:
        script = tmp_path / "host.py"
        script.write_text(PYTHON_HOST.replace("{pools!r}", repr(POOLS)))
        with running([sys.executable, str(script), state], cwd=tmp_path, port=0, env=env,
                     log=log, ready_path=None) as server:
            wait_for(lambda: "READY" in server.log() or server.proc.poll() is not None,
                     timeout=120, what="the host is ready")
            assert "READY" in server.log(), server.log()[-3000:]
            yield server


@pytest.mark.parametrize("state", ["filling", "full", "handed_out"])
@pytest.mark.parametrize("kind", ["jupyter_server", "voila", "python"])
def test_sigkilled_host_leaves_no_kernel(jupyter_dirs, tmp_path, kind, state):
    wrapped_kernelspec(jupyter_dirs["data"])
    warming = tmp_path / "warming"
    warming.mkdir()
    if state == "filling":
        for name in POOLS:
            (jupyter_dirs["config"] / f"kernel_pool_init_{name}.py").write_text(
                SLOW_INIT.format(where=str(warming))
            )
    with host(kind, tmp_path, jupyter_dirs, state) as server:
        expected = 3 if state == "handed_out" else 2
        if state == "filling":
            wait_for(lambda: len(list(warming.iterdir())) == 2, timeout=120,
                     what="both pooled kernels run their init code")
        wait_for(lambda: len(marked("ipykernel")) >= expected, timeout=60,
                 what=f"{expected} kernels running")
        kernels = marked("ipykernel")
        grandchildren = [k for k in kernels if k.ppid() != server.proc.pid]
        assert grandchildren, describe(kernels)  # the wrapped kernels' parent is their shell
        assert all(k.ppid() == server.proc.pid for k in marked("wrapper.sh"))

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        killed = time.monotonic()
        deadline = killed + 10
        while marked() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = describe(marked())
        for proc in marked():
            proc.kill()
        assert not left, f"left 10 s after the host was killed: {left}\n{server.log()[-2000:]}"


KEEPER_HOST = """
import subprocess, sys, time
from hotpot_km import keeper

sleepers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
keeper.register(sleepers[0].pid)
keeper.register(sleepers[1].pid)
keeper.unregister(sleepers[1].pid)  # given back: not the keeper's to kill any more
print("PIDS", sleepers[0].pid, sleepers[1].pid, flush=True)
if sys.argv[1] == "sigkill":
    time.sleep(300)
"""


def run_host(source: str, tmp_path: Path, arg: str, sigkill: bool) -> list[int]:
    """Run ``source`` (it prints ``PIDS`` and pids) with ``arg``; SIGKILL it or let it end on
    its own; return the pids it printed."""
    script = tmp_path / "host.py"
    script.write_text(source)
    with running([sys.executable, str(script), arg], cwd=tmp_path, port=0,
                 ready_path=None, log=tmp_path / "host.log") as process:
        wait_for(lambda: "PIDS" in process.log(), what="the host started its processes")
        pids = [int(p) for p in process.log().split("PIDS")[1].splitlines()[0].split()]
        if sigkill:
            process.proc.send_signal(signal.SIGKILL)
        assert process.proc.wait(30) is not None
    return pids


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def assert_killed_and_spared(killed: int, spared: list[int], what: str) -> None:
    try:
        wait_for(lambda: gone(killed), timeout=10, what=what)
        assert not any(gone(pid) for pid in spared)
    finally:
        for pid in (killed, *spared):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.parametrize("end", ["sigkill", "normal exit"])
def test_keeper_kills_the_groups_still_registered_and_nothing_else(jupyter_dirs, tmp_path, end):
    """The module's own API, as other hosts use it: a group still registered dies with its
    host, however the host ends; a group given back (``unregister``) is left alone."""
    registered, given_back = run_host(KEEPER_HOST, tmp_path, end.split()[0], end == "sigkill")
    assert_killed_and_spared(registered, [given_back], "the registered group killed")


LAUNCH_HOST = """
import subprocess, sys, time, uuid
from hotpot_km import keeper

tag = uuid.uuid4().hex
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
with keeper.launching(f"done-{tag}"):
    done = subprocess.Popen([*sleeper, f"done-{tag}"], start_new_session=True)
try:
    with keeper.launching(f"failed-{tag}"):
        raise FileNotFoundError("no such kernel program")  # no process: its mark goes
except FileNotFoundError:
    pass
other = subprocess.Popen([*sleeper, f"failed-{tag}"], start_new_session=True)  # not its
with keeper.launching(f"under-way-{tag}"):
    under_way = subprocess.Popen([*sleeper, f"under-way-{tag}"], start_new_session=True)
    print("PIDS", under_way.pid, done.pid, other.pid, flush=True)
    if sys.argv[1] == "sigkill":
        time.sleep(300)
    raise KeyboardInterrupt  # what SIGINT does to a host that keeps Python's handler
"""


@pytest.mark.parametrize("end", ["sigkill", "KeyboardInterrupt"])
def test_a_process_whose_launch_was_under_way_dies_with_its_host(jupyter_dirs, tmp_path, end):
    """A host can end between a kernel's fork and the registration of its group. The
    process whose launch was still marked dies with it; one whose launch step finished
    (and registered nothing) is left alone, and so is a later process carrying the mark of
    a launch that failed with an error."""
    under_way, *spared = run_host(LAUNCH_HOST, tmp_path, end.lower(), end == "sigkill")
    assert_killed_and_spared(under_way, spared, "the process of the launch under way killed")
