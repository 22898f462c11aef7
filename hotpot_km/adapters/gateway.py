"""Kernels on a remote gateway (Kernel Gateway, Enterprise Gateway), as the engine drives
them: started and deleted over the gateway's REST API, warmed up and handed out over its
websocket. The host that uses this adapter is
:class:`hotpot_km.gateway.PooledGatewayMappingKernelManager`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.gateway.gateway_client import GatewayClient, gateway_request
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.escape import json_decode, json_encode, url_escape
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from ..budget import Slot
from ..languages import kernel_language, remote_language
from ..priority import ProcessPriority
from ..request import LaunchRequest, plain_env

if TYPE_CHECKING:
    from jupyter_client.kernelspec import KernelSpecManager

#: Env variable every pooled kernel is started with on the gateway: who owns it.
POOL_MARKER = "KERNEL_HOTPOT_KM_POOL"

#: Variables Enterprise Gateway (or its kernel launchers) reads only when it starts a
#: kernel: they choose the user, the Kubernetes namespace, the image, the resources.
LAUNCH_ONLY_ENV = (
    "KERNEL_ID",
    "KERNEL_USERNAME",
    "KERNEL_NAMESPACE",
    "KERNEL_IMAGE",
    "KERNEL_EXECUTOR_IMAGE",
    "KERNEL_UID",
    "KERNEL_GID",
    "KERNEL_SERVICE_ACCOUNT_NAME",
    "KERNEL_POD_NAME",
    "KERNEL_CPUS",
    "KERNEL_MEMORY",
    "KERNEL_GPUS",
    "KERNEL_CPUS_LIMIT",
    "KERNEL_MEMORY_LIMIT",
    "KERNEL_GPUS_LIMIT",
    "KERNEL_VOLUMES",
    "KERNEL_VOLUME_MOUNTS",
    "KERNEL_LAUNCH_TIMEOUT",
    "KERNEL_SPARK_OPTS",
    "KERNEL_EXTRA_SPARK_OPTS",
    "KERNEL_QUEUE",
    "KERNEL_NODE_LABEL",
    "KERNEL_REMOTE_HOST",
    "KERNEL_CLUSTER_ROLE",
)

#: iopub states in which the kernel the pool warmed up is gone (the gateway restarted it).
_LOST_STATES = frozenset({"restarting", "autorestarting", "dead"})


def gateway_env(env: Mapping[str, str] | None, cwd: str | None) -> dict[str, str]:
    """The ``env`` jupyter_server's ``GatewayKernelManager.start_kernel`` sends to the
    gateway for a start with ``env`` and ``cwd``: this server's environment updated with
    the request's, only ``KERNEL_*`` and ``GatewayClient.allowed_envs`` variables, and the
    cwd as ``KERNEL_WORKING_DIR``."""
    client = GatewayClient.instance()
    payload = dict(os.environ)
    if "KERNEL_USERNAME" not in payload and client.http_user:
        payload["KERNEL_USERNAME"] = client.http_user  # as GatewayKernelManager sets it
    payload.update(env or {})
    allowed = set(client.allowed_envs.split(","))
    out = {k: v for k, v in payload.items() if k.startswith("KERNEL_") or k in allowed}
    if cwd is not None and out.get("KERNEL_WORKING_DIR") is None:
        out["KERNEL_WORKING_DIR"] = cwd
    return plain_env(out)


class GatewayChannel:
    """The shell or control channel of a gateway websocket, as :mod:`hotpot_km.kernel_io`
    uses a channel: ``send`` a message, ``get_msg`` the next reply."""

    def __init__(self, channels: GatewayChannels, name: str) -> None:
        self._channels = channels
        self.name = name
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def send(self, msg: dict[str, Any]) -> None:
        self._channels.send({**msg, "channel": self.name})

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.replies.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None


class GatewayChannels:
    """The pool's connection to one kernel on a gateway: its websocket, with the shell and
    control channels read (a ``ShellClient`` for :mod:`hotpot_km.kernel_io`).

    The iopub status messages the gateway sends are watched: ``restarting`` or ``dead``
    mean the kernel the pool prepared is gone, even if its id lives on.
    """

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.log = log
        self.session = Session(username="hotpot_km")
        self.shell_channel = GatewayChannel(self, "shell")
        self.control_channel = GatewayChannel(self, "control")
        self.lost: str | None = None
        #: answers the kernel's input requests (prompt -> line) while the pool's code asks
        #: for data on the stdin channel (:attr:`hotpot_km.languages.Preparation.stdin`)
        self.answer_input: Callable[[str], str] | None = None
        self._ws: WebSocketClientConnection | None = None
        self._ignored: set[str] = set()  # keep-alive requests whose replies nobody reads

    async def connect(self, kernel_id: str, timeout: float) -> None:
        client = GatewayClient.instance()
        url = url_path_join(
            client.ws_url or "", client.kernels_endpoint, url_escape(kernel_id), "channels"
        )
        url += f"?session_id={self.session.session}"
        request = HTTPRequest(url, **client.load_connection_args())
        self._ws = await asyncio.wait_for(
            websocket_connect(request, on_message_callback=self._on_message), timeout
        )

    def _on_message(self, raw: str | bytes | None) -> None:
        if raw is None:
            self.lost = self.lost or "disconnected"
            return
        try:
            msg = json_decode(raw)
        except ValueError:
            return  # a binary frame (buffers); the pool never asks for those
        channel = msg.get("channel")
        if channel in ("shell", "control"):
            if msg.get("parent_header", {}).get("msg_id") in self._ignored:
                self._ignored.discard(msg["parent_header"]["msg_id"])
                return
            getattr(self, f"{channel}_channel").replies.put_nowait(msg)
        elif channel == "stdin" and msg.get("msg_type") == "input_request":
            self._answer(msg)
        elif channel == "iopub" and msg.get("msg_type") == "status":
            state = msg.get("content", {}).get("execution_state")
            if state in _LOST_STATES:
                self.lost = state

    def _answer(self, request: dict[str, Any]) -> None:
        """Reply to an input request with :attr:`answer_input`'s line (empty without one)."""
        answer = self.answer_input
        prompt = str(request.get("content", {}).get("prompt", ""))
        value = answer(prompt) if answer is not None else ""
        reply = self.session.msg("input_reply", {"value": value}, parent=request["header"])
        try:
            self.send({**reply, "channel": "stdin"})
        except ConnectionError:
            pass  # the pool sees the websocket closed on its next request

    def send(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` (with its ``channel``) over the websocket."""
        if self._ws is None or self.lost == "disconnected":
            raise ConnectionError("the gateway websocket is closed")
        try:
            self._ws.write_message(json.dumps(msg, default=json_default))
        except WebSocketClosedError:
            self.lost = self.lost or "disconnected"
            raise ConnectionError("the gateway websocket is closed") from None

    def ping(self) -> None:
        """Activity for the gateway's culler, nothing else: a silent execute of no code
        (jupyter_server does not count ``kernel_info`` as activity); the reply is dropped."""
        content = {
            "code": "",
            "silent": True,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        msg = self.session.msg("execute_request", content)
        self._ignored.add(msg["header"]["msg_id"])
        self.shell_channel.send(msg)

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()


@dataclass(frozen=True)
class RemoteHandout:
    """A pooled kernel handed out on the gateway: its id, and what a restart re-applies."""

    kernel_id: str
    launch: LaunchRequest
    language: str | None


class GatewayHost(Protocol):
    """What the adapter needs of its host
    (:class:`hotpot_km.gateway.PooledGatewayMappingKernelManager`)."""

    log: logging.Logger | logging.LoggerAdapter[Any]
    kernels_url: str
    keepalive_interval: float
    kernel_spec_manager: KernelSpecManager | None

    def pool_marker_value(self) -> str: ...

    def remote_request(
        self, name: str, payload: Mapping[str, str], extras: Mapping[str, str] | None = None
    ) -> LaunchRequest: ...


class GatewayKernelAdapter:
    """A pooled kernel on a remote gateway, as the engine drives it
    (:class:`~hotpot_km.pool.KernelAdapter`).

    Started with ``POST /api/kernels`` (in a task of its own, so a start cancelled in
    flight is awaited and then deleted). Its env carries :data:`POOL_MARKER` if configured.
    The liveness poll doubles as keep-alive: every ``keepalive_interval`` seconds a silent, empty
    ``execute_request`` gives the gateway's idle culler activity to see.
    """

    def __init__(self, manager: GatewayHost, name: str, kernel_id: str):
        self.manager = manager
        self.name = name
        self.kernel_id = kernel_id
        self.log = manager.log
        self.launch: LaunchRequest | None = None
        self.language: str | None = None
        self._body: dict[str, Any] = {}
        self._post: asyncio.Task[Any] | None = None
        self._channels: GatewayChannels | None = None
        self._last_ping = 0.0
        self._gone = False
        self.priority: ProcessPriority | None = None  # nothing of it runs here

    @property
    def url(self) -> str:
        return url_path_join(self.manager.kernels_url, url_escape(self.kernel_id))

    async def prepare(self, kwargs: dict[str, Any]) -> tuple[LaunchRequest, str | None]:
        ksm = self.manager.kernel_spec_manager
        assert ksm is not None
        # The list, not GET /api/kernelspecs/<name>: with KERNEL_USERNAME set, jupyter_server
        # 2 builds that URL after its ?user= query and gets the list anyway.
        specs = (await ksm.list_kernel_specs()).get("kernelspecs") or {}
        if self.name not in specs:
            raise KeyError(f"no kernelspec {self.name!r} on the gateway")
        spec = specs[self.name].get("spec") or {}
        # xeus-python's spec says "python": its argv tells it from ipykernel's
        language = remote_language(kernel_language(spec.get("language"), spec.get("argv") or []))
        self.language = language
        payload = gateway_env(kwargs.pop("env", None), kwargs.pop("cwd", None))
        marker = self.manager.pool_marker_value()
        self.launch = self.manager.remote_request(
            self.name, payload, {POOL_MARKER: marker} if marker else None
        )
        self._body = {"name": self.name, "env": dict(self.launch.env), "kernel_id": self.kernel_id}
        return self.launch, language

    async def start(self, timeout: float, slot: Slot) -> GatewayChannels:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body = json_encode(self._body)
        self._post = loop.create_task(
            gateway_request(
                self.manager.kernels_url,
                method="POST",
                headers={"Content-Type": "application/json"},
                body=body,
            )
        )
        response = await asyncio.wait_for(asyncio.shield(self._post), timeout)
        self.kernel_id = json_decode(response.body)["id"]  # a gateway may pick its own
        channels = GatewayChannels(self.log)
        self._channels = channels
        await channels.connect(self.kernel_id, max(deadline - loop.time(), 1.0))
        self._last_ping = loop.time()
        return channels

    def watch_statuses(self) -> None:
        return None  # the refill does not wait for a remote kernel to go idle

    async def check_cwd(self, cwd: str) -> None:
        """The cwd is a directory on the gateway's side: the kernel finds out."""

    async def is_alive(self) -> bool:
        if self._gone or (self._channels is not None and self._channels.lost):
            return False
        try:
            response = await gateway_request(self.url, method="GET")
        except web.HTTPError as error:
            if error.status_code == 404:
                self._gone = True
                return False
            raise
        if json_decode(response.body).get("execution_state") == "dead":
            return False
        loop = asyncio.get_running_loop()
        channels = self._channels
        if (
            channels is not None
            and loop.time() - self._last_ping >= self.manager.keepalive_interval
        ):
            self._last_ping = loop.time()
            channels.ping()
        return True

    def close_client(self) -> None:
        channels, self._channels = self._channels, None
        if channels is not None:
            channels.close()

    def detach(self, slot: Slot) -> RemoteHandout:
        """The kernel now belongs to jupyter_server's gateway manager, by its id."""
        slot.release()  # kernels the gateway runs for users are the gateway's to limit
        assert self.launch is not None
        return RemoteHandout(self.kernel_id, self.launch, self.language)

    async def shutdown(self) -> None:
        self.close_client()
        if self._post is not None and not self._post.done():
            await asyncio.wait([self._post])  # a start in flight: delete what it creates
        if self._post is None or self._post.cancelled() or self._post.exception() is not None:
            return
        self.kernel_id = json_decode(self._post.result().body)["id"]
        try:
            await gateway_request(self.url, method="DELETE")
        except web.HTTPError as error:
            if error.status_code != 404:  # e.g. the gateway is down: its culler has the rest
                self.log.warning(
                    "hotpot_km: could not delete pooled kernel %s on the gateway: %s",
                    self.kernel_id,
                    error,
                )
        self._gone = True

    @property
    def pid(self) -> int | None:
        return None
