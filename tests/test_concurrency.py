"""Many concurrent starts against ``max_kernels``: real kernel processes, counted with psutil."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import KernelCounter, kernel_children, pooled_manager, templates
from kernel_helpers import run, shut_down, wait_until

from hotpot_km import MaximumKernelsException, PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

POOL = 4
LIMIT = 20


def live_kernels() -> int:
    return len(kernel_children())


async def start_many(km: PooledKernelManager, n: int) -> tuple[list[str], list[BaseException]]:
    results = await asyncio.gather(*(km.start_kernel() for _ in range(n)), return_exceptions=True)
    started = [r for r in results if isinstance(r, str)]
    failed = [r for r in results if not isinstance(r, str)]
    return started, failed


async def pid_of(km: PooledKernelManager, kernel_id: str) -> int:
    out, reply = await run(km, kernel_id, "import os; print(os.getpid())")
    assert reply["status"] == "ok", reply
    return int(out.split()[-1])


def assert_refused(failures: list[BaseException], count: int) -> None:
    others = [f for f in failures if not isinstance(f, MaximumKernelsException)]
    assert not others, others[:3]
    assert len(failures) == count
    for failure in failures:
        message = str(failure)
        assert "max_kernels" in message and str(LIMIT) in message, message


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="open: under heavy load the sampler occasionally sees 21 of 20 kernel processes; "
    "the path that frees a slot early is not found yet",
)
async def test_100_concurrent_starts_never_exceed_max_kernels(jupyter_dirs, caplog):
    caplog.set_level(logging.WARNING)
    km = pooled_manager(
        kernel_pools={"python3": POOL}, max_kernels=LIMIT, fill_delay=0, max_warming=2
    )
    with KernelCounter() as counter:
        try:
            await km.wait_for_pool()
            assert live_kernels() == POOL
            room = LIMIT - len(templates())  # a fork template holds a slot of its own

            started, failed = await start_many(km, 100)
            assert len(started) == len(set(started)) == room
            assert_refused(failed, 100 - room)
            assert sorted(km.list_kernel_ids()) == sorted(started)
            pids = await asyncio.gather(*(pid_of(km, kid) for kid in started))
            assert len(set(pids)) == room  # every caller got its own process
            assert live_kernels() == room  # the pool can't refill while at the limit

            # the callers shut theirs down: nothing leaks, the pool refills to its size only
            await asyncio.gather(*(km.shutdown_kernel(kid) for kid in started))
            assert km.list_kernel_ids() == []
            await wait_until(lambda: live_kernels() == POOL, what="back to the pool size")
            await km.wait_for_pool()
            await asyncio.sleep(1)
            assert live_kernels() == POOL
            assert not set(pids) & {p.pid for p in kernel_children()}

            # every slot was given back: the limit is reached again, not earlier or later
            room = LIMIT - len(templates())
            started, failed = await start_many(km, LIMIT + 5)
            assert len(set(started)) == room
            assert_refused(failed, LIMIT + 5 - room)
            await asyncio.gather(*(km.shutdown_kernel(kid) for kid in started))
        finally:
            await shut_down(km, timeout=60)
    assert counter.samples > 10
    assert counter.max <= LIMIT, (
        f"{counter.max} kernel processes alive at once: {counter.at_max}"
    )
    assert not kernel_children()
    assert not templates()
