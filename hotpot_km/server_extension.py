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
"""

from __future__ import annotations

import asyncio
import json
import sys
from http.client import responses
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, PrometheusMetricsHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.routing import PathMatches, Rule

from .status import manager_status

__all__ = ["StatusHandler", "attach_to_voila", "status_rules"]

STATUS_PATH = "/api/hotpot_km/status"


class StatusHandler(APIHandler):
    """The status document of the server's kernel manager (see :mod:`hotpot_km.status`)."""

    auth_resource = "api"  # the same permission as the server's own /api/status
    _track_activity = False  # a status poller must not keep an idle server alive

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(manager_status(self.kernel_manager)))


class VoilaMetricsHandler(PrometheusMetricsHandler):
    """jupyter_server's ``/metrics`` handler, with plain-text errors: standalone Voila has
    none of the templates jupyter_server renders its HTML error pages with."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {responses.get(status_code, 'Error')}\n")


def status_rules(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [(url_path_join(base_url, STATUS_PATH), StatusHandler)]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server for the ``hotpot_km`` entry of ``jpserver_extensions``."""
    web_app = serverapp.web_app
    web_app.add_handlers(".*$", status_rules(web_app.settings["base_url"]))
    from .overload import answer_limits

    answer_limits(web_app)  # POST /api/sessions: a refused start is a 503, not a 500


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
    rules = [
        Rule(PathMatches(url_path_join(base, STATUS_PATH)), StatusHandler),
        Rule(PathMatches(url_path_join(base, "/metrics")), VoilaMetricsHandler),
    ]
    app.default_router.rules[0:0] = rules  # ahead of Voila's catch-all notebook route
