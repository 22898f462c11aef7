"""The service's host of the pool engine: ``PooledKernelManager`` with its traits, whose
pooled kernels are launched from the unwrapped kernelspec (and, like every host's, die
with it: :mod:`hotpot_km.keeper`)."""

from __future__ import annotations

from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from ..pooled import PooledKernelManager
from .kernelspec import unwrap

#: jupyter_client's own check (``KernelManager.ipykernel``) for what nbclient treats as IPython.
IPYKERNEL_NAMES = frozenset({"python", "python2", "python3"})
#: What nbclient (so papermill, nbconvert, nbmake) adds to every start of an IPython kernel.
NBCLIENT_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]


class ServiceKernelSpecManager(KernelSpecManager):
    """Kernelspecs as the service launches them: never through its own provisioner."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return unwrap(super().get_kernel_spec(kernel_name))


class ServiceKernelManager(PooledKernelManager):  # type: ignore[misc]
    """The pool service's manager: ``PooledKernelManager``'s traits and engine; its kernels
    are handed to other processes (see :mod:`hotpot_km.service.leases`), never started here."""

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
