"""PooledKernelManager on its own: real ipykernel processes, no server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import LAUNCH, kernel_children, pooled_manager
from kernel_helpers import ColdReference, exited, probe, run

from hotpot_km import PooledKernelManager, WarmupError

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


def pool_pids() -> set[int]:
    return {p.pid for p in kernel_children()}


async def wait_until(predicate, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def make_kernelspec(data_dir: Path, name: str, language: str = "python", **extra) -> None:
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": language,
        **extra,
    }
    path = data_dir / "kernels" / name
    path.mkdir(parents=True)
    (path / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_test")
    return logging.getLogger("hotpot_test")


async def new_manager(log: logging.Logger, **traits) -> PooledKernelManager:
    traits.setdefault("fill_delay", 0)
    traits.setdefault("max_warming", 2)
    km = pooled_manager(**traits)
    km.log = log
    return km


async def test_handout_looks_like_a_cold_start(jupyter_dirs, log, monkeypatch):
    monkeypatch.setenv("HOTPOT_KM_TEST_HOST_ONLY", "1")  # the host's, not the request's
    km = await new_manager(log, kernel_pools={"python3": 1})
    cold = ColdReference()
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        assert len(pooled) == 1
        env = dict(os.environ, WEIRD="'''\"\\ ${HOME}\n\u00e9", JPY_SESSION_NAME="dir/nb.ipynb")
        del env["HOTPOT_KM_TEST_HOST_ONLY"]
        cwd = jupyter_dirs["data"]
        kid = await km.start_kernel(cwd=str(cwd), env=env)
        seen = await probe(km, kid)
        assert seen["pid"] in pooled
        assert seen["cwd"] == str(cwd)
        assert seen["session"] == "dir/nb.ipynb"
        assert seen["execution_count"] == 1
        assert "_hotpot_km" not in seen["modules"]

        cold_id = await cold.start_kernel(cwd=str(cwd), env=env)
        reference = await probe(cold, cold_id)
        assert reference["pid"] not in pooled
        assert seen["env"] == reference["env"]
        assert seen["cwd"] == reference["cwd"]
        assert seen["session"] == reference["session"]
        assert seen["user_names"] == reference["user_names"]
    finally:
        await cold.shutdown_all()
        await km.shutdown_all()


async def test_warmup_order_imports_then_code_then_init_files(jupyter_dirs, log):
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text(
        "import sys\norder.append(('file', 'wave' in sys.modules))\nimport wave\n"
    )
    km = await new_manager(
        log,
        kernel_pools={"python3": 1},
        python_imports=["colorsys"],
        initialization_code={
            "python3": "import sys\norder = [('code', 'colorsys' in sys.modules)]"
        },
    )
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel()
        out, reply = await run(km, kid, "print(order); import sys; print('wave' in sys.modules)")
        assert reply["status"] == "ok"
        # in fork mode (the default) the template did the init file's imports already
        hoisted = "True)]" if not LAUNCH else "False)]"
        assert out.split() == ["[('code',", "True),", "('file',", hoisted, "True"]
        seen = await probe(km, kid)
        assert seen["modules"] == ["colorsys", "wave"]
    finally:
        await km.shutdown_all()


async def test_pooled_kernels_are_invisible_until_handed_out(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 2})
    try:
        await km.wait_for_pool()
        assert len(pool_pids()) == 2
        assert km.list_kernel_ids() == []
        assert len(km) == 0
        kid = await km.start_kernel()
        assert km.list_kernel_ids() == [kid]
        assert len(km) == 1
    finally:
        await km.shutdown_all()


async def test_resizing_grows_and_shrinks(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        assert len(pool_pids()) == 1
        km.kernel_pools = {"python3": 3}
        await km.wait_for_pool()
        assert len(pool_pids()) == 3
        km.kernel_pools = {"python3": 0}
        await wait_until(lambda: not pool_pids())
    finally:
        await km.shutdown_all()


async def test_restart_takes_a_pooled_kernel_and_keeps_cwd_env(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        env = dict(os.environ, RESTART_ME="yes")
        kid = await km.start_kernel(cwd=str(jupyter_dirs["data"]), env=env)
        before = await probe(km, kid)
        await km.wait_for_pool()
        ready = pool_pids() - {before["pid"]}
        assert len(ready) == 1
        await km.restart_kernel(kid)
        after = await probe(km, kid)
        assert after["pid"] in ready
        assert after["cwd"] == str(jupyter_dirs["data"])
        assert after["env"]["RESTART_ME"] == "yes"
        assert after["execution_count"] == 1
        await wait_until(lambda: before["pid"] not in pool_pids())
        # without a ready pooled kernel, a restart is a normal one and still keeps cwd/env
        km.kernel_pools = {}
        await wait_until(lambda: pool_pids() == {after["pid"]})
        await km.restart_kernel(kid)
        again = await probe(km, kid)
        assert again["pid"] != after["pid"]
        assert again["cwd"] == str(jupyter_dirs["data"])
        assert again["env"]["RESTART_ME"] == "yes"
    finally:
        await km.shutdown_all()


async def test_a_killed_pooled_kernel_is_never_handed_out(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 2})
    try:
        await km.wait_for_pool()
        killed = pool_pids()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        # dead, not dying: a kernel dying during its handout is its new owner's to restart
        await wait_until(lambda: all(exited(pid) for pid in killed))
        kid = await km.start_kernel()
        seen = await probe(km, kid)
        assert seen["pid"] not in killed
        await km.wait_for_pool()
        assert len(pool_pids() - killed - {seen["pid"]}) == 2
    finally:
        await km.shutdown_all()


async def test_shutdown_all_stops_pooled_warming_and_handed_out_kernels(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 2})
    await km.wait_for_pool()
    await km.start_kernel()
    km.kernel_pools = {"python3": 4}  # some are warming now
    await asyncio.sleep(0.3)
    await km.shutdown_all()
    assert not pool_pids()
    await km.shutdown_all()  # twice is fine


async def test_other_kernel_names_and_arguments_start_cold(jupyter_dirs, log):
    make_kernelspec(jupyter_dirs["data"], "other")
    km = await new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        other = await km.start_kernel(kernel_name="other")
        assert (await probe(km, other))["pid"] not in pooled
        args = await km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
        assert (await probe(km, args))["pid"] not in pooled
        assert pooled <= pool_pids()  # the pooled kernel is still there
    finally:
        await km.shutdown_all()


async def test_strict_modes_refuse_with_a_clear_error(jupyter_dirs, log):
    make_kernelspec(jupyter_dirs["data"], "other")
    km = await new_manager(
        log, kernel_pools={"python3": 1}, strict_pool_names=True, strict_pool_kwargs=True
    )
    try:
        with pytest.raises(ValueError, match="strict_pool_names"):
            await km.start_kernel(kernel_name="other")
        with pytest.raises(ValueError, match="extra_arguments"):
            await km.start_kernel(extra_arguments=["--foo"])
        # cwd and env are applied after start, so strict_pool_kwargs allows them
        kid = await km.start_kernel(cwd=str(jupyter_dirs["data"]), env=dict(os.environ, A="1"))
        assert (await probe(km, kid))["env"]["A"] == "1"
    finally:
        await km.shutdown_all()


async def test_language_without_handout_code_is_pooled_only_for_identical_requests(
    jupyter_dirs, log
):
    make_kernelspec(jupyter_dirs["data"], "plain", language="plainlang")
    km = await new_manager(log, kernel_pools={"plain": 1})
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        same = await km.start_kernel(kernel_name="plain")
        assert (await probe(km, same))["pid"] in pooled
        await km.wait_for_pool()
        pooled = pool_pids() - {(await probe(km, same))["pid"]}
        changed = await km.start_kernel(kernel_name="plain", env=dict(os.environ, X="1"))
        seen = await probe(km, changed)
        assert seen["pid"] not in pooled
        assert seen["env"]["X"] == "1"
    finally:
        await km.shutdown_all()


async def test_startup_only_env_change_gets_a_cold_kernel(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        kid = await km.start_kernel(env=dict(os.environ, PYTHONHASHSEED="123"))
        seen = await probe(km, kid)
        assert seen["pid"] not in pooled
        assert seen["env"]["PYTHONHASHSEED"] == "123"
    finally:
        await km.shutdown_all()


async def test_impossible_requests_fail_clearly_and_keep_the_pool(jupyter_dirs, log):
    km = await new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        pooled = pool_pids()
        with pytest.raises(FileNotFoundError, match="does not exist"):
            await km.start_kernel(cwd=str(jupyter_dirs["data"] / "missing"))
        with pytest.raises(ValueError, match="NUL"):
            await km.start_kernel(env=dict(os.environ, BAD="a\0b"))
        with pytest.raises(ValueError, match="illegal environment variable name"):
            await km.start_kernel(env=dict(os.environ, **{"A=B": "1"}))
        assert km.list_kernel_ids() == []
        kid = await km.start_kernel()
        assert (await probe(km, kid))["pid"] in pooled
    finally:
        await km.shutdown_all()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("1/0", "ZeroDivisionError: division by zero"),
        ("import sys; sys.exit(3)", "SystemExit"),
        ("import os; os._exit(1)", "the kernel process exited"),
        ("import time; time.sleep(120)", "timed out after 2 s"),
    ],
)
async def test_failing_init_is_discarded_logged_once_and_backs_off(
    jupyter_dirs, log, caplog, code, expected
):
    km = await new_manager(
        log,
        kernel_pools={"python3": 1},
        initialization_code={"python3": code},
        init_timeout=2,
        max_retry_delay=1,
    )
    try:
        with pytest.raises(WarmupError, match="initialization_code\\['python3'\\]"):
            await km.wait_for_pool()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert expected in errors[0].getMessage()
        # requests still get working (cold) kernels, and the failure repeats without new errors
        kid = await km.start_kernel()
        assert (await probe(km, kid))["execution_count"] == 1

        def attempts() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "again, attempt" in r.getMessage()]

        await wait_until(attempts, timeout=120)  # a warm-up takes seconds on a loaded machine
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert 1 <= len(attempts()) <= 4  # backed off, not spinning
    finally:
        await km.shutdown_all()
