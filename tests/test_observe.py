"""Seeing the pool: /metrics, /api/hotpot_km/status and `hotpot-km status`, on real servers
configured as users configure them, and the counts behind them in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import kernel_children
from kernel_helpers import probe, shut_down, wait_until, write_kernelspec
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    TOKEN,
    Server,
    free_port,
    jupyter_server,
    log_tracebacks,
    new_session,
    port_of,
    running,
    voila_command,
    wait_for,
    write_notebook,
    ws_probe,
)

from hotpot_km import MaximumKernelsException, PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

CLI = Path(sys.executable).with_name("hotpot-km")
STARTS = "hotpot_km_kernel_starts_total"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def scrape(server: Server, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"token {token}"} if token else {}
    response = requests.get(server.url + "/metrics", headers=headers, timeout=60)
    assert response.status_code == 200, response.text[:500]
    return parse(response.text)


def local_samples() -> Samples:
    return parse(generate_latest(REGISTRY).decode())


def moved(before: Samples, after: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Series of ``name`` whose value changed, with the change, labels sorted."""
    out = {}
    for key, value in after.items():
        if key[0] == name and value != before.get(key, 0.0):
            out[tuple(sorted(key[1]))] = value - before.get(key, 0.0)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_labels(kernel: str, result: str, reason: str = "") -> tuple[tuple[str, str], ...]:
    return (("kernel_name", kernel), ("reason", reason), ("result", result))


def status(server: Server, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(server.url + "/api/hotpot_km/status", headers=headers, timeout=60)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "status", *args], capture_output=True, text=True, timeout=120, check=False
    )


def cli_json(server: Server, token: str = TOKEN) -> dict[str, Any]:
    done = cli("--url", server.url, "--token", token, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def assert_agrees_with_processes(doc: dict[str, Any], server: Server, handed: set[int]) -> None:
    """The document's pool is the server's real one: its counts, and its kernels' pids are
    exactly the server's kernel processes that were not handed out."""
    pool = doc["pools"]["python3"]
    pids = {k["pid"] for k in pool["kernels"]}
    assert len(pool["kernels"]) == pool["ready"] + pool["warming"] + pool["claimed"]
    assert pids == server.kernel_pids() - handed
    assert doc["processes"]["used"] == len(server.kernel_pids())
    assert doc["processes"]["in_use"] == len(handed)


@pytest.mark.slow
def test_jupyter_server_metrics_status_and_cli(jupyter_dirs, tmp_path):
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 3}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
    )
    root = tmp_path / "root"
    for name in ("nb0", "nb1", "nb2", "other"):
        write_notebook(root / f"{name}.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        # authenticated like the rest of the API; the extension came with the install
        assert status(server, token=None).status_code == 403
        assert status(server, token="wrong").status_code == 403
        assert requests.get(server.url + "/metrics", timeout=30).status_code == 403
        doc = status(server).json()
        assert doc["enabled"] is True
        assert doc["manager"] == "hotpot_km.mapping.PooledMappingKernelManager"
        pool = doc["pools"]["python3"]
        assert (pool["size"], pool["ready"], pool["warming"], pool["claimed"]) == (3, 3, 0, 0)
        assert pool["full"] is True
        assert doc["settings"]["kernel_pools"] == {"python3": 3}
        assert_agrees_with_processes(cli_json(server), server, handed=set())

        before = scrape(server)
        assert value(before, "hotpot_km_pool_size", kernel_name="python3") == 3
        assert value(before, "hotpot_km_pool_kernels", kernel_name="python3", state="ready") == 3
        pooled = server.kernel_pids()
        handed = set()
        for i in range(3):
            kid = new_session(server, f"nb{i}.ipynb")
            handed.add(ws_probe(server, kid)["pid"])
        assert handed <= pooled and len(handed) == 3  # really pooled kernels
        unknown = requests.post(
            server.url + "/api/sessions",
            headers={"Authorization": f"token {TOKEN}"},
            json={"path": "other.ipynb", "type": "notebook", "name": "other.ipynb",
                  "kernel": {"name": "nope"}},
            timeout=60,
        )
        assert unknown.status_code >= 400
        after = scrape(server)

        assert moved(before, after, STARTS) == {
            start_labels("python3", "pooled"): 3,
            start_labels("nope", "cold", "no_pool"): 1,
        }
        assert moved(before, after, "hotpot_km_handout_duration_seconds_count") == {
            (("kernel_name", "python3"),): 3
        }
        assert moved(before, after, "hotpot_km_warmup_failures_total") == {}

        # once refilled, the CLI's document is the real pool again
        def refilled() -> bool:
            pool = status(server).json()["pools"]["python3"]
            return pool["ready"] == 3
        wait_for(refilled, timeout=120, what="the pool refills")
        doc = cli_json(server)
        assert_agrees_with_processes(doc, server, handed)
        starts = doc["pools"]["python3"]["starts"]
        assert (starts["pooled"], starts["cold"]) == (3, 0)
        assert doc["pools"]["nope"]["starts"]["cold_reasons"] == {"no_pool": 1}

        table = cli("--url", f"{server.url}/?token={TOKEN}")
        assert table.returncode == 0, table.stderr
        assert "python3" in table.stdout and "full" in table.stdout
        assert "no_pool 1" in table.stdout
        watching = subprocess.Popen(
            [str(CLI), "status", "--url", server.url, "--token", TOKEN, "--watch",
             "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", COLUMNS="120"),
        )
        time.sleep(3)
        watching.send_signal(signal.SIGINT)  # Ctrl-C ends it quietly
        out, err = watching.communicate(timeout=60)
        assert watching.returncode == 0, err
        assert out.count("Starts") >= 2 and "python3" in out  # refreshed in place
        refused = cli("--url", server.url, "--token", "wrong")
        assert refused.returncode == 1 and "403" in refused.stdout + refused.stderr
        # jupyter_server logs the unknown name's NoSuchKernel itself; nothing else
        log = server.log()
        assert all("NoSuchKernel: No such kernel named nope" in found
                   for found in log_tracebacks(log))
    # (leaving the context asserts the server stopped on SIGTERM despite the failed start)


def test_a_server_without_a_pool_says_so(jupyter_dirs, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        assert status(server, token=None).status_code == 403
        doc = status(server).json()
        assert doc["enabled"] is False and doc["pools"] == {}
        assert "not a hotpot_km one" in doc["message"]
        done = cli("--url", server.url, "--token", TOKEN)
        assert done.returncode == 2
        assert "not a hotpot_km one" in " ".join(done.stdout.split())


VOILA_JSON = """{
  "VoilaConfiguration": {"multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
  "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}
}
"""


def test_voila_serves_metrics_and_status(jupyter_dirs, tmp_path):
    """Standalone Voila with the seed voila.json: /metrics and the status appear, behind
    Voila's own token, and count what the pages got."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(VOILA_JSON)
    write_notebook(app / "dashboard.ipynb", "import os\nprint('PID', os.getpid())")
    port = free_port()
    argv = [*voila_command("dashboard.ipynb", port), f"--Voila.token={TOKEN}"]
    with running(argv, cwd=app, port=port, ready_path="/voila/files/voila.json",
                 log=tmp_path / "voila.log") as server:
        assert status(server, token=None).status_code == 403
        assert requests.get(server.url + "/metrics", timeout=30).status_code == 403
        doc = status(server).json()
        assert doc["enabled"] is True
        assert doc["pools"]["python3"]["ready"] == 3
        assert_agrees_with_processes(cli_json(server), server, handed=set())

        before = scrape(server)
        pooled = server.kernel_pids()
        pids = set()
        for i in range(3):
            page = requests.get(f"{server.url}/?token={TOKEN}&page={i}", timeout=120)
            assert page.status_code == 200, server.log()[-3000:]
            pids.add(int(page.text.split("PID ", 1)[1].split()[0]))
        assert pids <= pooled and len(pids) == 3
        after = scrape(server)
        assert moved(before, after, STARTS) == {start_labels("python3", "pooled"): 3}
        assert moved(before, after, "hotpot_km_handout_duration_seconds_count") == {
            (("kernel_name", "python3"),): 3
        }
        starts = status(server).json()["pools"]["python3"]["starts"]
        assert (starts["pooled"], starts["cold"]) == (3, 0)
        assert not log_tracebacks(server.log())


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_observe")
    return logging.getLogger("hotpot_observe")


async def test_counts_by_reason_restarts_and_managers_that_share_a_process(jupyter_dirs, log):
    """Two managers in one process report into the same series without clashing; a start whose
    start-only env differs, one with other start arguments and one refused by max_kernels are
    each counted once with their reason; a restart onto a ready pooled kernel counts as pooled."""
    write_kernelspec(jupyter_dirs["data"], "second")
    km = PooledKernelManager(kernel_pools={"python3": 2}, fill_delay=0, max_warming=2)
    other = PooledKernelManager(kernel_pools={"second": 1}, fill_delay=0, max_kernels=1)
    km.log = other.log = log
    try:
        await asyncio.gather(km.wait_for_pool(), other.wait_for_pool())
        before = local_samples()
        assert value(before, "hotpot_km_managers") >= 2
        assert value(before, "hotpot_km_pool_size", kernel_name="second") >= 1

        env = dict(os.environ, PYTHONPATH=str(jupyter_dirs["work"]))
        cold_env = await km.start_kernel(env=env)
        assert (await probe(km, cold_env))["env"]["PYTHONPATH"] == str(jupyter_dirs["work"])
        await km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
        pooled = await km.start_kernel()
        await wait_until(lambda: km.kernel_pool.snapshot().pools[0].count("ready") == 2,
                         what="refilled")
        await km.restart_kernel(pooled)
        second = await other.start_kernel(kernel_name="second")
        with pytest.raises(MaximumKernelsException):
            await other.start_kernel(kernel_name="second")
        after = local_samples()

        assert moved(before, after, STARTS) == {
            start_labels("python3", "cold", "startup_env"): 1,
            start_labels("python3", "cold", "start_arguments"): 1,
            start_labels("python3", "pooled"): 1,
            start_labels("second", "pooled"): 1,
            start_labels("second", "refused", "max_kernels"): 1,
        }
        assert moved(before, after, "hotpot_km_kernel_restarts_total") == {
            start_labels("python3", "pooled"): 1
        }
        # each manager's own status shows only its own pools and counts
        mine = km.kernel_pool.snapshot()
        assert [p.kernel_name for p in mine.pools] == ["python3"]
        assert mine.stats["python3"]["starts"]["cold_reasons"] == {
            "startup_env": 1, "start_arguments": 1
        }
        theirs = other.kernel_pool.snapshot()
        assert [p.kernel_name for p in theirs.pools] == ["second"]
        assert theirs.stats["second"]["starts"]["refused"] == 1
        assert second in other.list_kernel_ids()
        # the gauges are read from the live pools at scrape time (no await in between)
        for state in ("ready", "warming", "claimed"):
            assert value(after, "hotpot_km_pool_kernels", kernel_name="second", state=state) == (
                theirs.pools[0].count(state)
            ), state
        assert value(after, "hotpot_km_pool_size", kernel_name="second") == 1
    finally:
        await shut_down(km)
        await shut_down(other)
    gone = local_samples()  # closed managers are no longer in the gauges
    assert value(gone, "hotpot_km_pool_size", kernel_name="second") == 0


async def test_failing_warmups_are_counted_by_step_and_shown(jupyter_dirs, log):
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        "raise RuntimeError('no database today')\n"
    )
    km = PooledKernelManager(kernel_pools={"python3": 1}, fill_delay=0, max_retry_delay=1.0)
    km.log = log
    before = local_samples()
    try:
        await wait_until(lambda: km.kernel_pool.stats.warmup_failures, what="a failed warm-up")
        kid = await km.start_kernel()  # served cold meanwhile
        assert kid in km.list_kernel_ids()
        from hotpot_km.status import manager_status

        doc = manager_status(km)
        pool = doc["pools"]["python3"]
        assert pool["warmup_failing"] is True and pool["ready"] == 0
        assert pool["starts"]["cold_reasons"] == {"warmup_failing": 1}
        error = doc["recent_errors"][0]
        assert error["step"] == "init_file"
        assert "no database today" in error["message"]
        assert "kernel_pool_init_python3.py" in error["message"]
        after = local_samples()
        failed = moved(before, after, "hotpot_km_warmup_failures_total")
        assert set(failed) == {(("kernel_name", "python3"), ("step", "init_file"))}
        assert value(after, "hotpot_km_warmup_consecutive_failures", kernel_name="python3") >= 1
        assert moved(before, after, STARTS) == {start_labels("python3", "cold", "warmup_failing"): 1}
    finally:
        await shut_down(km)


async def test_one_info_line_when_full_dry_and_full_again(jupyter_dirs, caplog, log):
    caplog.set_level(logging.INFO, logger="hotpot_observe")
    km = PooledKernelManager(kernel_pools={"python3": 1}, fill_delay=0)
    km.log = log

    def infos() -> list[str]:  # the pool's (fork mode's template logs its start on its own)
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.INFO and r.getMessage().startswith("hotpot_km:")
                and "fork template" not in r.getMessage()]

    def ready() -> bool:
        return km.kernel_pool.snapshot().pools[0].count("ready") == 1

    try:
        await km.wait_for_pool()
        assert infos() == ["hotpot_km: the 'python3' pool is full (1 ready)"]
        # a handout, then a refill: normal operation, nothing at INFO
        await km.start_kernel()
        await wait_until(ready, what="refilled")
        assert len(infos()) == 1
        # two starts in a row: the second finds the pool dry and waits for the warming kernel
        await km.start_kernel()
        await km.start_kernel()
        await wait_until(ready, what="refilled")
        await wait_until(lambda: len(infos()) == 3, what="two more lines")
        assert infos()[1].startswith("hotpot_km: the 'python3' pool ran dry (0 of 1 ready)")
        assert infos()[2] == (
            "hotpot_km: the 'python3' pool is full again (1 ready); 1 request(s) found it dry"
        )
        assert len(kernel_children()) == 4
    finally:
        await shut_down(km)


def test_grafana_dashboard_queries_the_exported_metrics():
    """docs/grafana-dashboard.json is a Grafana dashboard whose PromQL names only metrics this
    package exports, and shows every one of them."""
    exported: set[str] = set()
    families = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("hotpot_km_"):
            continue
        families.add(family.name)
        exported.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        exported.update(family.name + s for s in suffixes.get(family.type, []))
    path = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36 and dashboard["title"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queries = []
    for panel in panels:
        assert panel["type"] in {"stat", "timeseries"} and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
        queries += [t["expr"] for t in panel["targets"]]
    variables = dashboard["templating"]["list"]
    queries += [v["query"]["query"] for v in variables if isinstance(v.get("query"), dict)]
    used = {name for query in queries for name in re.findall(r"hotpot_km_\w+", query)}
    assert used <= exported, used - exported
    unshown = {f for f in families if not any(name.startswith(f) for name in used)}
    assert not unshown
