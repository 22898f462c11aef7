"""jupyter_client's internals (checked against 8.10; see :mod:`hotpot_km.compat`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from jupyter_client.manager import KernelManager

from . import Internal

_KM = "jupyter_client.manager.KernelManager"
_MKM = "jupyter_client.multikernelmanager.MultiKernelManager"
_CLIENT = "jupyter_client.client.KernelClient"

INTERNALS = (
    Internal(_KM, "_kernel_spec", why="a spec read off the loop spares a blocking lookup"),
    Internal(_KM, "_transport_encryption_policy", why="pooled kernels get the host's policy"),
    Internal(_KM, "_reconcile_connection_info", why="a forked kernel reads its file at once"),
    Internal(_KM, "_close_control_socket", why="the pool's manager lets go of a process"),
    Internal(_KM, "_connection_file_written", why="...and keeps its connection file"),
    Internal(_KM, "_attempted_start", instance=True, why="in_pending_state's bookkeeping"),
    Internal(_KM, "_ready", instance=True, why="in_pending_state's bookkeeping", only_here=False),
    Internal(_MKM, "_kernels", instance=True, why="the host's kernel managers by id"),
    Internal(_MKM, "_pending_kernels", instance=True, why="failed starts stay pending"),
    Internal(_MKM, "_check_kernel_id", why="an unknown id answers as jupyter_client's own"),
    Internal(_CLIENT, "_async_is_alive", why="the ready check of a handed-out kernel's client"),
    Internal(_CLIENT, "_handle_kernel_info_reply", why="as wait_for_ready records it"),
    Internal(_CLIENT, "_shell_channel", why="closing only the channels the pool opened"),
    Internal(_CLIENT, "_control_channel", why="closing only the channels the pool opened"),
    Internal(_CLIENT, "_iopub_channel", why="closing only the channels the pool opened"),
    # the async implementations behind public methods, which the package's managers
    # override as jupyter_server's own do
    Internal(_KM, "_async_start_kernel", only_here=False, why="in_pending_state; handout"),
    Internal(_KM, "_async_shutdown_kernel", only_here=False, why="in_pending_state; handout"),
    Internal(_KM, "_async_pre_start_kernel", only_here=False, why="fork mode's manager"),
    Internal(_KM, "_async_launch_kernel", only_here=False, why="the pool's process manager"),
    Internal(_CLIENT, "_async_wait_for_ready", only_here=False, why="a handed-out kernel"),
    Internal(_MKM, "_async_start_kernel", only_here=False, why="Voila's page tracking"),
    Internal(_MKM, "_async_shutdown_all", only_here=False, why="the pool closes first"),
)


def set_kernel_spec(km: Any, spec: Any) -> None:
    """Give ``km`` its kernelspec, so its ``kernel_spec`` property does no lookup."""
    km._kernel_spec = spec


def encryption_policy(km: Any, requested: str | None = None) -> Any:
    """The transport encryption ``km`` launches kernels with."""
    return km._transport_encryption_policy(requested)


def reconcile_connection_info(km: Any, info: Any) -> None:
    """Write ``info`` to ``km``'s connection file now (not after the launch)."""
    km._reconcile_connection_info(info)


def let_go(km: Any) -> None:
    """``km`` neither signals its process nor deletes its connection file from now on."""
    km._close_control_socket()
    km.provisioner = None
    km._connection_file_written = False


async def client_is_alive(client: Any) -> bool:
    return bool(await client._async_is_alive())


def accept_kernel_info_reply(client: Any, reply: dict[str, Any]) -> None:
    """What ``wait_for_ready`` does with the reply (the kernel's protocol version)."""
    client._handle_kernel_info_reply(reply)


def opened_channels(client: Any) -> list[Any]:
    """The shell, control and IOPub channels ``client`` opened (``stop_channels()`` would
    create the others first)."""
    channels = (client._shell_channel, client._control_channel, client._iopub_channel)
    return [channel for channel in channels if channel is not None]


def kernels_of(mkm: Any) -> dict[str, Any]:
    """The kernel managers of a MultiKernelManager, by id (started ones)."""
    return mkm._kernels  # type: ignore[no-any-return]


def check_kernel_id(mkm: Any, kernel_id: str) -> None:
    mkm._check_kernel_id(kernel_id)


def forget_failed_starts(mkm: Any) -> None:
    """Drop starts that failed (jupyter_client keeps them pending; jupyter_server's shutdown
    of such an id raises 404, which aborts the server's exit)."""
    for kernel_id, task in list(mkm._pending_kernels.items()):
        if task.done() and kernel_id not in mkm._kernels:
            mkm._pending_kernels.pop(kernel_id, None)


def undecorated(method: Any) -> Any:
    """jupyter_client's ``method`` without its ``in_pending_state`` decorator (None if it is
    no longer decorated)."""
    return inspect.unwrap(method) if hasattr(method, "__wrapped__") else None


UNDECORATED_START = undecorated(KernelManager._async_start_kernel)
UNDECORATED_SHUTDOWN = undecorated(KernelManager._async_shutdown_kernel)


async def run_pending(km: Any, method: Any, pause: Callable[[], bool], **kw: Any) -> None:
    """``method`` as ``in_pending_state`` runs it (a fresh ``ready`` future, resolved or
    failed with the method), with its 10 ms pause only if ``pause()`` says so."""
    if getattr(km, "_attempted_start", True) or not getattr(km, "_ready", None):
        km._ready = asyncio.get_running_loop().create_future()
    try:
        await method(km, **kw)
        if pause():
            await asyncio.sleep(0.01)  # jupyter_client's own pause
    except Exception as error:
        km._ready.set_exception(error)
        km.log.exception(error)
        raise
    if km.owns_kernel:
        km._ready.set_result(None)
