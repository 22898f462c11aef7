"""Many concurrent starts against ``max_kernels``: real kernel processes, counted the way
process monitoring counts them (the manager's live children, read from /proc)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from children import ChildSampler, live_children
from conftest import pooled_manager
from kernel_helpers import run, shut_down, wait_until, write_kernelspec

from hotpot_km import MaximumKernelsException, PooledKernelManager

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

POOL = 4
LIMIT = 20


def live_kernels() -> int:
    """This process's live children (kernels, and any child forked but not exec'd yet) and
    its fork templates' kernels; not the templates themselves."""
    return len(live_children(os.getpid()))


async def pool_processes_seen(km: PooledKernelManager, count: int) -> None:
    """Wait until /proc shows ``count`` kernels (a fork template's new child shows up there a
    moment after the pool counts it); on failure, say which processes were there."""
    try:
        await wait_until(lambda: live_kernels() == count, 10, "the pool's processes seen")
    except AssertionError as e:
        children = [c.describe() for c in live_children(os.getpid(), with_cmdline=True)]
        raise AssertionError(f"{e}; /proc: {children}; pool: {km.kernel_pool.snapshot()}") from None


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
# about 10 s; once in a CI run it waited out the suite's 300 s timeout after a kernel lost a
# port, and passed on its rerun (tests/port_race.py): a hang costs 2 minutes, not 5
@pytest.mark.timeout(120)
async def test_100_concurrent_starts_never_exceed_max_kernels(jupyter_dirs, caplog):
    caplog.set_level(logging.WARNING)
    km = pooled_manager(
        kernel_pools={"python3": POOL}, max_kernels=LIMIT, fill_delay=0, max_warming=2
    )
    with ChildSampler(os.getpid(), interval=0.002) as counter:
        try:
            await km.wait_for_pool()
            await pool_processes_seen(km, POOL)
            assert live_kernels() == POOL
            room = LIMIT  # a fork template is not a kernel: it holds no slot

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
            await pool_processes_seen(km, POOL)
            assert live_kernels() == POOL
            assert not set(pids) & {c.pid for c in live_children(os.getpid())}

            # every slot was given back: the limit is reached again, not earlier or later
            room = LIMIT
            started, failed = await start_many(km, LIMIT + 5)
            assert len(set(started)) == room
            assert_refused(failed, LIMIT + 5 - room)
            await asyncio.gather(*(km.shutdown_kernel(kid) for kid in started))
        finally:
            await shut_down(km, timeout=60)
    assert counter.samples > 10
    assert counter.max <= LIMIT, f"{counter.max} live children at once: {counter.at_max}"
    assert not live_children(os.getpid())


class OnRecord(logging.Handler):
    """Calls ``action`` once, when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str, action) -> None:
        super().__init__()
        self.text = text
        self.action = action

    def emit(self, record: logging.LogRecord) -> None:
        if self.action is not None and self.text in record.getMessage():
            action, self.action = self.action, None
            action()


async def test_a_start_that_evicts_a_failing_warmup_never_exceeds_max_kernels(jupyter_dirs):
    """With the limit reached by a pooled kernel whose warm-up just failed, a start request
    evicts that kernel while it is being shut down. Its slot must go to the request only
    once its process is gone, and be counted once: the pool's retry must not start a second
    process while the request's kernel runs."""
    write_kernelspec(jupyter_dirs["data"], "failing")
    log = logging.getLogger("hotpot_evict")
    log.setLevel(logging.DEBUG)
    km = PooledKernelManager(
        kernel_pools={"failing": 1},
        initialization_code={"failing": "raise RuntimeError('init fails')"},
        max_kernels=1,
        max_retry_delay=0.5,
        fill_delay=0,
    )
    km.log = log
    loop = asyncio.get_running_loop()
    started: list[asyncio.Future[str]] = []
    # the request arrives in the step after the failure is logged, while the kernel is
    # being shut down (the failure is logged first)
    trigger = OnRecord(
        "warm-up of a pooled 'failing' kernel failed",
        lambda: started.append(asyncio.ensure_future(km.start_kernel(kernel_name="python3"))),
    )
    log.addHandler(trigger)
    with ChildSampler(os.getpid(), interval=0.002) as counter:
        try:
            await wait_until(lambda: started, what="a warm-up failed")
            kid = await asyncio.wait_for(started[0], 60)
            out, reply = await run(km, kid, "print('alive')")
            assert reply["status"] == "ok" and "alive" in out
            # the failing pool retries with back-off meanwhile; more starts must be refused
            outcomes = []
            deadline = loop.time() + 3
            while loop.time() < deadline:
                try:
                    outcomes.append(await km.start_kernel(kernel_name="python3"))
                except MaximumKernelsException:
                    outcomes.append("refused")
                await asyncio.sleep(0.5)
        finally:
            log.removeHandler(trigger)
            await shut_down(km)
    assert counter.max <= 1, f"{counter.max} live children at once: {counter.at_max}"
    assert set(outcomes) == {"refused"}
    assert not live_children(os.getpid())
