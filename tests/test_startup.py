"""Servers configured as the README says fill their pools on their own, on ports kernels can't take."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import marked_kernels
from servers import (
    TOKEN,
    free_port,
    jupyter_lab,
    jupyter_server,
    new_session,
    port_of,
    running,
    wait_for,
    write_notebook,
    ws_run,
)

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


@pytest.mark.parametrize("command", [jupyter_server, jupyter_lab])
def test_jupyter_server_fills_the_pool_without_wait_at_startup(jupyter_dirs, tmp_path, command):
    """The README's two lines, nothing else: the pool fills on the server's own event loop
    before any request. ``jupyter lab`` creates its event loop before the kernel manager;
    the pool used to be scheduled on a new loop the server never runs."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
    )
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text("import wave\n")
    root = tmp_path / "root"
    write_notebook(root / "nb.ipynb", "1")
    argv = command(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        wait_for(lambda: len(server.kernel_pids()) == 2, timeout=120, what="2 pooled kernels")
        pooled = server.kernel_pids()
        kernel_id = new_session(server, "nb.ipynb")
        reply = ws_run(server, kernel_id, "import os, sys\nassert 'wave' in sys.modules\n"
                       f"assert os.getpid() in {sorted(pooled)}")
        assert reply["status"] == "ok", reply
    assert not marked_kernels()


def test_server_ports_are_below_the_ephemeral_range():
    """Kernels bind their ports in the ephemeral range; a server port from there could be
    taken by a pooled kernel before the server listens."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert 1024 < port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
