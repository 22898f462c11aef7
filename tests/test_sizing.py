"""The sizing policy (hotpot_km.pool.sizing) on a fake clock: static sizes, Little's law,
bursts, the decay after scale_down_after, max_kernels, the memory floor, the memory reading;
the kernel_pools values a user writes; and one real manager
whose demand-based pool shows its target in the status document and /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kernel_helpers import shut_down
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from traitlets import TraitError
from traitlets.config import Config

from hotpot_km import PooledKernelManager
from hotpot_km.pool import PoolSettings
from hotpot_km.pool import sizing as sizing_module
from hotpot_km.pool.sizing import BURST_WINDOW, AvailableMemory, Sizing
from hotpot_km.status import manager_status
from hotpot_km.status_client import render_status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Policy:
    """A Sizing with settings, clock, max_kernels, memory and held kernels the test sets."""

    def __init__(self, **settings: Any) -> None:
        self.settings = PoolSettings(**settings)
        self.clock = Clock()
        self.limit = 0
        self.memory: int | None = None
        self.held = 0
        self.log = logging.getLogger("hotpot_sizing_test")
        self.sizing = Sizing(
            lambda: self.settings,
            max_kernels=lambda: self.limit,
            held=lambda name: self.held,
            log=lambda: self.log,
            clock=self.clock,
            memory=lambda: self.memory,
        )

    def arrive(self, name: str, count: int, every: float) -> None:
        for _ in range(count):
            self.sizing.arrived(name)
            self.clock.now += every

    def target(self, name: str = "a") -> tuple[int, str]:
        return self.sizing.target_size(name), self.sizing.reason(name)


def test_static_pools_keep_their_size() -> None:
    policy = Policy(sizes={"a": 3, "off": 0})
    policy.arrive("a", 30, 0.1)
    assert policy.target() == (3, "static")
    assert policy.sizing.pooled("a") and not policy.sizing.pooled("off")
    assert not policy.sizing.pooled("unknown")
    assert policy.sizing.bounds("a") == (3, 3)


def test_demand_follows_littles_law_with_headroom() -> None:
    policy = Policy(sizes={"a": 10}, min_sizes={"a": 1}, max_warming=1)
    assert policy.target() == (1, "min")
    policy.sizing.warmed_up("a", 4.0)
    policy.arrive("a", 13, 5.0)  # one request every 5 s: 0.2/s, below 1 refill per 4 s
    # 0.8 requests expected during one warm-up (x 1.5 = 1.2), but arriving at random: with
    # two ready kernels 19 % of them would find none, with three 5 %
    assert policy.target() == (3, "demand")
    policy.sizing.warmed_up("a", 12.0)  # warm-ups got slower: the estimate follows...
    assert policy.sizing.warmup_seconds("a") == pytest.approx(6.4)
    policy.arrive("a", 20, 1.0)  # ...and the requests come faster than it refills: burst
    assert policy.target() == (10, "burst")


@pytest.mark.parametrize(
    ("expected", "ready"), [(0.01, 1), (0.15, 2), (0.35, 2), (0.8, 3), (2.0, 6), (10.0, 16)]
)
def test_a_demand_pool_serves_random_arrivals_warm_95_percent_of_the_time(
    expected: float, ready: int
) -> None:
    """The fewest ready kernels such that a request arriving at random (Poisson, ``expected``
    requests during one warm-up) finds one at least 95 % of the time."""

    def served_warm(kernels: int) -> float:  # P(fewer than `kernels` arrived before it)
        return sum(math.exp(-expected) * expected**n / math.factorial(n) for n in range(kernels))

    assert sizing_module._covering(expected) == ready
    assert served_warm(ready) >= 0.95 > served_warm(ready - 1)


def test_a_burst_grows_the_pool_at_once() -> None:
    policy = Policy(sizes={"a": 10}, min_sizes={"a": 1}, max_warming=1)
    policy.sizing.warmed_up("a", 3.0)
    policy.arrive("a", 2, 0.5)  # two close together: chance
    assert policy.target() == (1, "min")
    policy.clock.now += 60
    policy.arrive("a", 3, 2.0)  # a class: one every 2 s; one warm-up replaces one per 3 s
    assert policy.target() == (10, "burst")  # seen by its third request


def test_the_pool_shrinks_back_only_after_scale_down_after() -> None:
    policy = Policy(sizes={"a": 10}, min_sizes={"a": 2}, max_warming=1, scale_down_after=120.0)
    policy.sizing.warmed_up("a", 3.0)
    policy.arrive("a", 8, 0.25)
    assert policy.target() == (10, "burst")
    last = policy.clock.now
    policy.clock.now = last + BURST_WINDOW + 1  # the burst is over: the size stays
    assert policy.target() == (10, "scale_down_pending")
    policy.clock.now = last + BURST_WINDOW + 100
    assert policy.target() == (10, "scale_down_pending")
    policy.arrive("a", 1, 0)  # a request now is no burst: it doesn't hold the size up
    policy.clock.now = last + BURST_WINDOW + 121
    assert policy.target() == (2, "min")


def test_max_kernels_caps_every_target() -> None:
    policy = Policy(sizes={"a": 5, "b": 10}, min_sizes={"b": 0}, max_warming=1)
    policy.limit = 3
    assert policy.target("a") == (3, "max_kernels")
    policy.arrive("b", 10, 0.1)
    assert policy.target("b") == (3, "max_kernels")
    policy.limit = 0  # no limit
    assert policy.target("a") == (5, "static")


def test_no_pool_grows_below_the_memory_floor(caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(sizes={"a": 5}, memory_floor=256 * 2**20)
    policy.held = 2
    policy.memory = 100 * 2**20
    with caplog.at_level(logging.INFO, logger="hotpot_sizing_test"):
        assert policy.target() == (2, "memory_floor")  # what it holds: no new warm-up
        assert policy.target() == (2, "memory_floor")
        warnings = [r for r in caplog.records if "below memory_floor" in r.getMessage()]
        assert len(warnings) == 1  # once, not at every check
        assert "100 MiB of memory available" in warnings[0].getMessage()
        policy.memory = 2**30
        assert policy.target() == (5, "static")
        assert "pools grow again" in caplog.text
    policy.memory = None  # unknown (not Linux): no floor
    assert policy.target() == (5, "static")
    policy.settings = replace(policy.settings, memory_floor=0)
    policy.memory = 1
    assert policy.target() == (5, "static")


def test_available_memory_is_read_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    clock = Clock()
    memory = AvailableMemory(clock)
    first = memory.read()
    assert first is not None and 0 < first <= total
    reads = []
    monkeypatch.setattr(sizing_module, "_meminfo_available", lambda: reads.append(1) or 8 * 2**30)
    clock.now += 0.5
    assert memory.read() == first and reads == []  # cached
    clock.now += 0.6
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    memory._cgroup = tmp_path  # a cgroup v2 with a limit leaves less than the machine
    assert memory.read() == 2 * 2**30 and reads == [1]
    clock.now += 1.0
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.read() == 8 * 2**30


@pytest.mark.parametrize(
    "value",
    [
        {"min": 3, "max": 1},
        {"min": -1, "max": 2},
        {"max": 2},
        {"min": 1, "max": 2, "x": 0},
        {"min": 1.5, "max": 2},
        {"min": True, "max": 2},
    ],
)
def test_invalid_demand_bounds_are_refused_clearly(value: dict[str, Any]) -> None:
    with pytest.raises(TraitError, match=r"kernel_pools\['python3'\] must be a number of kernels"):
        PooledKernelManager(
            config=Config({"PooledKernelManager": {"kernel_pools": {"python3": value}}})
        )


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


@pytest.mark.usefixtures("no_leftover_kernels")
async def test_a_demand_pool_in_a_real_manager_shows_its_target(jupyter_dirs: Any) -> None:
    """A user's JSON config with {"min": 1, "max": 3}: one real kernel at rest; the status
    document, `hotpot-km status` and /metrics show the target, its reason and the bounds."""
    config_file = jupyter_dirs["config"] / "jupyter_demand_config.json"
    config_file.write_text(
        json.dumps({"PooledKernelManager": {"kernel_pools": {"python3": {"min": 1, "max": 3}}}})
    )
    km = PooledKernelManager(config=Config(json.loads(config_file.read_text())))
    try:
        await km.wait_for_pool()
        await asyncio.sleep(0.5)  # the filler had its look: still one at rest
        view = km.kernel_pool.snapshot().pools[0]
        assert (view.count("ready"), view.count("warming")) == (1, 0)
        doc = manager_status(km)
        pool = doc["pools"]["python3"]
        assert {k: pool[k] for k in ("size", "min", "max", "target", "target_reason")} == {
            "size": 3,
            "min": 1,
            "max": 3,
            "target": 1,
            "target_reason": "min",
        }
        assert pool["full"] is True
        assert doc["settings"]["kernel_pools"] == {"python3": {"min": 1, "max": 3}}
        assert doc["settings"]["scale_down_after"] == 120.0
        assert doc["memory"]["floor"] == 256 * 2**20 and doc["memory"]["below_floor"] is False
        assert doc["memory"]["available"] > doc["memory"]["floor"]
        console = Console(width=200, record=True)
        console.print(render_status(doc))
        assert "1 / 1 (1-3, min)" in console.export_text()
        scraped = samples()
        labels = frozenset({("kernel_name", "python3")})
        assert scraped["hotpot_km_pool_target_size", labels] >= 1
        reason = frozenset({("kernel_name", "python3"), ("reason", "min")})
        assert scraped["hotpot_km_pool_target_reason", reason] >= 1
        assert scraped["hotpot_km_memory_floor_bytes", frozenset()] >= 256 * 2**20
    finally:
        await shut_down(km)
