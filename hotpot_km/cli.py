"""The ``hotpot-km`` command: ``serve``, ``status`` and ``kernelspec`` (traitlets Applications)."""

from __future__ import annotations

from typing import Any

from jupyter_core.application import base_aliases, base_flags
from traitlets import Bool, Float, Unicode

from .service.app import HotpotApp, KernelSpecApp, ServeApp

__all__ = ["HotpotKmApp", "StatusApp", "main"]


class StatusApp(HotpotApp):  # type: ignore[misc]
    """``hotpot-km status``: the pools of a server, or of this user's pool service."""

    name = "hotpot-km-status"
    description = """Show the kernel pools: size, ready and warming kernels, how many starts got a
    warm kernel and why the others went cold, warm-up times, recent warm-up errors and, for the
    pool service, its leases. With --url, of a jupyter_server / JupyterLab / Voila server (its
    /api/hotpot_km/status); otherwise of this user's pool service (`hotpot-km serve`). Exit
    code 1 if the status can't be read (no service, no server, wrong token), 2 if the server
    has no hotpot_km pool."""
    examples = """
    hotpot-km status
    hotpot-km status --json
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
        **base_aliases,
        "url": "StatusApp.url",
        "token": "StatusApp.token",
        "interval": "StatusApp.interval",
    }
    flags = {
        **base_flags,
        "json": ({"StatusApp": {"json_output": True}}, "Print the status document as JSON."),
        "watch": ({"StatusApp": {"watch": True}}, "Refresh the status until Ctrl-C."),
    }

    def start(self) -> None:
        from .status_client import local_service_status, run_status

        code = run_status(
            self.url or None,
            self.token or None,
            as_json=self.json_output,
            watch=self.watch,
            interval=self.interval,
            local=lambda: local_service_status(self.runtime_dir),
        )
        self.exit(code)


class HotpotKmApp(HotpotApp):  # type: ignore[misc]
    """``hotpot-km``: warm Jupyter kernels for every process of this user."""

    name = "hotpot-km"
    description = """Pools of warm Jupyter kernels: a pool service for every process of this user
    (serve, kernelspec) and the state of any pool (status)."""
    subcommands: dict[str, Any] = {
        "serve": (ServeApp, ServeApp.description.splitlines()[0]),
        "status": (StatusApp, "Show the kernel pools of the pool service or of a server (--url)."),
        "kernelspec": (KernelSpecApp, KernelSpecApp.description),
    }

    def start(self) -> None:
        super().start()  # runs the subcommand
        self.print_subcommands()
        self.exit(1)


main = HotpotKmApp.launch_instance
