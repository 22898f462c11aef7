"""The pool service's own guarantees: leases, the owner's control of its kernel, restarts in
place, what happens when the service dies, the socket's privacy, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import marked_kernels
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from kernel_helpers import wait_until, write_kernelspec
from service_helpers import (
    hotpot_km,
    install_kernelspec,
    kernel_parents,
    probe_notebook,
    probes,
    runner_env,
    service,
    status,
)

from hotpot_km import PooledKernelManager
from hotpot_km.handout import ready_client_class
from hotpot_km.service.paths import ServicePaths
from hotpot_km.service.provisioner import ServiceProvisioner

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

PLAIN = '--PooledKernelManager.pool_kwargs={"python3": {}}'  # starts without nbclient's argument


@pytest.fixture
def setup(jupyter_dirs, monkeypatch, tmp_path) -> dict[str, Path]:
    # These tests start kernels in this process, whose environment is the suite's venv: as
    # a user who set JUPYTER_PREFER_ENV_PATH=0, so that the install goes to (and wins from)
    # the user's kernel directory, never the shared venv. The venv's own order, where the
    # install goes into the environment, is test_service_runners.py's.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # kernels' history stays here
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text("import colorsys\n")
    return {**jupyter_dirs, "tmp": tmp_path}


async def execute(km: AsyncKernelManager, code: str, timeout: float = 60) -> tuple[str, dict]:
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        out: list[str] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return "".join(out), reply["content"]
    finally:
        client.stop_channels()


async def pid_of(km: AsyncKernelManager) -> tuple[int, int, str]:
    out, reply = await execute(km, "import os; print(os.getpid(), os.getppid(), os.getcwd())")
    assert reply["status"] == "ok", reply
    pid, ppid, cwd = out.split()
    return int(pid), int(ppid), cwd


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout:g} s"
        time.sleep(0.05)


async def not_alive(km: AsyncKernelManager) -> bool:
    return not await km.is_alive()


PORTS = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port", "key")


@pytest.mark.parametrize("mode", ["signal", "message"])
async def test_the_owner_controls_its_kernel_and_a_restart_stays_in_place(setup, mode):
    if mode == "message":  # the kernelspec asks for interrupt_request messages
        write_kernelspec(setup["data"], "python3", interrupt_mode="message")
    install_kernelspec()
    with service(setup["tmp"] / "service.log", PLAIN) as svc:
        pooled = svc.kernel_pids()
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(cwd=str(setup["data"]))
        try:
            assert isinstance(km.provisioner, ServiceProvisioner)
            assert km.kernel_spec.interrupt_mode == mode
            # a leased kernel's clients are ready in one round trip; a cold one's are not
            assert type(km.client()) is ready_client_class(AsyncKernelClient)
            info = km.get_connection_info()
            pid, ppid, cwd = await pid_of(km)
            assert pid in pooled and ppid in svc.parents() and cwd == str(setup["data"])
            [lease] = status()["leases"]
            assert (lease["owner"], lease["kernel_pid"]) == (os.getpid(), pid)

            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            msg_id = client.execute("import time; time.sleep(120)")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await client.get_shell_msg(timeout=60)
            client.stop_channels()
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert await km.is_alive()

            await km.restart_kernel()
            assert {k: km.get_connection_info()[k] for k in PORTS} == {k: info[k] for k in PORTS}
            new_pid, new_ppid, new_cwd = await pid_of(km)
            assert new_pid != pid and new_ppid == os.getpid() and new_cwd == cwd
            assert type(km.client()) is AsyncKernelClient
            wait_gone(pid)
            [lease] = status()["leases"]  # only its ports stay reserved
            assert lease["state"] == "restarted by its owner"

            await km.signal_kernel(signal.SIGKILL)
            await wait_until(lambda: not_alive(km), timeout=10, what="the killed kernel is dead")
        finally:
            await km.shutdown_kernel(now=True)
        assert status()["leases"] == []


async def test_leased_kernels_die_with_the_service_and_restart_cold(setup, unwatched_kernels):
    """SIGKILL of the service: its kernels die (they don't watch their parent themselves),
    the owner sees a dead kernel, and its restart starts cold on the same ports and key."""
    install_kernelspec()
    with service(setup["tmp"] / "service.log", PLAIN) as svc:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        try:
            info = km.get_connection_info()
            pid, ppid, _ = await pid_of(km)
            assert ppid in svc.parents() and pid in svc.kernel_pids()
            pooled = svc.kernel_pids()
            svc.stop(signal.SIGKILL)
            for kernel in pooled:
                wait_gone(kernel)
            await wait_until(lambda: not_alive(km), timeout=10, what="the owner sees it dead")
            await km.restart_kernel()
            assert {k: km.get_connection_info()[k] for k in PORTS} == {k: info[k] for k in PORTS}
            new_pid, new_ppid, _ = await pid_of(km)
            assert new_ppid == os.getpid() and new_pid != pid
        finally:
            await km.shutdown_kernel(now=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stopped_service_leaves_no_kernel(setup, unwatched_kernels, sig):
    install_kernelspec()
    with service(setup["tmp"] / "service.log", PLAIN, pools=2) as svc:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        try:
            await pid_of(km)
            assert len(marked_kernels()) >= 2  # one leased, one pooled, one maybe warming
            assert svc.stop(sig) == 0
            assert marked_kernels() == []  # gone when the service has exited
            assert not await km.is_alive()
            assert not Path(ServicePaths.default().socket).exists()
        finally:
            await km.shutdown_kernel(now=True)


async def test_a_request_the_pool_cant_serve_starts_cold_saying_why(setup, caplog):
    install_kernelspec()
    caplog.set_level(logging.WARNING)
    with service(setup["tmp"] / "service.log", PLAIN) as svc:
        km = AsyncKernelManager(kernel_name="python3")
        lang = "C" if os.environ.get("LANG") != "C" else "C.UTF-8"
        await km.start_kernel(env=dict(os.environ, LANG=lang))
        try:
            pid, ppid, _ = await pid_of(km)
            assert ppid == os.getpid() and pid not in svc.kernel_pids()
            assert type(km.client()) is AsyncKernelClient
        finally:
            await km.shutdown_kernel(now=True)
    lines = [r.getMessage() for r in caplog.records if "kernel cold" in r.getMessage()]
    assert lines == ["hotpot_km: starting the 'python3' kernel cold: the pool service refused: "
                     "the request has env variables read only at process start: LANG"]


def raw_exchange(path: str, *messages: dict) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if data.count(b"\n") >= len(messages):
                break
    return [json.loads(line) for line in data.splitlines()]


OTHER_USER = """
import json, socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.settimeout(30)
    sock.connect(sys.argv[1])
    print(sock.makefile().readline())  # refused before any hello
"""


def test_the_socket_is_private_and_speaks_one_version(setup):
    install_kernelspec()
    with service(setup["tmp"] / "service.log") as svc:
        path = ServicePaths.default().socket
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        [answer] = raw_exchange(path, {"protocol": "hotpot-km", "version": 2})
        assert "unsupported hotpot-km protocol version 2" in answer["error"]
        assert "speaks version 1" in answer["error"]
        hello, reply = raw_exchange(path, {"protocol": "hotpot-km", "version": 1},
                                   {"op": "launch", "kernel_name": "python3"})
        assert hello["service"]["pid"] == svc.pid
        assert reply == {"ok": False, "error": "'spec' must be an object"}
        hello, reply = raw_exchange(path, {"protocol": "hotpot-km", "version": 1},
                                    {"op": "poll", "lease": "not-a-lease"})
        assert reply["ok"] is False and "no kernel lease" in reply["error"]
        if os.getuid() == 0 and os.path.exists("/usr/bin/python3"):
            # Another user, even one the file mode would let in, is refused: a world-usable
            # hard link to the same socket, and a client running as nobody.
            shared = Path(tempfile.mkdtemp())
            try:
                os.chmod(shared, 0o711)
                os.link(path, shared / "s.sock")
                os.chmod(shared / "s.sock", 0o666)
                done = subprocess.run(["/usr/bin/python3", "-c", OTHER_USER, str(shared / "s.sock")],
                                      user=65534, group=65534, capture_output=True, text=True,
                                      timeout=60, cwd="/")
            finally:
                os.chmod(path, 0o600)  # the link shares the socket's inode
                shutil.rmtree(shared)
            assert done.returncode == 0, done.stderr
            assert "serves uid 0 only" in json.loads(done.stdout)["error"]
            assert "refused a connection" in svc.log()
        assert status()["pools"]["python3"]["size"] == 1  # still serving


def test_kernelspec_install_and_uninstall(setup, tmp_path):
    original = write_kernelspec(
        setup["data"], "python3", env={"EXTRA": "${HOME}/x"},
        metadata={"kernel_provisioner": {"provisioner_name": "local-provisioner", "config": {}}},
    )
    (original.parent / "logo-64x64.png").write_bytes(b"\x89PNG fake")
    before = original.read_text()
    install_kernelspec()
    install_kernelspec()  # again: still one backup of the original
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.resource_dir == str(original.parent)
    data = json.loads(original.read_text())
    assert data["argv"] == json.loads(before)["argv"]
    assert data["env"] == {"EXTRA": "${HOME}/x"}
    assert data["language"] == "python"
    assert data["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "hotpot-km-provisioner",
        "config": {"autostart": False, "idle_timeout": 600.0,
                   "inner": {"provisioner_name": "local-provisioner", "config": {}}},
    }
    assert (original.parent / "logo-64x64.png").read_bytes() == b"\x89PNG fake"

    prefix = tmp_path / "prefix"
    install_kernelspec("python3", "--as", "warm", f"--prefix={prefix}")
    warm = prefix / "share" / "jupyter" / "kernels" / "warm" / "kernel.json"
    assert json.loads(warm.read_text())["metadata"]["kernel_provisioner"]["config"]["inner"] == {
        "provisioner_name": "local-provisioner", "config": {}}

    done = hotpot_km("kernelspec", "uninstall")
    assert done.returncode == 0, done.stderr
    assert original.read_text() == before
    assert sorted(p.name for p in original.parent.iterdir()) == ["kernel.json", "logo-64x64.png"]
    done = hotpot_km("kernelspec", "uninstall")
    assert done.returncode == 1 and "not installed by hotpot-km" in done.stderr
    done = hotpot_km("kernelspec", "uninstall", "warm", f"--prefix={prefix}")
    assert done.returncode == 0 and not warm.exists()


async def test_in_process_pools_never_lease_from_the_service(setup):
    """A PooledKernelManager (jupyter_server, Voila) with the installed kernelspec pools
    kernels itself: its pooled and cold kernels start through the spec's own provisioner."""
    install_kernelspec()
    with service(setup["tmp"] / "service.log", PLAIN) as svc:
        km = PooledKernelManager(kernel_pools={"python3": 1}, fill_delay=0)
        try:
            await km.wait_for_pool()
            kid = await km.start_kernel()
            other = await km.start_kernel()  # the pool is empty now: cold
            for kernel_id in (kid, other):
                out, reply = await execute(km.get_kernel(kernel_id), "import os; print(os.getppid())")
                assert reply["status"] == "ok" and int(out) == os.getpid()
            assert status()["leases"] == []
            assert svc.proc.poll() is None
        finally:
            await km.shutdown_all()


def test_status_shows_pools_leases_and_warm_up_errors(setup):
    done = hotpot_km("status")
    assert done.returncode == 1
    assert "no pool service is running" in done.stderr
    install_kernelspec()
    (setup["config"] / "kernel_pool_init_python3.py").write_text("1 / 0\n")
    with service(setup["tmp"] / "service.log", wait=False):
        deadline = time.monotonic() + 120
        while not (status() or {}).get("recent_errors"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = hotpot_km("status", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["pools"]["python3"]["size"] == 1
        assert doc["pools"]["python3"]["consecutive_failures"] >= 1
        assert "ZeroDivisionError" in doc["recent_errors"][0]["message"]
        assert doc["leases"] == [] and doc["service"]["socket"] == ServicePaths.default().socket
        table = hotpot_km("status", env=dict(runner_env(), COLUMNS="200"))
        assert table.returncode == 0
        for text in ("Pools", "python3", "Leases", "Recent warm-up errors", "ZeroDivisionError"):
            assert text in table.stdout


NBCLIENT = """
import logging, sys, nbformat
logging.basicConfig()  # show the provisioner's warnings, as an application would
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3").execute()
"""


def service_processes() -> list[psutil.Process]:
    marker = os.environ["HOTPOT_KM_TEST_MARKER"]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            cmd = " ".join(proc.cmdline())
            if "-m hotpot_km serve" in cmd and proc.environ().get("HOTPOT_KM_TEST_MARKER") == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_autostart_starts_one_service_for_concurrent_runners_and_stops_when_idle(
        setup, monkeypatch, tmp_path):
    install_kernelspec("--autostart", "--idle-timeout=15")
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    probe_notebook(tmp_path / "nb.ipynb")
    runners = [subprocess.Popen([sys.executable, "-c", NBCLIENT, str(tmp_path / "nb.ipynb")],
                                env=runner_env(), stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        logs = []
        for runner in runners:
            logs.append(runner.communicate(timeout=240)[1])
            assert runner.returncode == 0, logs[-1]
        assert any("started the pool service in the background" in log for log in logs), logs
        # the first start is cold; the other may already find the new service up
        assert any(p["preimported"] is False for p in probes(tmp_path))
        deadline = time.monotonic() + 120
        while not (doc := status()) or doc["pools"]["python3"]["ready"] < 1:
            assert time.monotonic() < deadline, "the autostarted service never got ready"
            time.sleep(0.2)
        [svc] = service_processes()  # one service, whatever the race
        for old in tmp_path.glob("probe-*.json"):
            old.unlink()
        done = subprocess.run([sys.executable, "-c", NBCLIENT, str(tmp_path / "nb.ipynb")],
                              env=runner_env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        [seen] = probes(tmp_path)
        assert seen["ppid"] in kernel_parents(svc.pid) and seen["preimported"] is True
        svc.wait(60)  # idle for 15 s: it stops by itself, and its kernels with it
        assert marked_kernels() == []
    finally:
        for proc in service_processes():
            proc.terminate()
        for runner in runners:
            if runner.poll() is None:
                runner.kill()


def test_the_provisioner_loads_without_the_pool_engine():
    """Every runner process loads the provisioner: it must not pull in the pool engine or
    prometheus_client, while ``from hotpot_km import ...`` keeps working for hosts."""
    probe = (
        "import sys, hotpot_km.service.provisioner\n"
        "heavy = [m for m in ('hotpot_km.pooled', 'hotpot_km.limited', 'hotpot_km.pool',\n"
        "                     'prometheus_client') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from hotpot_km import LimitedKernelManager, PooledKernelManager, WarmupError\n"
        "import hotpot_km\n"
        "assert issubclass(PooledKernelManager, LimitedKernelManager)\n"
        "assert hotpot_km.MaximumKernelsException.__module__ == 'hotpot_km.budget'\n"
        "try:\n"
        "    hotpot_km.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('hotpot_km.NoSuchName resolved')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
