"""The service's host of the pool engine: ``PooledKernelManager`` with its traits, whose
pooled kernels are launched from the unwrapped kernelspec and die with the service."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from ..pooled import PooledKernelManager

#: The provisioner name that ``hotpot-km kernelspec install`` writes into kernelspecs.
PROVISIONER_NAME = "hotpot-km-provisioner"

#: jupyter_client's own check (``KernelManager.ipykernel``) for what nbclient treats as IPython.
IPYKERNEL_NAMES = frozenset({"python", "python2", "python3"})
#: What nbclient (so papermill, nbconvert, nbmake) adds to every start of an IPython kernel.
NBCLIENT_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]


def unwrap(spec: KernelSpec) -> KernelSpec:
    """The kernelspec as it was before ``hotpot-km kernelspec install``: its own provisioner."""
    stanza = spec.metadata.get("kernel_provisioner") or {}
    if stanza.get("provisioner_name") != PROVISIONER_NAME:
        return spec
    metadata = dict(spec.metadata)
    inner = (stanza.get("config") or {}).get("inner")
    if inner:
        metadata["kernel_provisioner"] = inner
    else:
        metadata.pop("kernel_provisioner")
    data = spec.to_dict()
    data["metadata"] = metadata
    return type(spec)(resource_dir=spec.resource_dir, name=spec.name, **data)


class ServiceKernelSpecManager(KernelSpecManager):
    """Kernelspecs as the service launches them: never through its own provisioner."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return unwrap(super().get_kernel_spec(kernel_name))


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel killed when the service dies, even by SIGKILL."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def preexec() -> None:
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the service died before that
            os._exit(1)

    return preexec


class ServiceManagedKernel(AsyncKernelManager):
    """A pooled process of the service: launched so that it can't outlive the service."""

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        kw.setdefault("preexec_fn", _die_with(os.getpid()))
        return cmd, kw


class ServiceKernelManager(PooledKernelManager):  # type: ignore[misc]
    """The pool service's manager: ``PooledKernelManager``'s traits and engine; its kernels
    are handed to other processes (see :mod:`hotpot_km.service.leases`), never started here."""

    pool_manager_class = ServiceManagedKernel

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "kernel_spec_manager", ServiceKernelSpecManager(parent=kwargs.get("parent"))
        )
        super().__init__(**kwargs)

    def pool_launch_kwargs(self, kernel_name: str) -> dict[str, Any]:
        """Pool kernels for the service's usual clients: IPython kernels get nbclient's
        history argument unless ``pool_kwargs`` names the kernel."""
        if kernel_name not in self.pool_kwargs and kernel_name in IPYKERNEL_NAMES:
            return {"extra_arguments": list(NBCLIENT_ARGUMENTS)}
        return super().pool_launch_kwargs(kernel_name)

    @property
    def pool(self) -> Any:
        """The engine (:class:`hotpot_km.pool.KernelPool`) this service hosts."""
        return self._pool
