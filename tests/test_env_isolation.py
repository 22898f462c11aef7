"""A handed-out kernel carries the request's env and nothing else, anywhere in its process.

Each test compares a pooled start with a real cold start of the same request (a plain
``AsyncMultiKernelManager``): ``os.environ``, the process's own environment block
(``/proc/self/environ``, what ``ps e`` shows), a child it spawns, its cwd and
``tempfile.gettempdir()``. Fork mode is the default; ``HOTPOT_KM_TEST_FORK=0`` launches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import kernel_children, pooled_manager, winning_kernels_dir
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from kernel_helpers import ColdReference, run, shut_down

from hotpot_km import PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

#: What a kernel's process holds: its os.environ, its own environment block, a child's env.
LOOK = """
import json, os, subprocess, sys, tempfile
block = open("/proc/self/environ", "rb").read().split(b"\\0")
child = subprocess.run(
    [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
    capture_output=True, text=True, check=True,
).stdout
print(json.dumps({
    "pid": os.getpid(),
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "process_env": dict(
        os.fsdecode(item).split("=", 1) for item in block if b"=" in item
    ),
    "child_env": json.loads(child),
    "tempdir": tempfile.gettempdir(),
}))
"""

SECRET = "HOTPOT_KM_TEST_SERVER_SECRET"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_env")
    return logging.getLogger("hotpot_env")


async def look(km: AsyncMultiKernelManager, kernel_id: str) -> dict[str, Any]:
    out, reply = await run(km, kernel_id, LOOK)
    assert reply["status"] == "ok", reply
    return json.loads(out.strip().splitlines()[-1])


async def cold_look(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same request started cold by jupyter_client alone (:class:`ColdReference`)."""
    cold = ColdReference()
    kid = await cold.start_kernel(**kwargs)
    try:
        return await look(cold, kid)
    finally:
        await cold.shutdown_all(now=True)


async def pooled_look(km: PooledKernelManager, kwargs: dict[str, Any]) -> dict[str, Any]:
    await km.wait_for_pool()
    pooled = {p.pid for p in kernel_children()}
    kid = await km.start_kernel(**kwargs)
    try:
        seen = await look(km, kid)
    finally:
        await km.shutdown_kernel(kid, now=True)
    seen["pooled"] = seen["pid"] in pooled
    return seen


def cold_reasons(km: PooledKernelManager) -> dict[str, int]:
    return dict(km.kernel_pool.snapshot().stats["python3"]["starts"]["cold_reasons"])


def assert_as_cold(pooled: dict[str, Any], cold: dict[str, Any]) -> None:
    """The pooled kernel looks like the cold one; its process block holds only part of it."""
    assert pooled["cwd"] == cold["cwd"]
    assert pooled["env"] == cold["env"]
    assert pooled["child_env"] == cold["child_env"]
    assert pooled["tempdir"] == cold["tempdir"]
    extra = {k: v for k, v in pooled["process_env"].items() if cold["process_env"].get(k) != v}
    assert extra == {}, "the kernel's process holds variables a cold start's does not"


async def test_a_handed_out_kernel_holds_no_host_variable_the_request_lacks(
    jupyter_dirs, monkeypatch, log
):
    """A server secret in the host's env (Kernel Gateway scrubs it from kernel requests) is
    nowhere in the handed-out kernel: not in os.environ, /proc/self/environ or a child."""
    monkeypatch.setenv(SECRET, "hunter2")
    monkeypatch.setenv("TMPDIR", str(jupyter_dirs["work"]))  # the pool's temp dir
    km = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0)
    km.log = log
    request_tmp = jupyter_dirs["work"] / "request-tmp"
    request_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != SECRET}
    env.update(REQUEST_ONLY="yes", TMPDIR=str(request_tmp))
    kwargs = {"env": env, "cwd": str(jupyter_dirs["work"])}
    try:
        seen = await pooled_look(km, kwargs)
        assert seen["pooled"], "the request was not served by a pooled kernel"
        assert cold_reasons(km) == {}
    finally:
        await shut_down(km)
    cold = await cold_look(kwargs)
    for where in ("env", "process_env", "child_env"):
        assert SECRET not in seen[where], where
    assert seen["env"]["REQUEST_ONLY"] == "yes"
    assert seen["tempdir"] == str(request_tmp)
    assert_as_cold(seen, cold)


async def test_a_kernelspec_env_the_request_gets_otherwise_starts_cold(
    jupyter_dirs, log, monkeypatch
):
    """A kernelspec's ``env`` is fixed in the process at launch: a request whose value differs
    (a template over another value of the request's) starts cold, saying so."""
    spec_dir = winning_kernels_dir(jupyter_dirs, monkeypatch) / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (spec env)",
        "language": "python",
        "env": {"SPEC_DATA": "${SPEC_ROOT}/data"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    km = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0)
    km.log = log
    kwargs = {"env": dict(os.environ, SPEC_ROOT=str(jupyter_dirs["work"]))}
    try:
        seen = await pooled_look(km, kwargs)
        assert not seen["pooled"]
        assert cold_reasons(km) == {"launch_env": 1}
    finally:
        await shut_down(km)
    cold = await cold_look(kwargs)
    assert seen["env"]["SPEC_DATA"] == f"{jupyter_dirs['work']}/data"
    assert_as_cold(seen, cold)


async def test_env_values_and_cwds_that_are_not_utf8_arrive_exactly(jupyter_dirs, log):
    """Bytes that are not UTF-8 (``surrogateescape`` text in os.environ, a directory named
    in Latin-1) can't travel as JSON: the start is cold, with its reason, and exact."""
    odd_dir = Path(os.fsdecode(bytes(jupyter_dirs["work"]) + b"/caf\xe9"))
    odd_dir.mkdir()
    km = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0)
    km.log = log
    requests = [
        {"env": dict(os.environ, ODD_VALUE=os.fsdecode(b"caf\xe9 \xff"))},
        {"env": dict(os.environ), "cwd": str(odd_dir)},
    ]
    seen = []
    try:
        for kwargs in requests:
            seen.append(await asyncio.wait_for(pooled_look(km, kwargs), 300))
        assert cold_reasons(km) == {"not_utf8": 2}
    finally:
        await shut_down(km)
    for kwargs, pooled in zip(requests, seen, strict=True):
        assert not pooled["pooled"]
        assert_as_cold(pooled, await cold_look(kwargs))
    assert seen[0]["env"]["ODD_VALUE"] == os.fsdecode(b"caf\xe9 \xff")
    assert seen[1]["cwd"] == str(odd_dir)


async def test_a_scrubbed_request_gets_a_scrubbed_kernel_pooled_or_cold(jupyter_dirs, log):
    """A request that carries only ``PATH`` and ``KERNEL_*`` (what Kernel Gateway sends): no
    ``HOME``, nothing of the host's, exactly as a cold start; pooled when the pool is
    configured with such an env, cold (``HOME`` is read at startup) when the pool has the
    host's."""
    env = {"PATH": os.environ["PATH"], "KERNEL_USERNAME": "alice"}
    kwargs = {"env": env, "cwd": str(jupyter_dirs["work"])}
    scrubbed = pooled_manager(
        kernel_pools={"python3": 1}, fill_delay=0, pool_kwargs={"python3": {"env": dict(env)}}
    )
    host = pooled_manager(kernel_pools={"python3": 1}, fill_delay=0)
    scrubbed.log = host.log = log
    try:
        from_scrubbed = await pooled_look(scrubbed, kwargs)
        from_host = await pooled_look(host, kwargs)
        assert from_scrubbed["pooled"] and cold_reasons(scrubbed) == {}
        assert not from_host["pooled"] and cold_reasons(host) == {"startup_env": 1}
    finally:
        await shut_down(scrubbed)
        await shut_down(host)
    cold = await cold_look(kwargs)
    assert "HOME" not in cold["env"]
    assert_as_cold(from_scrubbed, cold)
    assert_as_cold(from_host, cold)
