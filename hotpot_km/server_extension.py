"""``GET /api/hotpot_km/status`` in jupyter_server, JupyterLab, Notebook 7 and Voila.

Installing the package enables this jupyter_server extension (the data file
``etc/jupyter/jupyter_server_config.d/hotpot_km.json``), so every server of the
environment serves the status; a server whose kernel manager is not a hotpot_km
one answers that it has no pool. jupyter_server already serves ``/metrics``.

Standalone Voila (``voila notebook.ipynb``) runs its own tornado application
without server extensions or ``/metrics``: when a hotpot_km manager finds
itself created by Voila, it adds both routes to Voila's application before
the first request (:func:`attach_to_voila`), ahead of Voila's catch-all
notebook route. Both use jupyter_server's own handlers and Voila's own
identity provider, so they are authenticated exactly like Voila's pages.

A server without authentication (standalone Voila's default, no token; a
jupyter_server with an empty token and no password) serves neither the status
nor hotpot_km's series on ``/metrics`` unless ``HotpotKMStatus.allow_unauthenticated``
is set: anyone who can reach its port would read them. Warm-up errors leave the
process without their exception text (type, step and source location only).
"""

from __future__ import annotations

import asyncio
import json
import sys
from http.client import responses
from typing import Any

import prometheus_client
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, PrometheusMetricsHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.routing import PathMatches, Rule
from traitlets import Bool
from traitlets.config import Configurable

from .status import manager_status, public_document

__all__ = ["HotpotKMStatus", "StatusHandler", "attach_to_voila", "status_rules"]

STATUS_PATH = "/api/hotpot_km/status"
#: the tornado setting that says whether a server without authentication shows the pool
PUBLIC_SETTING = "hotpot_km_allow_unauthenticated"
OFF = (
    "hotpot_km's status and metrics are off on a server without authentication (anyone who "
    "can reach it would read them); set HotpotKMStatus.allow_unauthenticated=True to serve them"
)


class HotpotKMStatus(Configurable):
    """Who may read the pool's status and metrics over HTTP (in ``jupyter_server_config``,
    ``voila.json``, ...: ``{"HotpotKMStatus": {"allow_unauthenticated": true}}``)."""

    allow_unauthenticated = Bool(
        False,
        config=True,
        help="""Serve /api/hotpot_km/status and hotpot_km's /metrics series also from a server
        without authentication (a standalone Voila without a token, Voila's default; a
        jupyter_server with token '' and no password). Off by default: they show kernel pids,
        settings and warm-up errors to anyone who can reach the server.""",
    )


def _auth_enabled(handler: web.RequestHandler) -> bool:
    identity_provider = handler.settings.get("identity_provider")
    return identity_provider is None or bool(getattr(identity_provider, "auth_enabled", True))


def _hidden(handler: web.RequestHandler) -> bool:
    """Whether this server keeps the pool to itself: no authentication, and not opted in."""
    return not handler.settings.get(PUBLIC_SETTING, False) and not _auth_enabled(handler)


class _WithoutHotpotKM:
    """The default registry without hotpot_km's series (for ``generate_latest``)."""

    def collect(self) -> Any:
        for family in prometheus_client.REGISTRY.collect():
            if not family.name.startswith("hotpot_km"):
                yield family


class StatusHandler(APIHandler):
    """The status document of the server's kernel manager (see :mod:`hotpot_km.status`)."""

    auth_resource = "api"  # the same permission as the server's own /api/status
    _track_activity = False  # a status poller must not keep an idle server alive

    @web.authenticated
    @authorized
    async def get(self) -> None:
        if _hidden(self):
            raise web.HTTPError(403, OFF)
        self.finish(json.dumps(public_document(manager_status(self.kernel_manager))))


class MetricsHandler(PrometheusMetricsHandler):
    """jupyter_server's ``/metrics``, without hotpot_km's series on a server that keeps the
    pool to itself (see :class:`HotpotKMStatus`)."""

    @allow_unauthenticated
    def get(self) -> None:
        if not _hidden(self):
            return super().get()
        if self.settings["authenticate_prometheus"] and not self.logged_in:
            raise web.HTTPError(403)
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.write(prometheus_client.generate_latest(_WithoutHotpotKM()))  # type: ignore[arg-type]
        return None


class VoilaMetricsHandler(PrometheusMetricsHandler):
    """jupyter_server's ``/metrics`` handler, with plain-text errors: standalone Voila has
    none of the templates jupyter_server renders its HTML error pages with. There it serves
    only because of hotpot_km, so a Voila that keeps the pool to itself has none."""

    @allow_unauthenticated
    def get(self) -> None:
        if _hidden(self):
            raise web.HTTPError(403, OFF)
        return super().get()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {responses.get(status_code, 'Error')}\n")


def status_rules(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [(url_path_join(base_url, STATUS_PATH), StatusHandler)]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server for the ``hotpot_km`` entry of ``jpserver_extensions``."""
    web_app = serverapp.web_app
    web_app.settings[PUBLIC_SETTING] = _allowed(serverapp)
    web_app.add_handlers(".*$", status_rules(web_app.settings["base_url"]))
    metrics = Rule(
        PathMatches(url_path_join(web_app.settings["base_url"], "/metrics")), MetricsHandler
    )
    web_app.default_router.rules.insert(0, metrics)  # ahead of jupyter_server's own
    from .overload import answer_limits

    answer_limits(web_app)  # POST /api/sessions: a refused start is a 503, not a 500


def _allowed(app: Any) -> bool:
    return bool(HotpotKMStatus(config=app.config).allow_unauthenticated)


def attach_to_voila(manager: Any) -> None:
    """Serve the status and ``/metrics`` from a standalone Voila that created ``manager``."""
    voila_app = sys.modules.get("voila.app")
    if voila_app is None or not isinstance(manager.parent, voila_app.Voila):
        return
    from .pooled import host_loop

    loop = host_loop()  # the loop Voila's IOLoop runs next
    loop.call_soon(_add_voila_routes, manager.parent, loop, 0)


def _add_voila_routes(voila: Any, loop: asyncio.AbstractEventLoop, attempt: int) -> None:
    # Voila creates its tornado application right before it starts the loop;
    # this runs on the loop's first turn, before any connection is accepted.
    app = getattr(voila, "app", None)
    if not isinstance(app, web.Application):
        if attempt < 600:
            loop.call_later(0.1, _add_voila_routes, voila, loop, attempt + 1)
        return
    base = voila.server_url or voila.base_url
    app.settings.setdefault("authenticate_prometheus", True)  # as jupyter_server's default
    app.settings[PUBLIC_SETTING] = _allowed(voila)
    rules = [
        Rule(PathMatches(url_path_join(base, STATUS_PATH)), StatusHandler),
        Rule(PathMatches(url_path_join(base, "/metrics")), VoilaMetricsHandler),
    ]
    app.default_router.rules[0:0] = rules  # ahead of Voila's catch-all notebook route
