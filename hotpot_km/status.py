"""The status document: one JSON shape for every host that reports its pools.

``GET /api/hotpot_km/status`` (jupyter_server, JupyterLab, Voila) serves it, the
``hotpot-km status`` command renders it, and a pool service serves the same
document from its own manager. It is a pure function of the engine's
:class:`~hotpot_km.snapshot.PoolSnapshot` plus a few facts about the host.
``schema`` changes only when a field changes meaning or goes away.

Values a request could put into kernels are not shown: ``pool_kwargs`` env
entries are listed by name only, initialization code by size only.
"""

from __future__ import annotations

import re
import time
from typing import Any

from . import __version__
from .snapshot import KERNEL_STATES, PoolSnapshot, PoolView

__all__ = ["SCHEMA", "manager_status", "public_document", "public_message", "status_document"]

SCHEMA = 1


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _durations(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if k == "count" else _seconds(v)) for k, v in summary.items()}


def _launch_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if isinstance(out.get("env"), dict):
        out["env"] = sorted(out["env"])  # names only: values may be secrets
    return {
        k: v if isinstance(v, str | int | float | bool | list | type(None)) else repr(v)
        for k, v in out.items()
    }


def status_document(
    snapshot: PoolSnapshot,
    *,
    manager: str,
    kernels_in_use: int | None = None,
    settings: dict[str, Any] | None = None,
    now: float | None = None,
    service: dict[str, Any] | None = None,
    leases: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status of one manager's pools, JSON-ready.

    ``manager`` names the host's manager class; ``kernels_in_use`` is how many
    kernels the host runs (handed out or started cold); ``settings`` adds host
    settings in force (``max_kernels``, strict modes, ...) to the pool's own. The pool
    service adds ``service`` (who answers: pid, socket, uptime) and ``leases`` (the kernels
    it handed out, with their owners).
    """
    now = time.time() if now is None else now
    pools: dict[str, Any] = {}
    views = list(snapshot.pools)
    known = {view.kernel_name for view in views}
    # names started without a pool have counts (why they went cold) but no kernels
    views += [PoolView(name, 0, (), 0, None, None) for name in snapshot.stats if name not in known]
    for view in views:
        counts = {state: view.count(state) for state in KERNEL_STATES}
        stats = snapshot.stats.get(view.kernel_name, {})
        bounds = {} if view.min_size is None else {"min": view.min_size, "max": view.size}
        pools[view.kernel_name] = {
            "size": view.size,
            **bounds,
            "target": view.target,
            "target_reason": view.target_reason,
            **counts,
            "full": view.target > 0 and counts["ready"] >= view.target,
            "warmup_failing": view.consecutive_failures > 0,
            "consecutive_failures": view.consecutive_failures,
            "last_error": view.last_error,
            "next_warmup_in": _seconds(view.next_warmup_in),
            "kernels": [
                {
                    "state": k.state,
                    "pid": k.pid,
                    "age": _seconds(k.age),
                    "ready_for": _seconds(k.ready_for),
                    "paused": k.paused,
                }
                for k in view.kernels
            ],
            "starts": stats.get("starts", {}),
            "restarts": stats.get("restarts", {}),
            "warmup_failures": stats.get("warmup_failures", {}),
            "pooled_kernels_died": stats.get("pooled_kernels_died", 0),
            "warmup_seconds": _durations(stats.get("warmup_seconds", {"count": 0})),
            "handout_seconds": _durations(stats.get("handout_seconds", {"count": 0})),
            "wait_seconds": _durations(stats.get("wait_seconds", {"count": 0})),
        }
    pool_settings = snapshot.settings
    extra: dict[str, Any] = {}
    if service is not None:
        extra["service"] = service
    if leases is not None:
        extra["leases"] = leases
    return {
        "schema": SCHEMA,
        "hotpot_km": __version__,
        "enabled": True,
        "manager": manager,
        "time": round(now, 3),
        "closed": snapshot.closed,
        "pools": pools,
        "processes": {
            "used": snapshot.processes,
            "max_kernels": snapshot.max_kernels,
            "in_use": kernels_in_use,
            "retiring": snapshot.retiring,
        },
        "memory": {
            "available": snapshot.available_memory,
            "floor": pool_settings.memory_floor,
            "below_floor": snapshot.available_memory is not None
            and snapshot.available_memory < pool_settings.memory_floor,
        },
        "recent_errors": [
            {
                "kernel_name": e.kernel_name,
                "step": e.step,
                "message": e.message,
                "time": round(e.time, 3),
                "age": _seconds(now - e.time),
            }
            for e in reversed(snapshot.recent_errors)  # newest first
        ],
        "settings": {
            "kernel_pools": {
                name: (
                    {"min": pool_settings.min_sizes[name], "max": size}
                    if name in pool_settings.min_sizes
                    else size
                )
                for name, size in pool_settings.sizes.items()
            },
            "scale_down_after": pool_settings.scale_down_after,
            "memory_floor": pool_settings.memory_floor,
            "pool_kwargs": {
                name: _launch_kwargs(dict(kwargs))
                for name, kwargs in pool_settings.launch_kwargs.items()
            },
            "python_imports": list(pool_settings.python_imports),
            "initialization_code": {
                name: f"{len(code.splitlines())} lines"
                for name, code in pool_settings.initialization_code.items()
            },
            "fill_delay": pool_settings.fill_delay,
            "startup_timeout": pool_settings.startup_timeout,
            "init_timeout": pool_settings.init_timeout,
            "max_warming": pool_settings.max_warming,
            "overlap_warming": pool_settings.overlap_warming,
            "max_retry_delay": pool_settings.max_retry_delay,
            "max_kernels": snapshot.max_kernels,
            **(settings or {}),
        },
        **extra,
    }


def _class_name(obj: object) -> str:
    """The hotpot_km class a host configured, even when the host subclassed it (Voila does)."""
    mro = type(obj).__mro__
    cls = next((c for c in mro if c.__module__.startswith("hotpot_km.")), mro[0])
    return f"{cls.__module__}.{cls.__qualname__}"


def manager_status(manager: Any, **extra: Any) -> dict[str, Any]:
    """The status document of any kernel manager: a hotpot_km one's pools, or why there are none."""
    from .pool import KernelPool

    name = _class_name(manager)
    # any host that holds the engine, whatever its class
    pool = getattr(manager, "kernel_pool", None)
    if not isinstance(pool, KernelPool):
        return {
            "schema": SCHEMA,
            "hotpot_km": __version__,
            "enabled": False,
            "manager": name,
            "message": f"the kernel manager is {name}, not a hotpot_km one: there is no pool. "
            "Set kernel_manager_class (jupyter_server) or multi_kernel_manager_class (Voila) "
            "to hotpot_km.mapping.PooledMappingKernelManager.",
            "pools": {},
        }
    settings: dict[str, Any] = {}
    has_trait = getattr(manager, "has_trait", lambda trait: False)
    for trait in ("strict_pool_names", "strict_pool_kwargs", "wait_at_startup"):
        if has_trait(trait):
            settings[trait] = getattr(manager, trait)
    if has_trait("_wait_at_startup"):
        settings["wait_at_startup"] = bool(manager._wait_at_startup or manager.wait_at_startup)
    kernel_ids = getattr(manager, "list_kernel_ids", list)
    return status_document(
        pool.snapshot(),
        manager=name,
        kernels_in_use=len(kernel_ids()),
        settings=settings,
        **extra,
    )


_WARMUP_MESSAGE = re.compile(
    r"(?P<head>warm-up of a pooled .*? kernel failed in .*?): (?P<cause>.*)", re.S
)
_OUR_CAUSES = ("timed out after ", "the kernel process exited")
_TYPE = re.compile(r"[A-Za-z_][\w.]*")
#: how the innermost frame of a kernel's traceback begins (``KernelCodeError.summary``)
_FRAMES = (" (File ", " (Cell ", " (Input ")


def public_message(message: str | None) -> str | None:
    """A warm-up error as it may leave the process: the step, the exception's type and the
    source location, never the exception's text (it can hold a credential, e.g. a database
    URL in a connection error). The whole message stays in the host's log."""
    if message is None:
        return None
    found = _WARMUP_MESSAGE.fullmatch(message)
    if found is None:
        return "an error (details in the server's log)"
    cause = found["cause"]
    if cause.startswith(_OUR_CAUSES):
        return message
    kind = _TYPE.match(cause)
    start = max(cause.rfind(frame) for frame in _FRAMES)
    where = cause[start:].strip() if start >= 0 and cause.endswith(")") else ""
    return f"{found['head']}: {kind[0] if kind else 'an error'}{' ' + where if where else ''}" + (
        " (message in the server's log)"
    )


def public_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The status document as served over HTTP: warm-up errors without exception text."""
    out = dict(doc)
    if "pools" in doc:
        out["pools"] = {
            name: {**pool, "last_error": public_message(pool.get("last_error"))}
            for name, pool in doc["pools"].items()
        }
    if "recent_errors" in doc:
        out["recent_errors"] = [
            {**error, "message": public_message(error.get("message"))}
            for error in doc["recent_errors"]
        ]
    return out
