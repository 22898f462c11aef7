"""Notebook runners: nbclient executes a notebook on a pooled kernel."""

from __future__ import annotations

import nbformat
import pytest
from conftest import kernel_children, pooled_manager
from nbclient import NotebookClient

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


async def test_nbclient_runs_a_notebook_on_a_pooled_kernel(jupyter_dirs):
    km = pooled_manager(kernel_pools={"python3": 1}, python_imports=["colorsys"])
    try:
        await km.wait_for_pool()
        pooled = {p.pid for p in kernel_children()}
        nb = nbformat.v4.new_notebook()
        nb.cells.append(
            nbformat.v4.new_code_cell("import os, sys\nprint(os.getpid(), 'colorsys' in sys.modules)")
        )
        kernel_id = await km.start_kernel(cwd=str(jupyter_dirs["data"]))
        client = NotebookClient(nb, km=km.get_kernel(kernel_id))
        await client.async_execute()
        pid, imported = nb.cells[0].outputs[0]["text"].split()
        assert int(pid) in pooled
        assert imported == "True"
        assert nb.cells[0].execution_count == 1
    finally:
        await km.shutdown_all()
