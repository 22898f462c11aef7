"""A host's pools as plain data, and as tables for a terminal.

:func:`status_document` is a function of the engine's state only, so every host
can serve the same document (``hotpot-km status --json`` prints the pool service's);
:func:`print_status` renders one with rich.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import KernelPool

#: Version of the document's layout; bumped when a field changes meaning.
DOCUMENT_VERSION = 1


def status_document(
    pool: KernelPool,
    *,
    service: Mapping[str, Any] | None = None,
    leases: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Pools (size, ready, warming, claimed, failures), kernel count, recent warm-up errors,
    plus what the host adds: ``service`` (who answers) and ``leases`` (kernels handed out)."""
    document: dict[str, Any] = {"document_version": DOCUMENT_VERSION, **pool.snapshot()}
    if service is not None:
        document["service"] = dict(service)
    if leases is not None:
        document["leases"] = leases
    return document


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def print_status(document: Mapping[str, Any], file: IO[str] | None = None) -> None:
    """Render a status document as tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False)
    limit = document.get("max_kernels") or 0
    service = document.get("service")
    if service:
        idle = service.get("idle_timeout") or 0
        console.print(
            f"[bold]hotpot-km service[/bold] pid {service.get('pid')}, "
            f"version {service.get('version')}, up {_age(time.time() - service.get('started', 0))}"
            + (f", exits after {_age(idle)} idle" if idle else "")
        )
        console.print(f"socket {service.get('socket')}")
    console.print(
        f"kernel processes: {document.get('kernels', 0)}"
        + (f" of max_kernels={limit}" if limit else " (no max_kernels)")
    )

    pools = Table(title="Pools", title_justify="left")
    for column in ("kernel", "size", "ready", "warming", "claimed", "failures", "last error"):
        pools.add_column(
            column,
            justify="right"
            if column in {"size", "ready", "warming", "claimed", "failures"}
            else "left",
        )
    for name, pool in sorted(document.get("pools", {}).items()):
        error = pool.get("last_error") or ""
        if error and pool.get("retry_in") is not None:
            error += f" (retry in {pool['retry_in']:g} s)"
        pools.add_row(
            name,
            str(pool.get("size", 0)),
            str(pool.get("ready", 0)),
            str(pool.get("warming", 0)),
            str(pool.get("claimed", 0)),
            str(pool.get("failures", 0)),
            error,
        )
    console.print(pools)

    if "leases" in document:
        leases = Table(title="Leases (kernels handed out)", title_justify="left")
        for column in ("kernel", "pid", "owner", "owner command", "cwd", "age", "state"):
            leases.add_column(column)
        for lease in document["leases"]:
            leases.add_row(
                lease.get("kernel_name", ""),
                str(lease.get("kernel_pid", "")),
                str(lease.get("owner", "")),
                lease.get("owner_command", ""),
                lease.get("cwd", ""),
                _age(lease.get("age", 0)),
                lease.get("state", ""),
            )
        console.print(leases)

    errors = document.get("recent_errors") or []
    if errors:
        table = Table(title="Recent warm-up errors", title_justify="left")
        for column in ("time", "kernel", "error"):
            table.add_column(column)
        for error in errors[-10:]:
            when = time.strftime("%H:%M:%S", time.localtime(error.get("time", 0)))
            table.add_row(when, error.get("kernel_name", ""), error.get("message", ""))
        console.print(table)
