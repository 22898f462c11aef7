"""The handout: a gate before the request's cwd/env, no half-applied kernel, refills that yield.

Real kernels, real managers; a failure inside a kernel is caused by the user's own init
file, the way a real one would break it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import psutil
import pytest
from conftest import kernel_children
from jupyter_client.asynchronous.client import AsyncKernelClient
from kernel_helpers import exited, probe, run, shut_down, wait_until
from servers import TOKEN, api, jupyter_server, new_session, port_of, running, ws_probe
from servers import write_notebook as notebook
from traitlets.utils.importstring import import_item

from hotpot_km import PooledKernelManager
from hotpot_km.handout import ready_client_class
from hotpot_km.priority import can_restore

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: The user's first request: where and with what it ran, appended to a file.
RECORD = (
    "import os, json\n"
    "with open({path!r}, 'a') as f:\n"
    "    f.write(json.dumps([os.getpid(), os.getcwd(), os.environ.get('APPLIED')]) + '\\n')\n"
)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_handout")
    return logging.getLogger("hotpot_handout")


def new_manager(log: logging.Logger, **traits) -> PooledKernelManager:
    traits.setdefault("fill_delay", 0)
    traits.setdefault("max_warming", 2)
    km = PooledKernelManager(**traits)
    km.log = log
    return km


def pids() -> set[int]:
    return {p.pid for p in kernel_children()}


async def test_a_kernel_failing_halfway_through_its_handout_exits_and_is_restarted(
    jupyter_dirs, log, caplog
):
    # A user's init file that breaks time.tzset in the first kernel that runs it: that
    # kernel's handout fails after it changed directory and environment.
    flag, broken_pid = jupyter_dirs["work"] / "break-one", jupyter_dirs["work"] / "broken.pid"
    flag.touch()
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        "import os, time\n"
        "try:\n"
        f"    os.remove({str(flag)!r})\n"
        "except FileNotFoundError:\n"
        "    pass\n"
        "else:\n"
        f"    open({str(broken_pid)!r}, 'w').write(str(os.getpid()))\n"
        "    def _broken():\n"
        "        raise RuntimeError('tzset broken by init code')\n"
        "    time.tzset = _broken\n"
        "    del _broken\n"
    )
    record = jupyter_dirs["work"] / "first-requests.jsonl"
    km = new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        broken = int(broken_pid.read_text())
        assert broken in pids()
        cwd = jupyter_dirs["data"]
        kid = await km.start_kernel(cwd=str(cwd), env=dict(os.environ, APPLIED="yes"))
        # the user's first request, sent at once: it must never run in the broken kernel
        client = km.get_kernel(kid).client()
        client.start_channels(hb=False)
        client.execute(RECORD.format(path=str(record)))
        await wait_until(lambda: exited(broken), what="the broken kernel exited")
        client.stop_channels()

        # the host's own restarter (jupyter_client's KernelRestarter) brings up a new kernel
        manager = km.get_kernel(kid)
        await wait_until(
            lambda: manager.provisioner.pid not in (None, broken), timeout=120, what="restart"
        )
        await manager.ready
        seen = await probe(km, kid)
        assert seen["pid"] != broken
        assert seen["cwd"] == str(cwd)
        assert seen["env"]["APPLIED"] == "yes"
        ran = (
            [json.loads(line) for line in record.read_text().splitlines()]
            if record.exists()
            else []
        )
        assert all(pid != broken for pid, _, _ in ran), ran
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("exited while applying" in w for w in warnings), warnings
    finally:
        await shut_down(km)


async def test_requests_wait_at_the_gate_until_the_handout_is_applied(jupyter_dirs, log):
    # A request sent at once runs only after the handout: it sees the request's cwd/env,
    # never the pool's. Large values make the handout take long enough to be overtaken.
    record = jupyter_dirs["work"] / "first.jsonl"
    bulk = {f"BULK_{n}": str(n) * 2_000_000 for n in range(4)}
    km = new_manager(log, kernel_pools={"python3": 2})
    try:
        for i in range(6):
            await km.wait_for_pool()
            pooled = pids()
            cwd = jupyter_dirs["data"] if i % 2 else jupyter_dirs["config"]
            env = dict(os.environ, APPLIED=str(i), **bulk)
            kid = await km.start_kernel(cwd=str(cwd), env=env)
            client = km.get_kernel(kid).client()
            client.start_channels()
            try:
                msg_id = client.execute(RECORD.format(path=str(record)))  # before any wait
                reply = await client._async_recv_reply(msg_id, timeout=60)
                assert reply["content"]["status"] == "ok"
            finally:
                client.stop_channels()
            pid, ran_in, applied = json.loads(record.read_text().splitlines()[-1])
            assert pid in pooled
            assert (ran_in, applied) == (str(cwd), str(i))
            await km.shutdown_kernel(kid)
    finally:
        await shut_down(km)


async def test_ready_client_only_while_the_kernel_is_a_handed_out_one(jupyter_dirs, log):
    km = new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel()
        manager = km.get_kernel(kid)
        assert isinstance(manager, import_item(km.kernel_manager_class))
        assert type(manager.client()) is ready_client_class(AsyncKernelClient)
        handed = (await probe(km, kid))["pid"]
        # a cold restart (no ready pooled kernel) brings the manager's own client class back
        km.kernel_pools = {}
        await wait_until(lambda: pids() == {handed}, what="the pool emptied")
        await km.restart_kernel(kid)
        assert type(manager.client()) is AsyncKernelClient
        assert (await probe(km, kid))["execution_count"] == 1
    finally:
        await shut_down(km)


async def test_refills_wait_until_the_handed_out_kernel_went_idle(jupyter_dirs, log):
    km = new_manager(log, kernel_pools={"python3": 1}, fill_delay=0.1, fill_idle_timeout=120)
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel()
        handed = pids()
        await asyncio.sleep(2)
        assert pids() == handed, "a refill started while the kernel had not run anything"
        seen = await probe(km, kid)  # the first execution; idle afterwards
        assert seen["pid"] in handed
        await wait_until(lambda: len(pids() - handed) == 1, what="the refill started")
        await km.wait_for_pool()
    finally:
        await shut_down(km)

    # with a short cap, a kernel that never runs anything does not hold the refill back
    km = new_manager(log, kernel_pools={"python3": 1}, fill_delay=0.1, fill_idle_timeout=0.5)
    try:
        await km.wait_for_pool()
        await km.start_kernel()
        handed = pids()
        await wait_until(lambda: len(pids() - handed) == 1, what="the refill started")
    finally:
        await shut_down(km)


#: Init code that records the kernel's pid (a line per run), then warms up until the test
#: lets it (or all) finish.
HELD_WARMUP = (
    "import os, pathlib, time\n"
    "with open(pathlib.Path({where!r}, str(os.getpid())), 'a') as runs:\n"
    "    runs.write('ran\\n')\n"
    "release = pathlib.Path({release!r})\n"
    "while not ((release / 'all').exists() or (release / str(os.getpid())).exists()):\n"
    "    time.sleep(0.02)\n"
)


def stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def held_warmups(jupyter_dirs: dict[str, Path]) -> tuple[Path, Path]:
    where, release = jupyter_dirs["work"] / "warming", jupyter_dirs["work"] / "release"
    where.mkdir()
    release.mkdir()
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        HELD_WARMUP.format(where=str(where), release=str(release))
    )
    return where, release


async def new_warming(where: Path, before: set[int]) -> int:
    """The pid of the warm-up that begins its init code now (not one of ``before``)."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [int(p.name) for p in where.iterdir() if int(p.name) not in before]
        return bool(found)

    await wait_until(started, timeout=60, what="a refill runs its init code")
    return found[0]


async def a_held_refill(
    jupyter_dirs: dict[str, Path], log: logging.Logger, pool: int, **traits
) -> tuple[PooledKernelManager, Path, Path, set[int], int]:
    """A full pool whose init code holds every later warm-up until the test releases it; one
    kernel handed out, run and settled, so its refill is warming: (manager, pid directory,
    release directory, pids of the first fill, pid of that refill)."""
    where, release = held_warmups(jupyter_dirs)
    (release / "all").touch()
    km = new_manager(
        log, kernel_pools={"python3": pool}, fill_delay=0.1, fill_idle_timeout=120,
        max_warming=1, **traits,
    )
    await km.wait_for_pool()
    (release / "all").unlink()  # refills now warm up until the test lets them finish
    full = {int(p.name) for p in where.iterdir()}
    await probe(km, await km.start_kernel())  # it ran its first cell and goes idle
    return km, where, release, full, await new_warming(where, full)


def ready_in_pool(km: PooledKernelManager, pid: int) -> bool:
    views = km.kernel_pool.snapshot().pools[0].kernels
    return any(view.pid == pid and view.state == "ready" for view in views)


async def test_warmups_stand_still_while_a_handed_out_kernel_settles(jupyter_dirs, log):
    km, _, release, full, refill = await a_held_refill(jupyter_dirs, log, 3, refill_pause=120)
    try:
        assert not stopped(refill)  # nothing settles now

        second = await km.start_kernel()  # settles until it ran something
        await wait_until(lambda: stopped(refill), what="the warm-up stands still")
        (view,) = [v for v in km.kernel_pool.snapshot().pools[0].kernels if v.pid == refill]
        assert view.state == "warming" and view.paused  # as the status document shows it
        await probe(km, second)
        await wait_until(lambda: not stopped(refill), what="the warm-up goes on once settled")

        third = await km.start_kernel()  # never runs anything: settles for 120 s
        await wait_until(lambda: stopped(refill), what="the warm-up stands still again")
        claim = asyncio.ensure_future(km.start_kernel())  # only the warming kernel is left
        await wait_until(lambda: not stopped(refill), what="a claimed warm-up goes on at once")
        (release / str(refill)).touch()
        fourth = await claim
        assert (await probe(km, fourth))["pid"] == refill

        # a warm-up launched while a handed-out kernel settles stands still from its start,
        # and a kernel standing still is shut down like any other
        handed = full | {refill}  # the four handed-out kernels
        await wait_until(lambda: len(pids() - handed) == 1, what="the next refill started")
        (next_refill,) = pids() - handed
        await wait_until(lambda: stopped(next_refill), what="the new warm-up stands still")
        assert third in km.list_kernel_ids()
    finally:
        await shut_down(km)
    assert not kernel_children()


async def test_a_warmup_stands_still_no_longer_than_refill_pause(jupyter_dirs, log):
    km, _, release, _, refill = await a_held_refill(jupyter_dirs, log, 2, refill_pause=1.0)
    try:
        await km.start_kernel()  # never runs anything: settles for 120 s
        await wait_until(lambda: stopped(refill), what="the warm-up stands still")
        await wait_until(lambda: not stopped(refill), what="the warm-up goes on, its pause spent")
        (release / "all").touch()
        await wait_until(lambda: ready_in_pool(km, refill),
                         what="the warm-up finishes, the other kernel still settling")
    finally:
        await shut_down(km)


async def test_the_time_a_warmup_stands_still_does_not_count_toward_its_timeout(
    jupyter_dirs, log
):
    km, where, release, _, refill = await a_held_refill(
        jupyter_dirs, log, 2, refill_pause=120, init_timeout=3
    )
    try:
        second = await km.start_kernel()
        await wait_until(lambda: stopped(refill), what="the warm-up stands still")
        await asyncio.sleep(5)  # longer than init_timeout, all of it stopped
        (release / str(refill)).touch()
        await probe(km, second)  # settled: the warm-up goes on, finds its release at once
        await wait_until(lambda: ready_in_pool(km, refill),
                         what="the warm-up finishes without timing out")
        assert not km.kernel_pool.snapshot().pools[0].consecutive_failures
        assert (where / str(refill)).read_text() == "ran\n"  # its init code was sent once
    finally:
        await shut_down(km)


PRIORITY_PROBE = """
import os, json
print(json.dumps(sorted({os.sched_getscheduler(int(t)) for t in os.listdir('/proc/self/task')})))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
# Leaving SCHED_IDLE takes root (CAP_SYS_NICE) or an RLIMIT_NICE a normal user rarely has:
# as a normal user this checks that refills stay at normal priority, as root (make
# test-root) that they warm at idle priority and are brought back before handout.
@pytest.mark.root
async def test_refills_warm_at_idle_priority_and_handouts_run_at_normal_priority(jupyter_dirs, log):
    warmed = jupyter_dirs["work"] / "warmed"
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        f"import os\nopen({str(warmed)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
    )
    km = new_manager(log, kernel_pools={"python3": 1}, max_warming=1)
    try:
        await km.wait_for_pool()  # someone waits: this fill runs at normal priority
        first = pids()
        assert all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in first)
        kid = await km.start_kernel()
        out, _ = await run(km, kid, PRIORITY_PROBE)
        assert json.loads(out) == [os.SCHED_OTHER]  # every thread, at its first request

        # its refill: nobody waits for it, so it warms at idle priority where that can be undone
        await wait_until(lambda: len(pids() - first) == 1, what="the refill started")
        (refill,) = pids() - first
        if can_restore():
            await wait_until(lambda: os.sched_getscheduler(refill) == os.SCHED_IDLE)
        else:  # it could not be brought back: it must not be lowered
            assert os.sched_getscheduler(refill) == os.SCHED_OTHER
        await wait_until(lambda: str(refill) in warmed.read_text().split(), timeout=120)
        await wait_until(lambda: ready_in_pool(km, refill), what="it waits in the pool")
        # claimed: every thread is back to normal before anything runs in it
        kid2 = await km.start_kernel()
        out, _ = await run(km, kid2, PRIORITY_PROBE)
        assert json.loads(out) == [os.SCHED_OTHER]
        assert (await probe(km, kid2))["pid"] == refill
    finally:
        await shut_down(km)


def test_the_example_init_file_imports_what_the_dashboard_imports():
    example = Path(__file__).parent.parent / "examples" / "dashboard"
    nb = json.loads((example / "dashboard.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    init = (example / "jupyter_config" / "kernel_pool_init_python3.py").read_text()
    for line in code.splitlines():
        if line.startswith(("import ", "from ")):
            module = line.split()[1]
            assert f"import {module}" in init, f"{module} is imported by the dashboard only"


def test_jupyter_server_events_and_state_of_a_handed_out_kernel(jupyter_dirs, tmp_path):
    """A handout's start skips jupyter_client's pause, not the host's own start_kernel."""
    events = tmp_path / "events.jsonl"
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        "import logging\n"
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
        f"c.EventLogger.handlers = [logging.FileHandler({str(events)!r})]\n"
    )
    root = tmp_path / "root"
    notebook(root / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(
        argv,
        cwd=root,
        port=port_of(argv),
        ready_path=f"/api/status?token={TOKEN}",
        log=tmp_path / "server.log",
    ) as server:
        pooled = server.kernel_pids()
        kid = new_session(server, "nb.ipynb")
        # up and idle, not "starting" (a websocket's nudge would poll for a change)
        assert api(server, "GET", f"/api/kernels/{kid}").json()["execution_state"] == "idle"
        assert ws_probe(server, kid)["pid"] in pooled
        assert api(server, "POST", f"/api/kernels/{kid}/restart").status_code == 200
        assert ws_probe(server, kid)["pid"] in pooled  # a warm restart, also a handout
    emitted = [json.loads(line) for line in events.read_text().splitlines()]
    actions = [
        (e["action"], e["status"])
        for e in emitted
        if e.get("__schema__", "").endswith("/kernel_actions/v1") and e.get("kernel_id") == kid
    ]
    assert ("start", "success") in actions, actions
    assert ("restart", "success") in actions, actions
