"""A start never waits for a warming kernel longer than a cold start takes, nor at all while
the pool's warm-ups fail: it starts cold, and the status and metrics say why.

Real kernels; the hang is the user's own init file, as a real one would hang
(a database that never answers). The guards around the starts are far longer than
any cold start and far shorter than the hang: they prove the start did not wait for
the init file, not how fast it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
import requests
from conftest import pooled_manager
from kernel_helpers import probe, shut_down, wait_until
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, running, voila_command, write_notebook

from hotpot_km.status import manager_status

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: An init file that hangs (after saying so); far longer than the guards below.
HANGING = "import os, time\nopen({where!r}, 'w').close()\ntime.sleep(3600)\n"
#: Longer than any cold start of the test machine, far shorter than the hang.
GUARD = 180


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_waits")
    return logging.getLogger("hotpot_waits")


def cold_starts(reason: str) -> float:
    """``hotpot_km_kernel_starts_total`` of cold python3 starts for ``reason``, this process."""
    total = 0.0
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == "hotpot_km_kernel_starts_total" and sample.labels == {
                "kernel_name": "python3",
                "result": "cold",
                "reason": reason,
            }:
                total += sample.value
    return total


async def test_a_hanging_init_file_never_holds_a_start_longer_than_a_cold_start(jupyter_dirs, log):
    hung = jupyter_dirs["work"] / "hanging"
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        HANGING.format(where=str(hung))
    )
    km = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0, init_timeout=3600)
    km.log = log
    before = cold_starts("warmup_slow")
    try:
        await wait_until(hung.exists, what="the warm-up hangs in the init file")
        first = await asyncio.wait_for(km.start_kernel(), GUARD)
        assert (await probe(km, first))["execution_count"] == 1
        # the hanging kernel is still warming: later starts don't wait for it at all
        second = await asyncio.wait_for(km.start_kernel(), GUARD)
        assert (await probe(km, second))["execution_count"] == 1
        pool = manager_status(km)["pools"]["python3"]
        assert pool["starts"]["cold_reasons"] == {"warmup_slow": 2}
        assert pool["warming"] == 1
        assert cold_starts("warmup_slow") - before == 2
    finally:
        await shut_down(km)


async def test_no_start_waits_for_a_warmup_while_the_pools_warmups_fail(jupyter_dirs, log):
    """The first warm-up fails, the next one hangs: with waits unbounded by configuration,
    a start still goes cold at once, because the pool's warm-ups are failing."""
    hung, tried = jupyter_dirs["work"] / "hanging", jupyter_dirs["work"] / "tried"
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        "import os\n"
        f"if not os.path.exists({str(tried)!r}):\n"
        f"    open({str(tried)!r}, 'w').close()\n"
        "    raise RuntimeError('no database today')\n" + HANGING.format(where=str(hung))
    )
    km = pooled_manager(
        kernel_pools={"python3": 1},
        fill_delay=0,
        init_timeout=3600,
        max_warmup_wait=3600,
        max_retry_delay=0.5,
    )
    km.log = log
    try:
        await wait_until(hung.exists, what="the second warm-up hangs in the init file")
        assert km.kernel_pool.stats.warmup_failures
        kid = await asyncio.wait_for(km.start_kernel(), GUARD)
        assert (await probe(km, kid))["execution_count"] == 1
        pool = manager_status(km)["pools"]["python3"]
        assert pool["starts"]["cold_reasons"] == {"warmup_failing": 1}
        assert pool["warming"] == 1
    finally:
        await shut_down(km)
    assert os.path.exists(tried)


def test_a_hanging_init_file_delays_a_waiting_servers_start_by_the_cap_only(
    jupyter_dirs, tmp_path
):
    """Voila with the seed's ``_wait_at_startup`` and an init file that hangs: the server
    listens once ``max_warmup_wait`` has passed (not ``init_timeout``: an hour here, far
    longer than the readiness guard), and its first page is served by a cold kernel."""
    hung = jupyter_dirs["work"] / "hanging"
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        HANGING.format(where=str(hung))
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(
        json.dumps(
            {
                "VoilaConfiguration": {
                    "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"
                },
                "PooledKernelManager": {
                    "kernel_pools": {"python3": 1},
                    "_wait_at_startup": True,
                    "init_timeout": 3600,
                    "max_warmup_wait": 5,
                },
            }
        )
    )
    write_notebook(app / "page.ipynb", "print('served', 6 * 7)")
    port = free_port()
    with running(voila_command("page.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log",
                 timeout=GUARD) as server:
        assert hung.exists()  # the pool's kernel was (and is) hanging in the init file
        page = requests.get(server.url + "/", timeout=GUARD)
        assert page.status_code == 200
        assert "served 42" in page.text, page.text[-2000:]
        assert "the pools are not full after 5 s" in server.log()
