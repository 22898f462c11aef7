"""max_kernels: a hard cap on kernel processes, with and without pools."""

from __future__ import annotations

import pytest
from conftest import kernel_children, pooled_manager
from kernel_helpers import probe

from hotpot_km import LimitedKernelManager, MaximumKernelsException

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")


async def test_limited_kernel_manager_refuses_past_the_limit(jupyter_dirs):
    km = LimitedKernelManager(max_kernels=2)
    try:
        first = await km.start_kernel()
        await km.start_kernel()
        with pytest.raises(MaximumKernelsException, match=r"limit of 2 kernel processes"):
            await km.start_kernel()
        assert len(kernel_children()) == 2
        await km.shutdown_kernel(first)
        third = await km.start_kernel()
        assert (await probe(km, third))["execution_count"] == 1
        await km.restart_kernel(third)  # a restart needs no extra room
        assert len(km) == 2
    finally:
        await km.shutdown_all()


async def test_pooled_kernels_count_toward_the_limit(jupyter_dirs):
    km = pooled_manager(kernel_pools={"python3": 2}, max_kernels=3, fill_delay=0)
    try:
        await km.wait_for_pool()
        pooled = {p.pid for p in kernel_children()}
        assert len(pooled) == 2
        a = await km.start_kernel()
        b = await km.start_kernel()
        assert {(await probe(km, k))["pid"] for k in (a, b)} == pooled
        await km.wait_for_pool()  # one more fits, then the pool can't grow
        assert len(kernel_children()) == 3
        c = await km.start_kernel()
        assert len(kernel_children()) == 3
        with pytest.raises(MaximumKernelsException):
            await km.start_kernel()
        await km.shutdown_kernel(c)
        await km.wait_for_pool()
        assert len(kernel_children()) == 3
    finally:
        await km.shutdown_all()


async def test_a_request_for_another_name_evicts_an_idle_pooled_kernel(jupyter_dirs):
    from test_pooled import make_kernelspec

    make_kernelspec(jupyter_dirs["data"], "other")
    km = pooled_manager(kernel_pools={"python3": 2}, max_kernels=2, fill_delay=0)
    try:
        await km.wait_for_pool()
        pooled = {p.pid for p in kernel_children()}
        other = await km.start_kernel(kernel_name="other")
        assert (await probe(km, other))["pid"] not in pooled
        assert len(kernel_children()) == 2
    finally:
        await km.shutdown_all()
