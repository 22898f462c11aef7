"""Faults of the kernels themselves: killed processes, broken kernelspecs, failing init code.

Real ipykernel (and deliberately broken) processes, no server unless named.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from children import ChildSampler
from conftest import kernel_children, marked_processes, pooled_manager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from kernel_helpers import exited, probe, shut_down, tracebacks, wait_until, write_kernelspec
from servers import TOKEN, api, jupyter_server, log_tracebacks, port_of, running

from hotpot_km import PooledKernelManager, WarmupError

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: In the command line of the kernel that never answers, to find its processes.
NEVER_ANSWERS = "hotpot-never-answers"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_faults")
    return logging.getLogger("hotpot_faults")


def new_manager(log: logging.Logger, **traits) -> PooledKernelManager:
    traits.setdefault("fill_delay", 0)
    traits.setdefault("max_warming", 2)
    km = pooled_manager(**traits)
    km.log = log
    return km


def pool_pids() -> set[int]:
    return {p.pid for p in kernel_children()}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def errors(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.ERROR]


def warnings_(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def ready_python3(km: PooledKernelManager) -> Callable[[], bool]:
    def ready() -> bool:
        pools = {p.kernel_name: p for p in km.kernel_pool.snapshot().pools}
        return pools["python3"].count("ready") >= 1

    return ready


async def fill(km: PooledKernelManager, timeout: float = 60) -> None:
    """Wait until the pools are full, through warm-ups that were already failing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await asyncio.wait_for(km.wait_for_pool(), max(deadline - loop.time(), 0.1))
            return
        except WarmupError:
            assert loop.time() < deadline, "the pool never filled"
            await asyncio.sleep(0.1)


async def start_outcome(manager: AsyncMultiKernelManager, name: str) -> tuple[str, ...]:
    """What a start request gets: the error's type and message, or ("started",)."""
    try:
        kid = await manager.start_kernel(kernel_name=name)
    except Exception as error:
        return (type(error).__name__, str(error))
    await manager.shutdown_kernel(kid, now=True)
    return ("started",)


# -- 1. killed kernels -------------------------------------------------------------------------


@pytest.mark.parametrize("victims", ["one", "all"])
async def test_killed_pooled_kernels_are_replaced_and_never_handed_out(
    jupyter_dirs, log, caplog, victims
):
    km = new_manager(log, kernel_pools={"python3": 3})
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        assert len(pooled) == 3
        killed = {min(pooled)} if victims == "one" else set(pooled)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        # dead, not dying: a kernel dying during its handout is its new owner's to restart
        await wait_until(lambda: all(exited(pid) for pid in killed), what="the kill")

        # requests right away (two at once, then one more): each gets a live kernel
        kids = list(await asyncio.gather(km.start_kernel(), km.start_kernel()))
        kids.append(await km.start_kernel())
        seen = [await probe(km, kid) for kid in kids]
        served = {s["pid"] for s in seen}
        assert len(served) == 3
        assert not served & killed
        assert [s["execution_count"] for s in seen] == [1, 1, 1]
        for kid in kids:
            await km.shutdown_kernel(kid)

        # the pool refills to its size, with new live kernels and no more
        await wait_until(lambda: len(pool_pids()) == 3, what="the pool refilled")
        await km.wait_for_pool()
        refilled = pool_pids()
        assert len(refilled) == 3
        assert not refilled & (killed | served)
        assert all(alive(pid) for pid in refilled)

        records = list(caplog.records)
        assert not tracebacks(records)
        assert not errors(records)
        assert len(warnings_(records)) <= 2 * len(killed), warnings_(records)
    finally:
        await shut_down(km)
    assert not pool_pids()


def hang_once_code(pid_file: Path) -> str:
    """Init code: the first kernel to run it writes its pid to ``pid_file`` and hangs."""
    lock = str(pid_file) + ".lock"
    return (
        "import os, time\n"
        "try:\n"
        f"    os.close(os.open({lock!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "except FileExistsError:\n"
        "    pass\n"
        "else:\n"
        f"    with open({str(pid_file) + '.tmp'!r}, 'w') as f:\n"
        "        f.write(str(os.getpid()))\n"
        f"    os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r})\n"
        "    time.sleep(300)\n"
    )


@pytest.mark.parametrize("max_kernels", [0, 1])
async def test_kernel_killed_mid_warmup_while_a_request_waits_for_it(
    jupyter_dirs, log, caplog, max_kernels
):
    """The only pooled kernel is killed during its init code while a request waits for it:
    the request still gets a live kernel, the failure is logged once, the pool refills,
    and ``max_kernels`` holds throughout."""
    pid_file = jupyter_dirs["work"] / "hanging.pid"
    km = new_manager(
        log,
        kernel_pools={"python3": 1},
        initialization_code={"python3": hang_once_code(pid_file)},
        max_retry_delay=1,
        max_kernels=max_kernels,
        max_warmup_wait=3600,  # the request waits for the warming kernel until it dies
    )
    with ChildSampler(os.getpid(), interval=0.002) as counter:
        try:
            await wait_until(pid_file.exists, what="a warm-up hangs in its init code")
            hung = int(pid_file.read_text())
            assert hung in pool_pids()
            request = asyncio.ensure_future(km.start_kernel())
            await asyncio.sleep(0.5)  # the request is now waiting for the warming kernel
            os.kill(hung, signal.SIGKILL)
            kid = await asyncio.wait_for(request, 60)
            seen = await probe(km, kid)
            assert seen["pid"] != hung
            assert alive(seen["pid"])

            if max_kernels:  # no room to refill while the request's kernel runs
                await km.shutdown_kernel(kid)
            await wait_until(
                lambda: len(pool_pids() - {seen["pid"]}) == 1, what="the pool refilled"
            )
            await km.wait_for_pool()
            assert hung not in pool_pids()

            records = list(caplog.records)
            assert not tracebacks(records)
            own = errors(records)
            assert len(own) == 1, own
            assert "initialization_code['python3']" in own[0]
            assert "the kernel process exited" in own[0]
            assert len(warnings_(records)) <= 2, warnings_(records)
        finally:
            await shut_down(km)
    if max_kernels:
        assert counter.max <= max_kernels, (
            f"{counter.max} kernel processes at once: {counter.at_max}"
        )
    assert not pool_pids()


# -- 2. broken kernelspecs ---------------------------------------------------------------------


def broken_argv(kind: str, work: Path) -> list[str]:
    if kind == "missing_program":
        return [str(work / "no-such-kernel-program"), "-f", "{connection_file}"]
    if kind == "exits_at_once":
        return [sys.executable, "-c", "import sys; sys.exit(1)", "{connection_file}"]
    return [sys.executable, "-c", f"import time; time.sleep(600)  # {NEVER_ANSWERS}",
            "{connection_file}"]


BROKEN_CAUSES = {
    "missing_program": "FileNotFoundError: [Errno 2] No such file or directory",
    "exits_at_once": "the kernel process exited",
    "never_answers": "timed out after 2 s",
}


@pytest.mark.parametrize("kind", list(BROKEN_CAUSES))
async def test_broken_kernelspec_backs_off_and_answers_like_a_cold_start(
    jupyter_dirs, log, caplog, kind
):
    write_kernelspec(jupyter_dirs["data"], "broken", broken_argv(kind, jupyter_dirs["work"]))
    km = new_manager(
        log, kernel_pools={"broken": 1, "python3": 1}, startup_timeout=2, max_retry_delay=1
    )
    cold = AsyncMultiKernelManager()
    try:
        with pytest.raises(WarmupError, match="pooled 'broken' kernel failed in kernel start"):
            await asyncio.wait_for(km.wait_for_pool(), 60)
        await asyncio.sleep(4)  # the pool keeps retrying meanwhile

        window = list(caplog.records)
        attempts = 1 + sum("(again, attempt" in r.getMessage() for r in window)
        assert 2 <= attempts <= 8, f"{attempts} warm-up attempts in about 4 s"
        own = [m for m in errors(window) if "pooled 'broken' kernel failed" in m]
        assert len(own) == 1, own
        assert BROKEN_CAUSES[kind] in own[0]
        assert not tracebacks(window), tracebacks(window)[:2]
        assert len(errors(window)) <= attempts + 1, errors(window)
        # failed attempts leave no process behind (one may be warming right now)
        assert len(marked_processes(NEVER_ANSWERS)) <= 1

        # the manager stays up: the other pool still serves warm kernels (once ready: a start
        # waits for a warming one no longer than a cold start takes)
        await wait_until(ready_python3(km), what="the python3 pool is ready")
        pooled = pool_pids()
        kid = await km.start_kernel()
        assert (await probe(km, kid))["pid"] in pooled
        await km.shutdown_kernel(kid)

        # a request for the broken spec gets exactly what a cold start gets
        assert await start_outcome(km, "broken") == await start_outcome(cold, "broken")

        # once the spec is fixed, the pool fills with it again
        write_kernelspec(jupyter_dirs["data"], "broken")
        await fill(km)
        pooled = pool_pids()
        kid = await km.start_kernel(kernel_name="broken")
        assert (await probe(km, kid))["pid"] in pooled
    finally:
        await shut_down(km)
        await cold.shutdown_all(now=True)
    assert not marked_processes(NEVER_ANSWERS)


async def test_a_fixed_kernelspec_is_used_by_the_next_request(jupyter_dirs, log, caplog):
    """While a broken pool backs off, a request after the kernelspec was fixed starts the
    fixed kernel, as a cold start does, instead of failing with the old spec."""
    write_kernelspec(jupyter_dirs["data"], "broken", broken_argv("missing_program", Path("/")))
    km = new_manager(log, kernel_pools={"broken": 1}, max_retry_delay=60)
    cold = AsyncMultiKernelManager()
    try:
        with pytest.raises(WarmupError):
            await km.wait_for_pool()
        # after the 4th failure the next warm-up is due only 4 s later
        await wait_until(
            lambda: any("again, attempt 4" in r.getMessage() for r in caplog.records),
            what="four failed warm-ups",
        )
        write_kernelspec(jupyter_dirs["data"], "broken")
        assert await start_outcome(km, "broken") == ("started",)
        assert await start_outcome(cold, "broken") == ("started",)
    finally:
        await shut_down(km)
        await cold.shutdown_all(now=True)


def start_error(server, name: str) -> tuple[int, str, str | None]:
    """Status and message a failed kernel start gets over REST, and the exception the
    server logs for it."""
    mark = len(server.log())
    response = api(server, "POST", "/api/kernels", json={"name": name})
    time.sleep(0.5)  # let the server's log of this request reach the file
    logged = re.findall(r"^\s*(\w+Error: .*)$", server.log()[mark:], re.M)
    return response.status_code, response.json().get("message"), logged[-1] if logged else None


def test_jupyter_server_stays_up_with_a_broken_kernelspec(jupyter_dirs, tmp_path):
    write_kernelspec(jupyter_dirs["data"], "broken", broken_argv("missing_program", tmp_path))
    root = tmp_path / "root"
    root.mkdir()

    # the reference: a plain jupyter_server asked to start the same kernelspec
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "plain.log") as plain:
        expected = start_error(plain, "broken")
    assert expected[0] == 500 and "No such file or directory" in (expected[2] or ""), expected

    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 1, "broken": 1}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
        "c.PooledKernelManager.max_retry_delay = 1.0\n"
    )
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        time.sleep(3)  # failing warm-ups retry meanwhile
        before = server.log()
        # the working pool serves kernels
        response = api(server, "POST", "/api/kernels", json={"name": "python3"})
        assert response.status_code == 201, response.text
        kid = response.json()["id"]
        assert api(server, "DELETE", f"/api/kernels/{kid}").status_code == 204
        # the broken spec fails as it does without the pool, and the server stays up
        # (no kernel is started after the failure: jupyter_client keeps a failed start's id,
        # which makes any jupyter_server's shutdown stumble once another kernel runs)
        assert start_error(server, "broken") == expected
        assert api(server, "GET", "/api/status").status_code == 200
        assert api(server, "GET", "/api/kernels").json() == []
        assert server.proc.poll() is None
    # the failing warm-ups were logged once, without a traceback per retry
    assert before.count("hotpot_km: warm-up of a pooled 'broken' kernel failed") == 1
    assert not log_tracebacks(before), before[-3000:]


# -- 3. init code that fails -------------------------------------------------------------------

INIT_FAILURES = {
    "raises": ("raise RuntimeError('init went wrong')", "RuntimeError: init went wrong"),
    "exits": ("import sys; sys.exit(3)", "SystemExit"),
    "hangs": ("import time; time.sleep(600)", "timed out after 2 s"),
}


@pytest.mark.parametrize("where", ["initialization_code", "init_file"])
@pytest.mark.parametrize("failure", list(INIT_FAILURES))
async def test_failing_init_code_is_discarded_and_does_not_spin(
    jupyter_dirs, log, caplog, failure, where
):
    attempts_dir = jupyter_dirs["work"] / "attempts"
    attempts_dir.mkdir()
    fail_code, cause = INIT_FAILURES[failure]
    code = (
        "import os, pathlib\n"
        f"pathlib.Path({str(attempts_dir)!r}, str(os.getpid())).touch()\n"
        f"{fail_code}\n"
    )
    traits = {}
    if where == "init_file":
        path = jupyter_dirs["config"] / "kernel_pool_init_python3.py"
        path.write_text(code)
        source = str(path)
    else:
        traits["initialization_code"] = {"python3": code}
        source = "initialization_code['python3']"
    km = new_manager(
        log, kernel_pools={"python3": 1}, init_timeout=2, max_retry_delay=4, **traits
    )

    def attempts() -> set[int]:
        return {int(p.name) for p in attempts_dir.iterdir()}

    try:
        with pytest.raises(WarmupError, match=re.escape(source)):
            await km.wait_for_pool()
        first = attempts()
        assert len(first) == 1
        await wait_until(lambda: not any(alive(pid) for pid in first), 15, "process gone")

        # a request meanwhile gets a kernel that never ran the failing code
        kid = await km.start_kernel()
        seen = await probe(km, kid)
        assert seen["pid"] not in attempts()
        assert seen["execution_count"] == 1
        await km.shutdown_kernel(kid, now=True)

        await asyncio.sleep(5)  # the pool retries meanwhile
        tried = attempts()
        assert 2 <= len(tried) <= (3 if failure == "hangs" else 5), f"{len(tried)} attempts"
        assert sum(alive(pid) for pid in tried) <= 1  # at most the one warming now

        records = list(caplog.records)
        own = errors(records)
        assert len(own) == 1, own
        assert source in own[0] and cause in own[0]
        assert not tracebacks(records)
    finally:
        await shut_down(km)
    assert not any(alive(pid) for pid in attempts())
