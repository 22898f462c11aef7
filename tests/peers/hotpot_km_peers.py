"""A pytest plugin that runs jupyter_server's and jupyter_client's own tests with the pooled
managers in place of the stock ones (``pytest -p hotpot_km_peers``, see ``run.py``).

Each test keeps its own configuration; the plugin only swaps the class it asks for and adds a
pool of one kernel of the native kernelspec:

- jupyter_server: the ``ServerApp.kernel_manager_class`` a test configures
  (``AsyncMappingKernelManager`` or a subclass of it) becomes the same class with
  :class:`~hotpot_km.mapping.PooledMappingKernelManager` before it. The deprecated synchronous
  ``MappingKernelManager`` has no pooled counterpart (the pool hosts are async) and stays stock.
- jupyter_client: the ``AsyncMultiKernelManager`` (and subclasses) a test module instantiates
  becomes the same class with :class:`~hotpot_km.PooledKernelManager` before it. The synchronous
  ``MultiKernelManager`` stays stock for the same reason.

At the end it writes how many starts the pool served to ``$HOTPOT_KM_PEERS_REPORT``
(a JSON file), so a run that never used the pool can be told from one that did.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from traitlets import default

from hotpot_km import PooledKernelManager
from hotpot_km.events import PoolObserver
from hotpot_km.limited import LimitedKernelManager

#: Starts seen by the pooled managers: pooled, and cold per reason.
_STARTS: dict[str, int] = {}
_SWAPPED: dict[tuple[type, bool], type] = {}


class _Counter(PoolObserver):
    def kernel_started(self, kernel_name: str, *, pooled: bool, reason: Any, **_: Any) -> None:
        key = "pooled" if pooled else f"cold ({reason})"
        _STARTS[key] = _STARTS.get(key, 0) + 1


def _pool_of_one(self: Any) -> dict[str, int]:
    return {NATIVE_KERNEL_NAME: 1}


def _piped(self: Any) -> dict[str, dict[str, Any]]:
    # jupyter_client's tests start every kernel with stdout and stderr piped
    return {NATIVE_KERNEL_NAME: {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}}


def pooled(base: type, pool_class: type, piped: bool = False) -> type:
    """``base`` with ``pool_class`` before it and a pool of one native kernel by default
    (launched with stdout and stderr piped if ``piped``, as the starts of the tests are)."""
    if issubclass(base, LimitedKernelManager):
        return base
    if (base, piped) not in _SWAPPED:
        namespace: dict[str, Any] = {
            "_pool_of_one": default("kernel_pools")(_pool_of_one),
            "__module__": __name__,
        }
        if piped:
            namespace["_piped"] = default("pool_kwargs")(_piped)
        cls = type(f"Pooled{base.__name__}", (pool_class, base), namespace)
        original_init = cls.__init__

        def __init__(self: Any, **kwargs: Any) -> None:
            original_init(self, **kwargs)
            self.kernel_pool.observer.add(_Counter())

        cls.__init__ = __init__
        _SWAPPED[base, piped] = cls
    return _SWAPPED[base, piped]


def _swap_server() -> None:
    try:
        from jupyter_server.serverapp import ServerApp
        from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    except ImportError:  # jupyter_client's own run: no server
        return

    from hotpot_km.mapping import PooledMappingKernelManager

    original = ServerApp.init_configurables

    def init_configurables(self: ServerApp) -> None:
        from jupyter_server.gateway.gateway_client import GatewayClient

        # what init_configurables makes first: the class's default depends on it
        self.gateway_config = GatewayClient.instance(parent=self)
        cls = self.kernel_manager_class
        if isinstance(cls, type) and issubclass(cls, AsyncMappingKernelManager):
            self.kernel_manager_class = pooled(cls, PooledMappingKernelManager)
        original(self)

    ServerApp.init_configurables = init_configurables


def pytest_configure(config: pytest.Config) -> None:
    _swap_server()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Swap the multi-kernel managers jupyter_client's test modules instantiate (a server's
    manager is swapped where the server makes it: it is named in its config)."""
    try:
        from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
    except ImportError:
        MappingKernelManager = None
    modules = {id(item.module): item.module for item in items if getattr(item, "module", None)}
    for module in modules.values():
        for name, value in list(vars(module).items()):
            if (
                isinstance(value, type)
                and issubclass(value, AsyncMultiKernelManager)
                and not issubclass(value, LimitedKernelManager)
                and not (MappingKernelManager and issubclass(value, MappingKernelManager))
                and value.__module__.startswith(("jupyter_client", "tests"))
            ):
                setattr(module, name, pooled(value, PooledKernelManager, piped=True))


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("HOTPOT_KM_PEERS_REPORT")
    if path:
        swapped = sorted({f"{b.__module__}.{b.__qualname__}" for b, _ in _SWAPPED})
        with open(path, "w") as f:
            json.dump({"starts": _STARTS, "swapped": swapped}, f)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"hotpot_km: starts by the pooled managers: {dict(sorted(_STARTS.items()))}; "
        f"classes swapped: {sorted({b.__name__ for b, _ in _SWAPPED})}"
    )
