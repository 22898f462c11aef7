"""Notebook runners and a plain jupyter_server get pooled kernels from ``hotpot-km serve``
through the installed kernelspec, with no change to how they are run.

Every notebook reports its kernel: a pooled one is a child of the service and has the
init file's import done; its cwd is the one the runner chose; its env is the runner's
(``RUNNER_ONLY`` there, the service's own ``SERVICE_ONLY`` not).

Everything runs as in a user's virtual environment: a venv of the test's own (see
:func:`service_helpers.virtual_env`) with jupyter_core's default path order, where the
environment's kernelspecs come before the user's.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from servers import TOKEN, KernelSocket, api, jupyter_server, new_session, port_of, running
from service_helpers import (
    PROBE_CELL,
    Service,
    hotpot_km,
    probe_notebook,
    probes,
    runner_env,
    service,
    status,
    virtual_env,
)

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


@pytest.fixture
def setup(jupyter_dirs, monkeypatch, tmp_path) -> dict[str, Any]:
    """A venv with the kernelspec installed as its user would (`hotpot-km kernelspec
    install`), an init file, and a directory the notebooks report to."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # kernels' history stays here
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text("import colorsys\n")
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(probe_dir))
    python = virtual_env(tmp_path / "venv")
    spec = tmp_path / "venv" / "share" / "jupyter" / "kernels" / "python3"
    original = {p.name: p.read_bytes() for p in spec.iterdir()}
    installed = hotpot_km("kernelspec", "install", python=python)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return {**jupyter_dirs, "probes": probe_dir, "tmp": tmp_path, "python": python,
            "py": str(python), "spec": spec, "original": original, "installed": installed}


def serve(setup: dict[str, Any], *args: str):
    """``hotpot-km serve`` of the venv."""
    return service(setup["tmp"] / "service.log", *args, python=setup["python"])


def run(argv: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=runner_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_pooled(seen: dict, svc: Service, cwd: Path) -> None:
    """A kernel of the service's pool (its child, with the init file's import done) that
    looks started by the runner."""
    assert seen["ppid"] in svc.parents()
    assert seen["preimported"] is True
    assert seen["cwd"] == str(cwd)
    assert seen["runner_only"] == "from-the-runner"
    assert seen["service_only"] is None


def test_papermill_with_and_without_cwd(setup):
    work, other = setup["work"], setup["tmp"] / "elsewhere"
    other.mkdir()
    probe_notebook(work / "in.ipynb")
    with serve(setup) as svc:
        run([setup["py"], "-m", "papermill", "in.ipynb", "out.ipynb"], cwd=work)
        run([setup["py"], "-m", "papermill", "--cwd", str(other), "in.ipynb", "out2.ipynb"], cwd=work)
        first, second = sorted(probes(setup["probes"]), key=lambda p: p["cwd"] != str(work))
        assert_pooled(first, svc, work)
        assert_pooled(second, svc, other)
        out = json.loads((work / "out.ipynb").read_text())
        assert json.loads(out["cells"][0]["outputs"][0]["text"][0]) == first
        assert status()["leases"] == []  # both released by papermill's own shutdown


def test_nbconvert_execute(setup):
    notebooks = setup["tmp"] / "notebooks"
    probe_notebook(notebooks / "report.ipynb")
    with serve(setup) as svc:
        run([setup["py"], "-m", "nbconvert", "--to", "notebook", "--execute",
             str(notebooks / "report.ipynb"), "--output", "done.ipynb"], cwd=setup["work"])
        [seen] = probes(setup["probes"])
        assert_pooled(seen, svc, notebooks)  # nbconvert runs in the notebook's dir
        assert (notebooks / "done.ipynb").exists()


def test_pytest_nbmake(setup):
    suite = setup["tmp"] / "suite"
    for name in ("a", "b"):
        probe_notebook(suite / f"{name}.ipynb", "import sys\nassert 'colorsys' in sys.modules")
    with serve(setup) as svc:
        done = run([setup["py"], "-m", "pytest", "--nbmake", "-p", "no:cacheprovider", "-q",
                    "a.ipynb", "b.ipynb"], cwd=suite)
        assert "2 passed" in done.stdout
        seen = probes(setup["probes"])
        assert len(seen) == 2 and seen[0]["pid"] != seen[1]["pid"]
        for one in seen:
            assert_pooled(one, svc, suite)


NBCLIENT = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
print(nb.cells[0].outputs[0]["text"])
"""


def test_nbclient_in_a_fresh_process(setup):
    probe_notebook(setup["tmp"] / "nb.ipynb")
    with serve(setup) as svc:
        done = run([setup["py"], "-c", NBCLIENT, str(setup["tmp"] / "nb.ipynb"),
                    str(setup["data"])], cwd=setup["work"])
        [seen] = probes(setup["probes"])
        assert_pooled(seen, svc, setup["data"])
        assert json.loads(done.stdout) == seen


def test_runner_killed_mid_notebook_leaves_no_kernel(setup):
    work = setup["work"]
    probe_notebook(work / "slow.ipynb", "import time\ntime.sleep(600)")
    with serve(setup) as svc:
        runner = subprocess.Popen([setup["py"], "-m", "papermill", "slow.ipynb", "out.ipynb"], cwd=work,
                                  env=runner_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not probes(setup["probes"]):
                assert runner.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            [seen] = probes(setup["probes"])
            assert seen["ppid"] in svc.parents()
            assert [lease["owner"] for lease in status()["leases"]] == [runner.pid]
            runner.send_signal(signal.SIGKILL)
            runner.wait(30)
            deadline = time.monotonic() + 10  # "within a few seconds"
            while psutil.pid_exists(seen["pid"]) and psutil.Process(seen["pid"]).status() != "zombie":
                assert time.monotonic() < deadline, "the dead runner's kernel is still running"
                time.sleep(0.1)
            assert status()["leases"] == []
            assert "exited without shutting down" in svc.log()
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()


def test_with_the_service_down_the_same_runs_pass_cold(setup):
    work = setup["work"]
    probe_notebook(work / "in.ipynb")
    done = run([setup["py"], "-m", "papermill", "in.ipynb", "out.ipynb"], cwd=work)
    [seen] = probes(setup["probes"])
    assert seen["preimported"] is False
    assert seen["cwd"] == str(work)
    assert seen["runner_only"] == "from-the-runner"
    assert "starting the 'python3' kernel cold: no pool service listens on" in done.stderr
    assert done.stderr.count("starting the 'python3' kernel cold") == 1


def test_jupyter_server_with_no_hotpot_configuration(setup):
    """A plain jupyter_server: sessions get pooled kernels; a restart relaunches cold in
    place, so an open websocket keeps working (same ports and key)."""
    root = setup["tmp"] / "root"
    probe_notebook(root / "sub" / "nb.ipynb")
    argv = [setup["py"], *jupyter_server(setup["tmp"], root)[1:]]
    # jupyter_server starts kernels without nbclient's history argument
    with serve(setup, '--PooledKernelManager.pool_kwargs={"python3": {}}') as svc, \
            running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                    log=setup["tmp"] / "server.log", env=runner_env()) as server:
        kid = new_session(server, "sub/nb.ipynb")
        sock = KernelSocket(server, kid)
        try:
            out, reply = sock.run(PROBE_CELL)
            assert reply["status"] == "ok", reply
            seen = json.loads(out.strip().splitlines()[-1])
            assert_pooled(seen, svc, root / "sub")
            connection = (setup["runtime"] / f"kernel-{kid}.json").read_text()

            response = api(server, "POST", f"/api/kernels/{kid}/restart")
            assert response.status_code == 200, response.text
            sock.wait_live()  # the same websocket, still open: its sockets reconnected
            out, reply = sock.run(PROBE_CELL)
            assert reply["status"] == "ok", reply
            again = json.loads(out.strip().splitlines()[-1])
            assert again["pid"] != seen["pid"]
            assert again["ppid"] == server.proc.pid  # cold, started by the server itself
            assert again["cwd"] == seen["cwd"]
            assert again["runner_only"] == "from-the-runner"
            assert (setup["runtime"] / f"kernel-{kid}.json").read_text() == connection
        finally:
            sock.close()
        assert api(server, "DELETE", f"/api/kernels/{kid}").status_code == 204
        assert status()["leases"] == []


def test_in_a_venv_the_install_wins_and_uninstall_restores(setup):
    """jupyter_core's default order in a venv finds the venv's own python3 before the
    user's: the install replaces that one (runs are warm), says where, and ``uninstall``
    puts ipykernel's spec back byte for byte (runs are cold again, with no warning)."""
    spec, py = setup["spec"], setup["py"]
    installed = setup["installed"]
    assert f"Installed kernelspec python3 in {spec} " in installed.stdout
    assert "now use this kernelspec" in installed.stdout and "Warning" not in installed.stderr
    assert not (setup["data"] / "kernels").exists()  # not the user's directory: it would lose
    where = subprocess.run([py, "-c", "from jupyter_client.kernelspec import KernelSpecManager as K;"
                            "print(K().get_kernel_spec('python3').resource_dir)"],
                           env=runner_env(), capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(spec)

    work = setup["work"]
    probe_notebook(work / "in.ipynb")
    with serve(setup) as svc:
        run([py, "-m", "papermill", "in.ipynb", "out.ipynb"], cwd=work)
        [seen] = probes(setup["probes"])
        assert_pooled(seen, svc, work)

    done = hotpot_km("kernelspec", "uninstall", python=setup["python"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(spec) in done.stdout
    assert {p.name: p.read_bytes() for p in spec.iterdir()} == setup["original"]
    for probe in setup["probes"].iterdir():
        probe.unlink()
    done = run([py, "-m", "papermill", "in.ipynb", "out.ipynb"], cwd=work)
    [seen] = probes(setup["probes"])
    assert seen["preimported"] is False and seen["ppid"] not in svc.parents()
    assert "hotpot_km" not in done.stderr  # the plain kernelspec: no provisioner, no warning


def test_install_for_the_user_in_a_venv_warns_that_it_loses(setup):
    """``--user`` in a venv writes a spec the venv's own shadows: the install says so."""
    done = hotpot_km("kernelspec", "install", "--user", python=setup["python"])
    assert done.returncode == 0, done.stderr
    assert f"'python3' still resolves to {setup['spec']}" in done.stderr
    assert "install without --user/--prefix" in done.stderr
    assert (setup["data"] / "kernels" / "python3" / "hotpot_km.json").exists()


#: An R cell that reports its kernel as PROBE_CELL does for Python.
R_PROBE_CELL = """\
ppid <- as.integer(strsplit(sub(".*[)] ", "", readLines("/proc/self/stat")), " ")[[1]][2])
probe <- list(pid = Sys.getpid(), ppid = ppid, cwd = getwd(), preimported = exists("hotpot_init"),
              runner_only = Sys.getenv("RUNNER_ONLY", NA), service_only = Sys.getenv("SERVICE_ONLY", NA),
              handout = Sys.getenv("HOTPOT_KM_HANDOUT", NA))
json <- jsonlite::toJSON(probe, auto_unbox = TRUE, na = "null")
writeLines(json, file.path(Sys.getenv("PROBE_DIR"), paste0("probe-", Sys.getpid(), ".json")))
cat(json)
"""


def test_papermill_runs_an_r_notebook_on_a_pooled_r_kernel(jupyter_dirs, monkeypatch, tmp_path):
    """``hotpot-km kernelspec install ir`` in a user's venv and ``hotpot-km serve`` with an
    ``ir`` pool: papermill runs an R notebook, unchanged, on a warm R kernel in its --cwd
    with the runner's env."""
    (jupyter_dirs["config"] / "kernel_pool_init_ir.R").write_text(
        "library(stats); library(methods); hotpot_init <- TRUE\n"
    )
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(probe_dir))
    python = virtual_env(tmp_path / "venv")
    ir_spec = Path(sys.prefix, "share", "jupyter", "kernels", "ir")
    shutil.copytree(ir_spec, tmp_path / "venv" / "share" / "jupyter" / "kernels" / "ir")
    installed = hotpot_km("kernelspec", "install", "ir", python=python)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    work, other = jupyter_dirs["work"], tmp_path / "elsewhere"
    other.mkdir()
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "ir", "display_name": "R", "language": "R"}},
        "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": R_PROBE_CELL}],
    }
    (work / "in.ipynb").write_text(json.dumps(notebook))
    with service(tmp_path / "service.log", kernel_pools={"ir": 1}, python=python) as svc:
        run([str(python), "-m", "papermill", "--cwd", str(other), "in.ipynb", "out.ipynb"],
            cwd=work)
        [seen] = probes(probe_dir)
        assert seen["ppid"] == svc.pid
        assert seen["preimported"] is True
        assert seen["cwd"] == str(other)
        assert seen["runner_only"] == "from-the-runner"
        assert seen["service_only"] is None
        assert seen["handout"] is None
        out = json.loads((work / "out.ipynb").read_text())
        assert json.loads(out["cells"][0]["outputs"][0]["text"][0]) == seen
        assert status()["leases"] == []
