"""Voila pages give their kernels back: a page's kernel lives as long as its page.

Voila 0.5 starts one kernel per page view and shuts it down only when the page's
``beforeunload`` beacon (``POST /voila/api/shutdown/<id>``) gets through, which it never
does: the beacon carries the ``_xsrf`` cookie for jupyter_server's XSRF check, and Voila's
pages set no such cookie (voila#1458), so every visit leaves its kernel running. When a
hotpot_km manager serves a standalone Voila, :class:`ServerHostMixin`

* makes Voila's page responses set the ``_xsrf`` cookie (tornado's own double-submit token,
  as jupyter_server's pages set it), so the beacon passes the check, which stays as it is
  for every other request;
* shuts down a page's kernel that no websocket reached within ``page_connect_timeout``
  seconds after its page was served (curl, crawlers, a tab closed while the page loaded),
  or whose last websocket closed ``page_disconnect_grace`` seconds ago and did not come
  back (a browser killed, a lost beacon). An open page keeps its websocket, so its kernel,
  however long it idles;
* bounds the kernels of a Voila whose ``max_kernels`` is not configured
  (:func:`default_max_kernels`), and answers a page it has no room for with 503 naming the
  limit.

jupyter_server and JupyterLab are unchanged: there a notebook's kernel outlives its tab.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from tornado import web
from traitlets import Bool, Float, default
from traitlets.config import LoggingConfigurable

from .budget import KernelLimitReached
from .compat.jupyter_server import connection_count, is_connected_kernel
from .compat.voila import voila_application
from .overload import _rules, http_error
from .tasks import OwnedTasks

__all__ = ["ServerHostMixin", "default_max_kernels"]

#: Memory a page's kernel is counted with for the default ``max_kernels`` in Voila: a kernel
#: with numpy, pandas and matplotlib imported takes 150-200 MB.
KERNEL_MEMORY = 256 * 1024 * 1024


@dataclass
class Page:
    """One page request of Voila and the kernels it started."""

    kernels: list[str] = field(default_factory=list)
    served: bool = False


#: The Voila page being served in this task (set by the page handler around Voila's ``get``).
_PAGE: contextvars.ContextVar[Page | None] = contextvars.ContextVar("hotpot_km_page", default=None)


class ServerHostMixin(LoggingConfigurable):
    """What a server's kernel manager (``PooledMappingKernelManager``) adds around starts:
    refusals answered as 503, and in Voila, kernels that end with their pages."""

    page_connect_timeout = Float(
        60.0,
        config=True,
        help="""In Voila: seconds after a page was served within which a websocket must reach
        its kernel (the page's JavaScript opens one), else the kernel is shut down (a curl or
        crawler visit, a tab closed while loading). 0: never.""",
    )

    page_disconnect_grace = Float(
        60.0,
        config=True,
        help="""In Voila: seconds a page's kernel is kept after its last websocket closed, for
        the page to reconnect (a network hiccup); then it is shut down. A page closed normally
        ends its kernel at once through Voila's beacon. 0: never.""",
    )

    page_xsrf_cookie = Bool(
        True,
        config=True,
        help="""In Voila: page responses set the _xsrf cookie, which the page's beforeunload
        beacon (POST /voila/api/shutdown/<kernel_id>) needs to pass the XSRF check; without
        it Voila refuses the beacon (403) and the kernel keeps running.""",
    )

    _page_kernels: dict[str, Page]
    _page_tasks: OwnedTasks
    _page_timers: dict[str, asyncio.TimerHandle]
    _voila: Any = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._page_kernels, self._page_timers = {}, {}
        self._page_tasks = OwnedTasks("hotpot_km page")
        voila_app = sys.modules.get("voila.app")
        if voila_app is not None and isinstance(self.parent, voila_app.Voila):
            self._voila = self.parent
            from .pooled import host_loop

            loop = host_loop()
            loop.call_soon(self._wrap_voila_pages, loop, 0)
            self.log.info(
                "hotpot_km: Voila pages' kernels end with their pages (page_connect_timeout "
                "%gs, page_disconnect_grace %gs); max_kernels %d",
                self.page_connect_timeout,
                self.page_disconnect_grace,
                self.max_kernels,  # type: ignore[attr-defined]
            )

    @default("max_kernels")
    def _default_max_kernels(self) -> int:
        voila_app = sys.modules.get("voila.app")
        if voila_app is not None and isinstance(self.parent, voila_app.Voila):
            return default_max_kernels()
        return 0

    # -- starts --------------------------------------------------------------------------

    async def _async_start_kernel(self, **kwargs: Any) -> str:
        """A refusal for want of room is a 503 naming the limit; a page's kernel is
        remembered with its page."""
        try:
            kernel_id: str = await super()._async_start_kernel(**kwargs)  # type: ignore[misc]
        except KernelLimitReached as error:  # tornado logs it as one warning line
            raise http_error(error) from None
        page = _PAGE.get()
        if page is not None and self._voila is not None:
            self._forget_gone_pages()
            page.kernels.append(kernel_id)
            self._page_kernels[kernel_id] = page
        return kernel_id

    start_kernel = _async_start_kernel

    async def _async_shutdown_all(self, now: bool = False) -> None:
        """No page timer fires while the server shuts every kernel down."""
        for timer in self._page_timers.values():
            timer.cancel()
        self._page_timers.clear()
        await super()._async_shutdown_all(now=now)  # type: ignore[misc]

    shutdown_all = _async_shutdown_all

    # -- websockets (jupyter_server counts them in _kernel_connections) ----------------------

    def notify_connect(self, kernel_id: str) -> None:
        super().notify_connect(kernel_id)  # type: ignore[misc]
        timer = self._page_timers.pop(kernel_id, None)
        if timer is not None:
            timer.cancel()

    def notify_disconnect(self, kernel_id: str) -> None:
        super().notify_disconnect(kernel_id)  # type: ignore[misc]
        page = self._page_kernels.get(kernel_id)
        if page is None or not page.served or self._connections(kernel_id):
            return
        if not is_connected_kernel(self, kernel_id):
            self._page_kernels.pop(kernel_id, None)  # shut down already
            return
        self._arm(
            kernel_id,
            self.page_disconnect_grace,
            f"its page's websocket closed {self.page_disconnect_grace:g} s ago",
        )

    def _page_served(self, page: Page) -> None:
        """The page's response is complete (or failed): its JavaScript connects from now on."""
        page.served = True
        for kernel_id in page.kernels:
            if kernel_id in self._page_kernels and not self._connections(kernel_id):
                self._arm(
                    kernel_id,
                    self.page_connect_timeout,
                    f"no websocket reached it within {self.page_connect_timeout:g} s of its page",
                )

    def _connections(self, kernel_id: str) -> int:
        return connection_count(self, kernel_id)

    def _arm(self, kernel_id: str, delay: float, why: str) -> None:
        previous = self._page_timers.pop(kernel_id, None)
        if previous is not None:
            previous.cancel()
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        self._page_timers[kernel_id] = loop.call_later(delay, self._expire, kernel_id, why)

    def _expire(self, kernel_id: str, why: str) -> None:
        self._page_timers.pop(kernel_id, None)
        if kernel_id not in self or self._connections(kernel_id):  # type: ignore[operator]
            if kernel_id not in self:  # type: ignore[operator]
                self._page_kernels.pop(kernel_id, None)
            return
        self._page_kernels.pop(kernel_id, None)
        self._page_tasks.spawn(self._shut_down_page_kernel(kernel_id, why), "shut down")

    async def _shut_down_page_kernel(self, kernel_id: str, why: str) -> None:
        self.log.info("hotpot_km: shutting down kernel %s of a Voila page: %s", kernel_id, why)
        try:
            await self.shutdown_kernel(kernel_id)  # type: ignore[attr-defined]
        except (KeyError, web.HTTPError):
            pass  # it ended meanwhile (the beacon, the culler)
        except Exception:
            self.log.exception("hotpot_km: shutting down kernel %s failed", kernel_id)

    def _forget_gone_pages(self) -> None:
        for kernel_id in [k for k in self._page_kernels if k not in self]:  # type: ignore[operator]
            self._page_kernels.pop(kernel_id, None)
            timer = self._page_timers.pop(kernel_id, None)
            if timer is not None:
                timer.cancel()

    # -- Voila's page handler ----------------------------------------------------------------

    def _wrap_voila_pages(self, loop: asyncio.AbstractEventLoop, attempt: int) -> None:
        # Voila creates its tornado application right before it starts the loop;
        # this runs on the loop's first turn, before any connection is accepted.
        app = voila_application(self._voila)
        if not isinstance(app, web.Application):
            if attempt < 600:
                loop.call_later(0.1, self._wrap_voila_pages, loop, attempt + 1)
            return
        from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
        from voila.handler import VoilaHandler

        for rule in _rules(app.default_router):
            target = rule.target
            if not isinstance(target, type):
                continue
            if issubclass(target, VoilaHandler) and not issubclass(target, _PageHandler):
                rule.target = type(target.__name__, (_PageHandler, target), {})
            elif issubclass(target, KernelWebsocketHandler):
                if not issubclass(target, _PlainErrors):
                    rule.target = type(target.__name__, (_PlainErrors, target), {})


class _PageHandler(web.RequestHandler):
    """Voila's page handler, which tells the manager which kernels its page started."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        manager = self.settings.get("kernel_manager")
        if not isinstance(manager, ServerHostMixin):
            await super().get(*args, **kwargs)  # type: ignore[misc]
            return
        if manager.page_xsrf_cookie and self.current_user is not None:
            self.xsrf_token  # noqa: B018 (sets the cookie the page's beacon sends back)
        page = Page()
        token = _PAGE.set(page)
        try:
            await super().get(*args, **kwargs)  # type: ignore[misc]
        finally:
            _PAGE.reset(token)
            manager._page_served(page)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A page refused for want of a kernel says which limit, on Voila's error page."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(error, KernelLimitReached):
            super().write_error(status_code, **kwargs)
            return
        self.set_header("Content-Type", "text/html")
        self.set_header("Retry-After", "30")
        message = f"Service Unavailable: {getattr(error, 'message', error)}"
        self.write(
            self.render_template(  # type: ignore[attr-defined]
                "error.html", status_code=status_code, status_message=message, message=message
            )
        )


class _PlainErrors(web.RequestHandler):
    """Voila's kernel websocket, refusing in plain text: a closing page reconnects to the
    kernel its beacon just shut down, and jupyter_server's HTML error page for that 404
    needs a ``static_path`` standalone Voila lacks (a 500 and two tracebacks instead)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {self._reason}\n")


def default_max_kernels() -> int:
    """``max_kernels`` of a Voila that configures none: one kernel per 256 MiB of three
    quarters of the machine's memory (or its cgroup's limit), at least 4. A public
    dashboard must not start kernels until the machine runs out of memory."""
    memory = _memory_bytes()
    if memory is None:
        return 4 * (os.cpu_count() or 1)
    return max(4, int(memory * 0.75) // KERNEL_MEMORY)


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup's memory limit when lower (containers)."""
    try:
        total: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            if total is None or limit < total:
                total = limit
        break
    return total
