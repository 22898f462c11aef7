"""The ``hotpot-km`` command (a traitlets Application with subcommands)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Unicode
from traitlets.config import Application

from . import __version__

__all__ = ["HotpotKmApp", "StatusApp", "main"]


class StatusApp(Application):  # type: ignore[misc]
    """``hotpot-km status``: the pools of a server, or of the local pool service."""

    name = "hotpot-km status"
    version = __version__
    description = """Show the kernel pools: size, ready and warming kernels, how many starts got a
    warm kernel and why the others went cold, warm-up times and recent warm-up errors. With
    --url, of a jupyter_server / JupyterLab / Voila server (its /api/hotpot_km/status);
    otherwise of the local pool service. Exit code 1 if the status can't be read, 2 if the
    server has no hotpot_km pool."""
    examples = """
    hotpot-km status --url http://127.0.0.1:8888/ --token abc
    hotpot-km status --url 'http://127.0.0.1:8888/?token=abc' --json
    hotpot-km status --url http://127.0.0.1:8866/ --watch
    """

    url = Unicode(
        "", config=True, help="Base URL of the server to ask (its token may be in the query)."
    )
    token = Unicode(
        "", config=True, help="The server's API token (default: the URL's, else $JUPYTER_TOKEN)."
    )
    json_output = Bool(False, config=True, help="Print the status document as JSON.")
    watch = Bool(False, config=True, help="Refresh the status in place until Ctrl-C.")
    interval = Float(2.0, config=True, help="Seconds between refreshes with --watch.")

    aliases = {
        "url": "StatusApp.url",
        "token": "StatusApp.token",
        "interval": "StatusApp.interval",
    }
    flags = {
        "json": ({"StatusApp": {"json_output": True}}, "Print the status document as JSON."),
        "watch": ({"StatusApp": {"watch": True}}, "Refresh the status until Ctrl-C."),
    }

    def start(self) -> None:
        from .status_client import run_status

        code = run_status(
            self.url or None,
            self.token or None,
            as_json=self.json_output,
            watch=self.watch,
            interval=self.interval,
        )
        self.exit(code)


class HotpotKmApp(Application):  # type: ignore[misc]
    """``hotpot-km``: tools for hotpot_km kernel pools."""

    name = "hotpot-km"
    version = __version__
    description = "Tools for hotpot_km kernel pools."
    subcommands: dict[str, Any] = {
        "status": (StatusApp, "Show the kernel pools of a server (--url) or of the local service."),
    }

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        self.print_subcommands()
        self.exit(1)


main = HotpotKmApp.launch_instance
