"""Reading and showing the status document (see :mod:`hotpot_km.status`) in a terminal.

:func:`run_status` is the ``hotpot-km status`` command: it fetches the document
from a server's ``/api/hotpot_km/status`` (or the local pool service) and
prints it as tables, as JSON, or refreshed in place (``--watch``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = [
    "StatusUnavailable",
    "fetch_status",
    "local_service_status",
    "render_status",
    "run_status",
]

#: Exit codes of ``hotpot-km status``.
EXIT_OK, EXIT_UNAVAILABLE, EXIT_NO_POOL = 0, 1, 2


class StatusUnavailable(Exception):
    """The status could not be read; the message says why and what to do."""


def status_url(url: str) -> tuple[str, str | None]:
    """The status endpoint under a server's base URL, and a token the URL carries, if any.

    ``http://host:8888/`` and ``http://host:8888/?token=abc`` (as servers print
    them) both work; a base URL (``http://host/jupyter/``) is kept.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    token = urllib.parse.parse_qs(parts.query).get("token", [None])[0]
    path = parts.path.rstrip("/") + "/api/hotpot_km/status"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), token


class _KeepTokenAtHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the token only to the origin it was given for: urllib
    copies every header to wherever a redirect points, and a token is a login."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() == "authorization":
                    del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


_opener = urllib.request.build_opener(_KeepTokenAtHome)


def fetch_status(url: str, token: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET the status document of the server at ``url`` (its base URL)."""
    endpoint, url_token = status_url(url)
    token = token or url_token
    request = urllib.request.Request(endpoint, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with _opener.open(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            hint = "wrong token" if token else "no token given (--token, or $JUPYTER_TOKEN)"
            try:
                said = str(json.loads(error.read().decode("utf-8")).get("message") or "")
            except (ValueError, AttributeError, OSError):
                said = ""
            if "allow_unauthenticated" in said:  # a server without authentication
                hint = said
            raise StatusUnavailable(f"{endpoint}: {error.code} {error.reason}: {hint}") from None
        if error.code == 404:
            raise StatusUnavailable(
                f"{endpoint}: 404: no hotpot_km status here (is hotpot_km installed in the "
                "server's environment, and is this the server's base URL?)"
            ) from None
        raise StatusUnavailable(f"{endpoint}: {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StatusUnavailable(f"cannot reach {endpoint}: {reason}") from None
    except ValueError as error:
        raise StatusUnavailable(f"{endpoint} did not answer with JSON: {error}") from None


def local_service_status(runtime_dir: str | None = None) -> dict[str, Any]:
    """The status of this user's pool service (``hotpot-km serve``), through its socket."""
    import asyncio

    from .service.client import ServiceError, ServiceUnavailable, call
    from .service.paths import ServicePaths

    if runtime_dir is None:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime_dir = jupyter_runtime_dir()
    socket = ServicePaths(runtime_dir).socket
    try:
        return dict(asyncio.run(call(socket, "status"))["status"])
    except (ServiceUnavailable, ServiceError) as error:
        raise StatusUnavailable(
            f"no pool service is running ({error}); start one with `hotpot-km serve`, "
            "or pass --url URL [--token T] for a server"
        ) from None


# -- rendering -------------------------------------------------------------------------------


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


def _pool_state(pool: dict[str, Any]) -> Text:
    if pool.get("warmup_failing"):
        return Text("warm-up failing", style="bold red")
    if pool["size"] <= 0:
        return Text("no pool", style="dim")
    if pool["ready"] >= pool.get("target", pool["size"]):
        return Text("full", style="green")
    if pool["ready"] == 0:
        return Text("empty", style="yellow")
    return Text("filling", style="cyan")


def _fill(pool: dict[str, Any]) -> str:
    """Ready / target, and why the target is what it is when it is not the plain size."""
    target = pool.get("target", pool["size"])
    reason = pool.get("target_reason", "static")
    if "min" in pool:
        return f"{pool['ready']} / {target} ({pool['min']}-{pool['max']}, {reason})"
    if reason != "static":
        return f"{pool['ready']} / {target} ({reason})"
    return f"{pool['ready']} / {target}"


def _share(pooled: int, cold: int) -> str:
    total = pooled + cold
    return f"{100 * pooled / total:.0f}%" if total else "-"


def _reasons(counts: dict[str, Any]) -> str:
    reasons = sorted(counts.get("cold_reasons", {}).items(), key=lambda item: -item[1])
    return ", ".join(f"{reason or '?'} {n}" for reason, n in reasons) or "-"


def _service_line(service: dict[str, Any]) -> str:
    idle = service.get("idle_timeout") or 0
    up = time.time() - float(service.get("started") or time.time())
    return (
        f"\npool service pid {service.get('pid')}, up {_secs(up)}"
        + (f", exits after {_secs(idle)} idle" if idle else "")
        + f", socket {service.get('socket')}"
    )


def _leases(leases: list[dict[str, Any]]) -> Table:
    table = Table(title="Leases (kernels handed out)", box=box.SIMPLE, title_justify="left")
    for column in ("kernel", "pid", "owner", "owner command", "cwd", "age", "state"):
        table.add_column(column, overflow="fold")
    for lease in leases:
        table.add_row(
            lease.get("kernel_name", ""),
            str(lease.get("kernel_pid", "")),
            str(lease.get("owner", "")),
            lease.get("owner_command", ""),
            lease.get("cwd", ""),
            _secs(lease.get("age")),
            lease.get("state", ""),
        )
    return table


def render_status(doc: dict[str, Any]) -> RenderableType:
    """Tables for a status document: pools, starts, kernels, recent warm-up errors."""
    if not doc.get("enabled"):
        return Text.assemble(("hotpot_km: no pool here\n", "bold yellow"), doc.get("message", ""))
    processes = doc["processes"]
    limit = processes.get("max_kernels") or 0
    service = doc.get("service") or {}
    header = Text.assemble(
        ("hotpot_km ", "bold"),
        f"{doc.get('hotpot_km', '')}  ",
        (doc.get("manager", ""), "dim"),
        "\nkernel processes ",
        (str(processes["used"]), "bold"),
        f" (max_kernels {limit})" if limit else "",
        f", {processes['in_use']} in use" if processes.get("in_use") is not None else "",
        _service_line(service) if service else "",
    )

    pools = Table(title="Pools", box=box.SIMPLE_HEAVY, title_justify="left")
    pools.add_column("kernel")
    pools.add_column("state")
    for column in ("ready", "warming", "claimed", "warm-up p50", "p95", "failures"):
        pools.add_column(column, justify="right")
    starts = Table(title="Starts", box=box.SIMPLE_HEAVY, title_justify="left")
    starts.add_column("kernel")
    for column in ("pooled", "cold", "warm"):
        starts.add_column(column, justify="right")
    starts.add_column("cold because", overflow="fold", min_width=16)
    for column in ("handout p50", "restarts"):
        starts.add_column(column, justify="right")
    for name, pool in doc["pools"].items():
        warmup = pool.get("warmup_seconds", {})
        failures = sum(pool.get("warmup_failures", {}).values())
        if pool["size"] > 0 or pool["kernels"]:
            pools.add_row(
                name,
                _pool_state(pool),
                _fill(pool),
                str(pool["warming"]),
                str(pool["claimed"]),
                _secs(warmup.get("median")),
                _secs(warmup.get("p95")),
                Text(str(failures), style="bold red" if failures else ""),
            )
        counts, restarts = pool.get("starts", {}), pool.get("restarts", {})
        pooled, cold = counts.get("pooled", 0), counts.get("cold", 0)
        starts.add_row(
            name,
            str(pooled),
            str(cold),
            _share(pooled, cold),
            _reasons(counts),
            _secs(pool.get("handout_seconds", {}).get("median")),
            f"{restarts.get('pooled', 0)}/{restarts.get('cold', 0)}",
        )

    kernels = Table(title="Pooled kernels", box=box.SIMPLE, title_justify="left")
    for column in ("kernel", "state", "pid", "age", "ready for"):
        kernels.add_column(column, justify="left" if column in ("kernel", "state") else "right")
    for name, pool in doc["pools"].items():
        for kernel in pool["kernels"]:
            kernels.add_row(
                name,
                kernel["state"] + (", stopped" if kernel.get("paused") else ""),
                str(kernel["pid"] or "-"),
                _secs(kernel["age"]),
                _secs(kernel["ready_for"]),
            )

    parts: list[RenderableType] = [header, pools, starts, kernels]
    if "leases" in doc:
        parts.append(_leases(doc["leases"]))
    errors = doc.get("recent_errors") or []
    if errors:
        table = Table(title="Recent warm-up errors", box=box.SIMPLE, title_justify="left")
        for column in ("ago", "kernel", "step", "error"):
            table.add_column(column, overflow="fold")
        for error in errors[:5]:
            table.add_row(
                _secs(error["age"]), error["kernel_name"], error["step"], Text(error["message"])
            )
        parts.append(table)
    return Group(*parts)


# -- the command -----------------------------------------------------------------------------


def run_status(
    url: str | None = None,
    token: str | None = None,
    *,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 2.0,
    console: Console | None = None,
    local: Callable[[], dict[str, Any]] = local_service_status,
) -> int:
    """``hotpot-km status``: print the status of a server (``url``) or the local service.

    Returns the exit code: 0, 1 if the status could not be read, 2 if the host
    has no hotpot_km pool.
    """
    console = console or Console()
    token = token or os.environ.get("JUPYTER_TOKEN") or None
    fetch: Callable[[], dict[str, Any]] = (lambda: fetch_status(url, token)) if url else local

    def show(doc: dict[str, Any]) -> RenderableType:
        if as_json:
            return Text(json.dumps(doc, indent=2))
        return render_status(doc)

    if not watch:
        try:
            doc = fetch()
        except StatusUnavailable as error:
            print(f"hotpot-km status: {error}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if as_json and console.is_terminal:
            console.print_json(data=doc)
        elif as_json:
            print(json.dumps(doc))  # machine-readable, exactly one line
        else:
            console.print(render_status(doc))
        return EXIT_OK if doc.get("enabled") else EXIT_NO_POOL

    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                try:
                    view: RenderableType = show(fetch())
                except StatusUnavailable as error:
                    view = Text(f"hotpot-km status: {error}", style="red")
                stamp = Text(time.strftime("%H:%M:%S  (Ctrl-C to stop)"), style="dim")
                live.update(Group(stamp, view), refresh=True)
                time.sleep(max(interval, 0.1))
        except KeyboardInterrupt:
            pass
    return EXIT_OK
