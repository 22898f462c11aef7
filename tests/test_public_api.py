"""The public contract, pinned: what users name in their config files and code.

A dotted path in a ``voila.json``, an entry point in a kernelspec, a metric in a dashboard
or a ``ColdReason`` in an alert outlives any refactoring of the package: renaming one
breaks a deployment silently. Add to these lists freely; removing from them is a
breaking change.
"""

from __future__ import annotations

import importlib.metadata

import pytest
from traitlets.utils.importstring import import_item

import hotpot_km

#: What ``from hotpot_km import *`` gives.
EXPORTED = {
    "KernelLimitReached",
    "LimitedKernelManager",
    "MaximumKernelsException",
    "PooledKernelManager",
    "WarmupError",
    "__version__",
}

#: Dotted paths that README, docs/ and example configs tell users to write.
DOCUMENTED_PATHS = [
    "hotpot_km.PooledKernelManager",
    "hotpot_km.LimitedKernelManager",
    "hotpot_km.MaximumKernelsException",
    "hotpot_km.pooled.PooledKernelManager",
    "hotpot_km.mapping.PooledMappingKernelManager",
    "hotpot_km.gateway.PooledGatewayMappingKernelManager",
    "hotpot_km.gateway.RestartError",  # docs/reliability.md: a failed gateway restart
    "hotpot_km.websocket.NoDelayWebsocketConnection",
    "hotpot_km.metrics.start_metrics_server",
    "hotpot_km.service.provisioner.ServiceProvisioner",
    "hotpot_km.languages.Preparation",  # docs/languages.md: a language of one's own
]

#: Traits users set in the ``PooledKernelManager`` section (the seed's voila.json among them).
POOL_TRAITS = {
    "kernel_pools",
    "pool_kwargs",
    "strict_pool_names",
    "strict_pool_kwargs",
    "fill_delay",
    "fill_idle_timeout",
    "refill_pause",
    "idle_priority",
    "initialization_code",
    "python_imports",
    "_wait_at_startup",
    "wait_at_startup",
    "startup_timeout",
    "init_timeout",
    "max_warming",
    "max_retry_delay",
    "fork_from_template",
    "warm_restarts",
    "max_kernels",
    "scale_down_after",
    "memory_floor",
    "max_warmup_wait",
}

#: The ``reason`` label of the metrics and the status document.
COLD_REASONS = {
    "no_pool",
    "pool_empty",
    "startup_env",
    "start_arguments",
    "language",
    "warmup_failing",
    "dead_kernel",
    "handout_failed",
    "launch_env",
    "warmup_slow",
    "not_utf8",
}

#: Prometheus series names (Grafana dashboards and alerts use them).
METRICS = {
    "hotpot_km_kernel_starts",
    "hotpot_km_kernel_restarts",
    "hotpot_km_warmup_failures",
    "hotpot_km_pooled_kernel_deaths",
    "hotpot_km_handout_duration_seconds",
    "hotpot_km_warmup_duration_seconds",
    "hotpot_km_warmup_wait_duration_seconds",
    "hotpot_km_pool_size",
    "hotpot_km_pool_target_size",
    "hotpot_km_pool_kernels",
    "hotpot_km_kernel_processes",
    "hotpot_km_kernel_processes_limit",
}


def test_exported_members() -> None:
    assert set(hotpot_km.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(hotpot_km, name) is not None


@pytest.mark.parametrize("path", DOCUMENTED_PATHS)
def test_documented_paths_import(path: str) -> None:
    assert import_item(path) is not None


def test_pool_section_traits() -> None:
    """The ``PooledKernelManager`` config section reaches every pooled host."""
    from hotpot_km.gateway import PooledGatewayMappingKernelManager
    from hotpot_km.mapping import PooledMappingKernelManager
    from hotpot_km.pooled import PooledKernelManager

    configurable = set(PooledKernelManager.class_trait_names(config=True))
    assert configurable >= POOL_TRAITS, sorted(POOL_TRAITS - configurable)
    for host in (PooledMappingKernelManager, PooledGatewayMappingKernelManager):
        assert issubclass(host, PooledKernelManager)
    assert issubclass(hotpot_km.KernelLimitReached, hotpot_km.MaximumKernelsException)


def test_entry_points() -> None:
    provisioners = importlib.metadata.entry_points(group="jupyter_client.kernel_provisioners")
    [ours] = [ep for ep in provisioners if ep.name == "hotpot-km-provisioner"]
    assert ours.load() is import_item("hotpot_km.service.provisioner.ServiceProvisioner")
    languages = {ep.name for ep in importlib.metadata.entry_points(group="hotpot_km.languages")}
    assert languages >= {"python", "r", "bash", "xpython", "octave"}
    extensions = hotpot_km._jupyter_server_extension_points()
    assert extensions == [{"module": "hotpot_km.server_extension"}]


def test_cold_reasons_are_only_added() -> None:
    from hotpot_km.request import ColdReason

    values = {reason.value for reason in ColdReason}
    assert values >= COLD_REASONS, sorted(COLD_REASONS - values)


def test_metric_names() -> None:
    from hotpot_km import metrics

    names = {family.name for family in metrics.PoolCollector()._families().values()}
    for metric in (metrics.STARTS, metrics.RESTARTS, metrics.WARMUP_FAILURES, metrics.DEATHS,
                   metrics.HANDOUT_SECONDS, metrics.WARMUP_SECONDS, metrics.WAIT_SECONDS):
        names |= {family.name for family in metric.describe()}
    assert names >= METRICS, sorted(METRICS - names)
