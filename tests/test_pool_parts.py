"""The engine's parts that own its state, alone and under a workload on the fake engine:
where each pooled kernel is (hotpot_km.pool.kernels) and when each pool's next warm-up may
start (hotpot_km.pool.backoff). No process is started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotpot_km.adapters.fake import FakeClockLoop, FakeHost, FakeKernelSpec, start_kernel
from hotpot_km.pool import KernelPool
from hotpot_km.pool.backoff import BackOff, Severity
from hotpot_km.pool.kernels import InvalidTransition, PoolKernels
from hotpot_km.pool.model import Place, PooledKernel
from hotpot_km.status import manager_status


def kernel(loop: asyncio.AbstractEventLoop, name: str = "a") -> PooledKernel:
    return PooledKernel(name, adapter=None, slot=None, ready=loop.create_future())  # type: ignore[arg-type]


def test_a_kernel_moves_only_along_its_life() -> None:
    loop = asyncio.new_event_loop()
    try:
        table = PoolKernels()
        first, second, third = kernel(loop), kernel(loop), kernel(loop, "b")
        for k in (first, second, third):
            table.launched(k)
        assert [k.place for k in (first, second, third)] == [Place.UNCLAIMED] * 3
        assert table.warming_count() == 3 and table.unclaimed("a") == [first, second]

        table.claim(second)  # a start may take a kernel that still warms
        assert second.claimed and table.is_warming(second)
        assert table.unclaimed("a") == [first] and table.held("a", settling=True) == 2
        with pytest.raises(InvalidTransition, match="claimed -> claimed"):
            table.claim(second)
        table.unclaim(second)  # put back first in line
        assert table.unclaimed("a") == [second, first] and not second.claimed

        first.ready.set_result(None)
        table.warmed(first)
        assert not table.is_warming(first) and first.place is Place.UNCLAIMED
        table.claim(first)
        table.hand_out(first, settle=True)
        assert first.place is Place.SETTLING and not first.claimed
        assert table.settling_count("a") == 1 and table.held("a", settling=True) == 2
        assert table.held("a", settling=False) == 1  # visits overlap: a settling one is not held
        with pytest.raises(InvalidTransition, match="settling -> unclaimed"):
            table.unclaim(first)
        table.settled(first)
        assert first.place is Place.GONE and table.settling_count() == 0
        with pytest.raises(InvalidTransition, match="gone -> claimed"):
            table.claim(first)

        table.evict(third)  # taken for its slot: no longer held by its pool, still claimed
        assert third.claimed and table.held("b", settling=True) == 0
        with pytest.raises(InvalidTransition, match="evicted -> unclaimed"):
            table.unclaim(third)
        table.ended(third)  # its process is gone; its claimer still holds it (and its slot)
        assert third.place is Place.EVICTED and not table.is_warming(third)
        table.remove(third)
        table.remove(third)  # idempotent
        assert third.place is Place.GONE

        second.ready.set_exception(RuntimeError("init failed"))
        second.ready.exception()
        table.warmed(second)  # an unclaimed kernel whose warm-up failed leaves
        assert second.place is Place.GONE and table.unclaimed_count() == 0
        assert [state for _, state in table.views()] == []
        with pytest.raises(InvalidTransition, match="new -> gone"):
            table.remove(kernel(loop))
    finally:
        loop.close()


def consistent(pool: KernelPool) -> None:
    """Each kernel's own place agrees with the table's collection that holds it."""
    table = pool.kernels
    assert all(k.place is Place.UNCLAIMED for k in table.all_unclaimed())
    assert all(k.place is Place.CLAIMED for k in table.claimed())
    assert all(k.place is not Place.GONE for k in table.warming())
    snapshot = pool.snapshot()
    for view in snapshot.pools:
        assert view.count("ready") + view.count("warming") == table.unclaimed_count(
            view.kernel_name
        )


def test_a_workload_leaves_no_kernel_behind_in_any_place() -> None:
    """Starts that find kernels ready, warming or none, evictions under ``max_kernels``,
    deaths, failures, a shrink, hand-outs that settle and the pool's close: every move is
    one the table allows (an invalid one raises), and at the end no kernel is anywhere."""
    specs = {"a": FakeKernelSpec(warmup=1.0), "b": FakeKernelSpec(warmup=2.0),
             "c": FakeKernelSpec(warmup=1.0)}
    host = FakeHost(specs=specs)
    # a start waits half a second at most for a warming kernel, then puts it back
    host.configure(sizes={"a": 3, "b": 2}, fill_delay=0.0, max_warming=2, max_warmup_wait=0.5)
    loop = FakeClockLoop()
    pool = KernelPool(host, lambda: 8, clock=loop.time, memory=lambda: None)
    taken: list[Any] = []

    async def checked_start(name: str) -> Any:
        start = await start_kernel(pool, name)
        consistent(pool)  # right after each hand-out, not only between rounds
        return start

    async def main() -> None:
        pool.start()
        await pool.wait_full()
        consistent(pool)
        for round_ in range(6):
            # "c" has no pool: its cold start evicts a pooled kernel for its slot
            names = ("a", "a", "b", "c")
            starts = await asyncio.gather(*(checked_start(n) for n in names))
            taken.extend(starts)
            consistent(pool)
            if round_ == 1:
                for adapter in host.launched:
                    if adapter.alive and not adapter.handed_out:
                        adapter.die()  # a waiting kernel dies
                        break
            if round_ == 2:
                host.specs["b"].fail = "no such module"
            if round_ == 3:
                host.specs["b"].fail = None
                host.configure(sizes={"a": 1, "b": 1})
                pool.resize()
            await asyncio.sleep(3)
            for start in taken[:-3]:
                await start.end()
            del taken[:-3]
            consistent(pool)
        for start in taken:
            await start.end()
        await asyncio.sleep(30)  # every handed-out kernel settles
        assert pool.kernels.settling_count() == 0
        consistent(pool)
        await pool.aclose()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 3600))
    finally:
        loop.close()
    table = pool.kernels
    assert (table.unclaimed_count(), table.claimed(), table.warming()) == (0, [], [])
    assert pool.budget.used == 0
    assert all(not a.alive for a in host.launched)


def test_back_off_doubles_forgives_one_death_at_start_and_logs_each_cause_once() -> None:
    backoff = BackOff()
    backoff.arrived("a", now=10.0, fill_delay=1.0, settling=False)  # a lone visitor
    assert backoff.not_before("a") == 11.0 and not backoff.streaming("a", now=10.0)
    # another request while that refill waits: a stream, and the wait is not pushed out
    backoff.arrived("a", now=10.5, fill_delay=1.0, settling=False)
    assert backoff.not_before("a") == 11.0 and backoff.streaming("a", now=11.4)
    assert not backoff.streaming("a", now=11.6)  # fill_delay after the last one of it
    backoff.arrived("a", now=12.0, fill_delay=1.0, settling=True)  # its kernel still settles
    assert backoff.streaming("a", now=12.5)
    backoff.arrived("a", now=20.0, fill_delay=1.0, settling=False)  # a lone visitor again
    assert backoff.not_before("a") == 21.0 and not backoff.streaming("a", now=20.0)
    backoff.missed("a")  # a request found the pool empty: its refill waits for nothing
    assert backoff.not_before("a") == 0.0

    since = backoff.counts()
    died = backoff.failed("a", "died", now=0.0, max_retry_delay=4.0, died_at_start=True)
    assert died == (0.5, Severity.FORGIVEN)
    assert not backoff.failing("a") and backoff.new_failure(since) is None
    again = backoff.failed("a", "died", now=0.0, max_retry_delay=4.0, died_at_start=True)
    assert again == (1.0, Severity.NEW)  # a second death in a row is not forgiven
    assert backoff.failing("a") and backoff.new_failure(since) == "died"
    delays = [backoff.failed("a", "boom", now=0.0, max_retry_delay=4.0, died_at_start=False)
              for _ in range(4)]
    assert delays == [(2.0, Severity.NEW), (4.0, Severity.AGAIN), (4.0, Severity.AGAIN),
                      (4.0, Severity.AGAIN)]
    assert (backoff.failures("a"), backoff.last_error("a"), backoff.not_before("a")) == (6, "boom", 4.0)
    backoff.missed("a")  # the back-off after failures stays
    assert backoff.not_before("a") == 4.0

    assert backoff.succeeded("a") and not backoff.succeeded("a")
    assert (backoff.failures("a"), backoff.last_error("a"), backoff.failing("a")) == (0, None, False)
    assert backoff.failed("a", "boom", now=0.0, max_retry_delay=4.0, died_at_start=False) == (
        0.5, Severity.NEW)  # the first step again, and logged again


def test_the_status_finds_the_pools_of_any_host_that_holds_the_engine() -> None:
    """A host of one's own (not a hotpot_km manager class) that holds a pool engine as
    ``kernel_pool`` gets its pools in the status document; one without gets none."""
    host = FakeHost(specs={"a": FakeKernelSpec(warmup=1.0)})
    host.configure(sizes={"a": 2})
    loop = FakeClockLoop()

    class OwnHost:
        def __init__(self) -> None:
            self.kernel_pool = KernelPool(host, lambda: 0, clock=loop.time, memory=lambda: None)

        def list_kernel_ids(self) -> list[str]:
            return ["one"]

    async def main() -> dict[str, Any]:
        own = OwnHost()
        own.kernel_pool.start()
        try:
            await own.kernel_pool.wait_full()
            return manager_status(own)
        finally:
            await own.kernel_pool.aclose()

    try:
        doc = loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()
    assert doc["enabled"] and doc["processes"]["in_use"] == 1
    assert doc["pools"]["a"]["ready"] == 2, doc["pools"]["a"]
    assert not manager_status(object())["enabled"]
