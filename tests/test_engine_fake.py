"""The pool engine's logic against fake kernels on a fake clock: filling within
``max_warming``, back-off, ``max_kernels``, shrink, deaths, the refill courtesy rules and
refills that keep up with a stream of requests. No process is started; a test's minutes of
pool life pass in milliseconds (hotpot_km.adapters.fake). The end-to-end tests with real kernels
are in the other files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hotpot_km import KernelLimitReached, MaximumKernelsException
from hotpot_km.adapters.fake import (
    FakeClockLoop,
    FakeHost,
    FakeKernelAdapter,
    FakeKernelSpec,
    FakeStart,
    start_kernel,
)
from hotpot_km.pool import KernelPool
from hotpot_km.pool.model import WarmupError
from hotpot_km.pool.sizing import BURST_WINDOW

Main = Callable[[KernelPool, FakeClockLoop], Awaitable[Any]]


def run(host: FakeHost, main: Main, *, limit: int = 0, memory: Any = None) -> Any:
    """Run ``main`` against a pool of ``host``'s fake kernels on a fake clock; close it after."""
    loop = FakeClockLoop()
    read = memory if callable(memory) else (lambda: memory)
    pool = KernelPool(host, lambda: limit, clock=loop.time, memory=read)

    async def wrapped() -> Any:
        pool.start()
        try:
            return await main(pool, loop)
        finally:
            await pool.aclose()

    try:
        return loop.run_until_complete(asyncio.wait_for(wrapped(), 3600))
    finally:
        loop.close()


def host_of(sizes: dict[str, int], warmup: float = 1.0, **settings: Any) -> FakeHost:
    host = FakeHost(specs={name: FakeKernelSpec(warmup=warmup) for name in sizes})
    host.configure(sizes=sizes, **settings)
    return host


def most_warming(kernels: list[FakeKernelAdapter], since: float = 0.0) -> int:
    """The most warm-ups that ran at once (after ``since``)."""
    events = []
    for k in kernels:
        if k.started_at is None:
            continue
        end = k.ready_at if k.ready_at is not None else float("inf")
        if end > since:
            events += [(max(k.started_at, since), 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_fills_to_size_within_max_warming() -> None:
    host = host_of({"a": 3}, warmup=2.0, max_warming=2)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        assert loop.time() == pytest.approx(4.0, abs=0.1)  # two at once, then the third
        assert sorted(k.started_at for k in host.launched) == pytest.approx([0, 0, 2], abs=0.1)
        assert most_warming(host.launched) == 2
        view = pool.snapshot().pools[0]
        assert (view.count("ready"), view.target, view.target_reason) == (3, 3, "static")

    run(host, main)


def test_failing_warmups_back_off_up_to_max_retry_delay() -> None:
    host = host_of({"a": 1}, max_retry_delay=4.0)
    host.specs["a"].fail = "no such program"

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await asyncio.sleep(20)
        gaps = [b - a for a, b in zip(host.attempts, host.attempts[1:], strict=False)]
        assert gaps[:5] == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0], abs=0.1)
        assert "no such program" in (pool.snapshot().pools[0].last_error or "")
        host.specs["a"].fail = None  # fixed: the next attempt succeeds, the pool fills
        await asyncio.sleep(6)
        view = pool.snapshot().pools[0]
        assert (view.count("ready"), view.consecutive_failures) == (1, 0)

    run(host, main)


def test_one_death_at_start_of_a_working_kernel_is_a_warning_two_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A kernel of a name whose kernels start fine exits before answering (another process
    took its port): retried after the first back-off step, logged as a WARNING; a second
    death in a row is an ERROR, as is a death before any kernel of the name ever started."""
    host = host_of({"a": 1}, fill_delay=0.0, fill_idle_timeout=0.0)
    caplog.set_level(logging.DEBUG)

    def levels() -> list[str]:
        return [r.levelname for r in caplog.records if "failed in kernel start" in r.message]

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        host.specs["a"].die_at_start = 1
        first = await start_kernel(pool, "a")
        assert first.warm
        await pool.wait_full()  # a waiter sees the retry through, not the warning's failure
        assert levels() == ["WARNING"]
        assert pool.snapshot().pools[0].count("ready") == 1  # the retry filled it
        host.specs["a"].die_at_start = 2
        second = await start_kernel(pool, "a")
        assert second.warm
        with pytest.raises(WarmupError):
            await pool.wait_full()
        await asyncio.sleep(30)
        assert levels() == ["WARNING", "WARNING", "ERROR"]
        assert pool.snapshot().pools[0].count("ready") == 1

    run(host, main)

    caplog.clear()
    never = host_of({"b": 1})
    never.specs["b"].die_at_start = 1

    async def broken(pool: KernelPool, loop: FakeClockLoop) -> None:
        await asyncio.sleep(10)

    run(never, broken)
    assert levels() == ["ERROR"]


def test_max_kernels_caps_pool_and_starts() -> None:
    host = host_of({"a": 3})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        view = pool.snapshot().pools[0]
        assert (view.count("ready"), view.target, view.target_reason) == (2, 2, "max_kernels")
        first, second = await start_kernel(pool, "a"), await start_kernel(pool, "a")
        assert first.warm and second.warm
        await asyncio.sleep(30)
        assert len(host.launched) == 2  # handed-out kernels hold their slots: no refill
        with pytest.raises(MaximumKernelsException):
            await start_kernel(pool, "a")
        await first.end()
        await asyncio.sleep(30)
        assert len(host.launched) == 3  # its slot came back: the pool refilled
        assert pool.budget.used == 2
        await second.end()

    run(host, main, limit=2)


def test_shrinks_when_the_size_goes_down() -> None:
    host = host_of({"a": 3})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        host.configure(sizes={"a": 1})
        pool.resize()
        await asyncio.sleep(1)
        assert sum(k.ended for k in host.launched) == 2
        assert pool.snapshot().pools[0].count("ready") == 1
        assert pool.budget.used == 1

    run(host, main)


def test_a_kernel_that_dies_in_the_pool_is_replaced() -> None:
    host = host_of({"a": 1})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        host.launched[0].die()
        await asyncio.sleep(5)
        assert len(host.launched) == 2
        assert host.launched[1].alive and pool.snapshot().pools[0].count("ready") == 1
        assert pool.stats.for_name("a")["pooled_kernels_died"] == 1

    run(host, main)


def test_a_lone_visitors_refill_waits_until_its_page_ran() -> None:
    """The courtesy rules for one visitor: the refill waits for the page's cell to end."""
    host = host_of({"a": 1}, fill_delay=1.0, fill_idle_timeout=10.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        visit = await start_kernel(pool, "a")
        assert visit.handout is not None
        handed_at = loop.time()
        visit.handout.adapter.run_cell(5.0)  # the page's first cell: 5 s busy
        await asyncio.sleep(20)
        refill = host.launched[1]
        assert refill.started_at is not None
        assert refill.started_at - handed_at == pytest.approx(5.25, abs=0.2)  # idle + quiet
        assert not pool._pressed("a")
        await visit.end()

    run(host, main)


def test_refills_keep_up_with_a_stream_of_requests() -> None:
    """Deliver 3 of issue 18: visitors keep coming, each page keeps its kernel busy longer
    than fill_idle_timeout. The courtesy rules (fill_delay, fill_idle_timeout,
    refill_pause) must not hold refills back: the pool launches at max_warming concurrency,
    no warm-up stands still, and every visitor gets a pooled kernel."""
    host = host_of({"a": 3}, warmup=1.0, max_warming=2, fill_delay=1.0, fill_idle_timeout=10.0)
    host.configure(refill_pause=3.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        began = loop.time()
        visits: list[FakeStart] = []
        ends: list[asyncio.Task[None]] = []

        async def visit() -> None:
            start = await start_kernel(pool, "a")
            visits.append(start)
            if start.handout is not None:
                start.handout.adapter.run_cell(20.0)  # busier than fill_idle_timeout
            await asyncio.sleep(25.0)
            await start.end()

        for _ in range(50):  # 1.67 requests/s for 30 s; the pool can warm 2/s
            ends.append(asyncio.create_task(visit()))
            await asyncio.sleep(0.6)
        await asyncio.gather(*ends)
        assert len(visits) == 50
        assert all(v.warm for v in visits), f"{sum(not v.warm for v in visits)} went cold"
        during = [k for k in host.launched if k.started_at is not None and k.started_at > began]
        assert len(during) >= 48  # every handout was replaced, not only after its page settled
        assert most_warming(host.launched, since=began) == 2  # max_warming, not less
        assert sum(k.priority.stops for k in during[1:]) == 0  # no refill stood still

    run(host, main)


@pytest.mark.parametrize("overlap_warming", [3, 0])
def test_with_the_default_max_warming_overlapping_visits_refill_faster(
    overlap_warming: int,
) -> None:
    """max_warming left at its default (``overlap_warming`` = CPUs + 1): while visits
    overlap, that many warm-ups run at once, past the calm limit; a max_warming the user set
    (``overlap_warming`` 0) caps them always."""
    host = host_of({"a": 5}, warmup=1.0, max_warming=1, overlap_warming=overlap_warming)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        began = loop.time()
        visits = [await start_kernel(pool, "a") for _ in range(4)]
        for visit in visits:
            assert visit.handout is not None
            visit.handout.adapter.run_cell(5.0)
        assert pool._pressed("a")
        await asyncio.sleep(10)
        assert most_warming(host.launched, since=began) == (3 if overlap_warming else 1)
        assert pool.snapshot().pools[0].count("ready") == 5
        lone = await start_kernel(pool, "a")  # the visits ended: one refill at a time again
        for visit in visits:
            await visit.end()
        await asyncio.sleep(0.1)
        assert lone.handout is not None
        lone.handout.adapter.run_cell(0.5)
        later = loop.time()
        await asyncio.sleep(10)
        assert most_warming(host.launched, since=later) == 1
        await lone.end()

    run(host, main)


def test_overlapping_visits_turn_the_courtesy_off_until_they_no_longer_overlap() -> None:
    host = host_of({"a": 2}, warmup=1.0, max_warming=2, fill_delay=1.0, fill_idle_timeout=10.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        first = await start_kernel(pool, "a")
        assert first.handout is not None
        first.handout.adapter.run_cell(3.0)
        await asyncio.sleep(0.5)
        assert not pool._pressed("a") and len(host.launched) == 2  # its refill waits
        second = await start_kernel(pool, "a")  # while the first page still runs
        assert second.handout is not None
        second.handout.adapter.run_cell(3.0)
        assert pool._pressed("a")
        await asyncio.sleep(0.1)
        assert len(host.launched) == 4  # both taken kernels replaced at once
        assert all(k.priority.stops == 0 for k in host.launched[2:])
        await asyncio.sleep(10)
        assert not pool._pressed("a")  # both settled
        assert pool.snapshot().pools[0].count("ready") == 2
        await first.end()
        await second.end()

    run(host, main)


def test_refill_pause_still_applies_to_a_lone_visitor() -> None:
    """A warm-up under way stands still while a lone visitor's kernel settles (refill_pause)."""
    host = host_of({"a": 2}, warmup=4.0, max_warming=1, fill_delay=0.5, fill_idle_timeout=10.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        first = await start_kernel(pool, "a")
        assert first.handout is not None
        await asyncio.sleep(1.0)  # the first refill waits for the kernel to settle...
        host.configure(sizes={"a": 3})  # ...and a resize starts a warm-up meanwhile
        pool.resize()
        await asyncio.sleep(0.1)
        warming = host.launched[-1]
        first.handout.adapter.run_cell(2.0)
        await asyncio.sleep(30)
        assert warming.priority.stops == 1
        assert warming.ready_at is not None and warming.started_at is not None
        assert warming.ready_at - warming.started_at > 4.0  # it stood still for a while
        await first.end()

    run(host, main)


def test_memory_floor_stops_growth_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    host = host_of({"a": 3}, memory_floor=256 * 2**20)
    memory = {"free": 100 * 2**20}

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await asyncio.sleep(10)
        assert host.launched == []
        view = pool.snapshot().pools[0]
        assert (view.target, view.target_reason) == (0, "memory_floor")
        assert "below memory_floor (256 MiB)" in caplog.text
        memory["free"] = 4 * 2**30
        await asyncio.sleep(10)
        view = pool.snapshot().pools[0]
        assert (view.count("ready"), view.target, view.target_reason) == (3, 3, "static")
        assert "pools grow again" in caplog.text

    with caplog.at_level(logging.INFO, logger="hotpot_km.fake"):
        run(host, main, memory=lambda: memory["free"])


def test_requests_that_find_the_pool_empty_do_not_hold_its_refill_back() -> None:
    """A demand-based pool at its min of 1: a visitor takes the kernel (its page settles
    for fill_idle_timeout), then requests come every 0.6 s and find the pool empty. Each
    miss is demand, never a reason to wait: the pool refills while they keep coming (it
    used to push fill_delay out at each miss and refill only after they stopped)."""
    host = host_of({"a": 10}, warmup=0.2, max_warming=1, fill_delay=1.0, fill_idle_timeout=10.0)
    host.configure(min_sizes={"a": 1})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        first = await start_kernel(pool, "a")
        assert first.warm
        visits = []
        for _ in range(12):
            await asyncio.sleep(0.6)
            visits.append(await start_kernel(pool, "a"))
        assert not all(v.warm for v in visits[:3])  # the pool had nothing for them
        assert all(v.warm for v in visits[-6:]), [v.warm for v in visits]
        for visit in [first, *visits]:
            await visit.end()

    run(host, main)


def test_a_pool_that_follows_demand_grows_at_once_and_shrinks_after_quiet() -> None:
    host = host_of({"a": 10}, warmup=1.0, max_warming=1, scale_down_after=120.0)
    host.configure(min_sizes={"a": 1})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        await asyncio.sleep(100)
        assert len(host.launched) == 1  # quiet: min
        assert pool.sizing.reason("a") == "min"
        arrivals = []
        for _ in range(15):  # a class arrives: 3 per second, the pool warms 1 per second
            arrivals.append(asyncio.create_task(start_kernel(pool, "a")))
            await asyncio.sleep(0.33)
        assert pool.sizing.target_size("a") == 10
        assert pool.sizing.reason("a") == "burst"
        last = loop.time()
        for start in await asyncio.gather(*arrivals):
            await start.end()
        await asyncio.sleep(30)
        view = pool.snapshot().pools[0]
        assert view.count("ready") == 10  # the pool filled up to max for the next arrivals
        assert view.target_reason == "scale_down_pending"
        # the burst is over BURST_WINDOW s after its last arrival; scale_down_after later,
        # the pool shrinks back to min
        await asyncio.sleep(last + BURST_WINDOW + 115 - loop.time())
        assert pool.snapshot().pools[0].count("ready") == 10
        await asyncio.sleep(10)
        view = pool.snapshot().pools[0]
        assert (view.target, view.target_reason, view.count("ready")) == (1, "min", 1)
        assert sum(k.ended for k in host.launched) >= 9

    run(host, main)


def test_a_cancelled_start_gives_its_warming_kernel_back() -> None:
    host = host_of({"a": 1}, warmup=5.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await asyncio.sleep(1)
        start = asyncio.create_task(start_kernel(pool, "a"))  # claims the warming kernel
        await asyncio.sleep(1)
        assert pool.snapshot().pools[0].count("claimed") == 1
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        view = pool.snapshot().pools[0]
        assert (view.count("claimed"), view.count("warming")) == (0, 1)
        await pool.wait_full()
        assert len(host.launched) == 1  # the same kernel went back, none was started instead
        again = await start_kernel(pool, "a")
        assert again.warm and again.handout is not None
        assert again.handout.adapter is host.launched[0]
        await again.end()

    run(host, main)


def test_a_start_the_pool_cannot_serve_does_not_wait_for_a_warming_kernel() -> None:
    """A start with other start arguments than the pool's claims the kernel that is still
    warming (what it is launched for is not known yet) and goes cold as soon as that is
    known, early in the warm-up, not once the warm-up ended; the kernel stays the pool's."""
    host = FakeHost(specs={"a": FakeKernelSpec(warmup=30.0, prepare=0.5)})
    host.configure(sizes={"a": 1})

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await asyncio.sleep(0.1)
        assert pool.snapshot().pools[0].count("warming") == 1
        began = loop.time()
        start = await start_kernel(pool, "a", {"extra_arguments": ["--other"]})
        assert start.waited and not start.warm  # it claimed the warming kernel, then went cold
        assert loop.time() - began < 1  # the fake clock: ~0.4 s of prepare, not 30 s
        start.slot.release()
        await pool.wait_full()
        same = await start_kernel(pool, "a")
        assert same.warm and same.handout.adapter is host.launched[0]
        await same.end()

    run(host, main)


def test_below_the_memory_floor_a_start_that_needs_a_process_is_refused() -> None:
    """No pooled kernel and too little memory for a new process: the start is refused with
    the limit named (hosts answer it as an overload, HTTP 503); a pooled kernel is still
    handed out, and once memory is back a cold start goes through."""
    host = host_of({"a": 1}, memory_floor=256 * 2**20)
    memory = {"free": 4 * 2**30}

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        memory["free"] = 100 * 2**20
        served = await start_kernel(pool, "a")  # the ready kernel needs no new process
        assert served.warm
        with pytest.raises(KernelLimitReached) as refused:
            await start_kernel(pool, "a")
        assert (refused.value.limit, refused.value.value) == ("memory_floor", 256)
        assert "below the memory_floor of 256 MiB" in str(refused.value)
        assert pool.stats.starts["a", "refused", "memory_floor"] == 1
        memory["free"] = 4 * 2**30
        later = await start_kernel(pool, "a")
        assert later.warm or later.slot is not None

    run(host, main, memory=lambda: memory["free"])


def test_back_to_back_visits_faster_than_fill_delay_are_all_served_warm() -> None:
    """One visitor after another, each page ending before the next starts (so visits never
    overlap) and coming faster than ``fill_delay``: each refill starts ``fill_delay`` after
    the handout it replaces, not after the last one, so the pool keeps up and nobody is
    served cold."""
    host = host_of({"a": 3}, warmup=0.3, fill_delay=1.0, fill_idle_timeout=10.0)

    async def main(pool: KernelPool, loop: FakeClockLoop) -> None:
        await pool.wait_full()
        visits: list[FakeStart] = []
        for _ in range(40):  # a page every 0.5 s for 20 s
            start = await start_kernel(pool, "a")
            visits.append(start)
            if start.handout is not None:
                start.handout.adapter.run_cell(0.2)
            await asyncio.sleep(0.4)
            await start.end()  # the page is closed before the next visitor comes
            await asyncio.sleep(0.1)
        assert all(v.warm for v in visits), f"{sum(not v.warm for v in visits)} went cold"
        await asyncio.sleep(5)
        assert pool.snapshot().pools[0].count("ready") == 3

    run(host, main)
