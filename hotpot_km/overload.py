"""Overload is an answer: a start refused for want of room is HTTP 503 with the limit's name.

The engine refuses a start it has no room for with
:class:`~hotpot_km.budget.KernelLimitReached` (``max_kernels``, or any other limit on
kernels). jupyter_server, Kernel Gateway and Voila would turn that into a 500 with a
traceback in the log; the servers' managers raise it as :class:`KernelLimitHTTPError`
instead, which tornado answers with 503 and the message (JSON for the API, Voila's error
page for a page). jupyter_server's ``POST /api/sessions`` turns every error of a start into a
500, so its handler gets a subclass that keeps the 503 (:func:`answer_limits`).
"""

from __future__ import annotations

from typing import Any

from tornado import web

from .budget import KernelLimitReached

__all__ = ["KernelLimitHTTPError", "answer_limits", "http_error"]


class KernelLimitHTTPError(web.HTTPError, KernelLimitReached):
    """503 Service Unavailable naming the limit; still a ``KernelLimitReached`` (and
    ``MaximumKernelsException``) for code that calls the manager directly."""

    def __init__(self, error: KernelLimitReached) -> None:
        web.HTTPError.__init__(self, 503, str(error), reason="Service Unavailable")
        self.limit = error.limit
        self.value = error.value
        self.message = str(error)


def http_error(error: KernelLimitReached) -> KernelLimitHTTPError:
    return error if isinstance(error, KernelLimitHTTPError) else KernelLimitHTTPError(error)


def _limit_of(error: BaseException) -> KernelLimitHTTPError | None:
    """The refusal behind ``error`` (jupyter_server wraps it with ``raise ... from``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KernelLimitReached):
            return http_error(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def answer_limits(web_app: web.Application) -> None:
    """Make jupyter_server's ``POST /api/sessions`` answer a refused start with 503."""
    from jupyter_server.services.sessions.handlers import SessionRootHandler

    for rule in _rules(web_app.default_router):
        target = rule.target
        if isinstance(target, type) and issubclass(target, SessionRootHandler):
            if not issubclass(target, _LimitAnswering):
                rule.target = type(target.__name__, (_LimitAnswering, target), {})


class _LimitAnswering:
    """Re-raises a session start's refusal, which the server wrapped in a 500, as the 503."""

    async def post(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().post(*args, **kwargs)  # type: ignore[misc]
        except web.HTTPError as error:
            refusal = _limit_of(error)
            if refusal is None or refusal is error:
                raise
            raise refusal from None


def _rules(router: Any) -> list[Any]:
    """Every rule of a tornado router, nested routers included."""
    found = []
    for rule in getattr(router, "rules", ()):
        found.append(rule)
        found.extend(_rules(rule.target))
    return found
