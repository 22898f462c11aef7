"""When each pool's next warm-up may start, and what its failures were: the one owner of
that state.

Two rules push a pool's next warm-up back: ``fill_delay`` after a request (a lone
visitor's page goes first; see :meth:`BackOff.arrived`), and back-off after failed
warm-ups (0.5 s, doubling up to ``max_retry_delay``). A kernel of a name whose kernels
started before that dies at start is most likely a port another process took between
jupyter_client choosing it and the kernel binding it (jupyter_client picks ports in the
process that starts the kernel): that first death is *forgiven* — retried, a warning,
and nobody gives up on the pool for it; a second one in a row is a failure like others.
"""

from __future__ import annotations

import enum


class Severity(enum.Enum):
    """How a failed warm-up is logged: once per new cause, not per retry."""

    FORGIVEN = "warning"  # a first death at start of a name that started before
    NEW = "error"  # a cause not seen in a row before
    AGAIN = "debug"  # the same cause once more


class BackOff:
    """Per kernel name: the loop time before which no warm-up starts, consecutive failures,
    the last failure's message, and whether the failures are one forgiven death at start."""

    def __init__(self) -> None:
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._forgiven: set[str] = set()
        self._last_error: dict[str, str] = {}
        self._stream_until: dict[str, float] = {}

    # -- what happened -----------------------------------------------------------------------

    def arrived(self, name: str, now: float, fill_delay: float, *, settling: bool) -> None:
        """A request took a kernel of ``name``: its refill waits ``fill_delay``. If an
        earlier request's refill is still held back (a wait under way here, or its kernel
        still ``settling``), the requests come as a stream, not from a lone visitor, for
        ``fill_delay`` from now (:meth:`streaming`): one courtesy wait per request would
        hold every refill back until the pool ran dry."""
        if settling or self._not_before.get(name, 0.0) > now:
            self._stream_until[name] = now + fill_delay
        else:
            self._not_before[name] = now + fill_delay

    def missed(self, name: str) -> None:
        """A request found pool ``name`` empty: its refill waits for nothing (but the
        back-off after failures stays)."""
        if not self._failures.get(name):
            self._not_before.pop(name, None)

    def failed(
        self, name: str, message: str, now: float, max_retry_delay: float, *, died_at_start: bool
    ) -> tuple[float, Severity]:
        """A warm-up of ``name`` failed with ``message``: push the next one back. Returns the
        delay and how to log it."""
        failures = self._failures.get(name, 0) + 1
        self._failures[name] = failures
        delay = min(0.5 * 2 ** (failures - 1), max(max_retry_delay, 0.5))
        self._not_before[name] = now + delay
        if failures == 1 and died_at_start:
            self._forgiven.add(name)
            severity = Severity.FORGIVEN
        elif self._last_error.get(name) != message or (failures == 2 and died_at_start):
            self._forgiven.discard(name)
            severity = Severity.NEW
        else:
            self._forgiven.discard(name)
            severity = Severity.AGAIN
        self._last_error[name] = message
        return delay, severity

    def succeeded(self, name: str) -> bool:
        """A warm-up of ``name`` succeeded; ``True`` if it had been failing."""
        self._forgiven.discard(name)
        self._last_error.pop(name, None)
        return bool(self._failures.pop(name, 0))

    # -- questions ---------------------------------------------------------------------------

    def not_before(self, name: str) -> float:
        """Loop time before which no warm-up of ``name`` starts (0: none is held back)."""
        return self._not_before.get(name, 0.0)

    def streaming(self, name: str, now: float) -> bool:
        """Whether requests for ``name`` came as a stream lately (see :meth:`arrived`)."""
        return self._stream_until.get(name, 0.0) > now

    def failures(self, name: str) -> int:
        """Consecutive failed warm-ups of ``name``."""
        return self._failures.get(name, 0)

    def failing(self, name: str) -> bool:
        """Whether ``name``'s warm-ups fail (a forgiven death at start aside): nobody waits
        for its warming kernels then."""
        return bool(self._failures.get(name)) and name not in self._forgiven

    def last_error(self, name: str) -> str | None:
        return self._last_error.get(name)

    def counts(self) -> dict[str, int]:
        """Failures per name now, to compare with later (:meth:`new_failure`)."""
        return dict(self._failures)

    def new_failure(self, since: dict[str, int]) -> str | None:
        """The message of a failure not forgiven since :meth:`counts` returned ``since``."""
        for name, count in self._failures.items():
            if count > since.get(name, 0) and name not in self._forgiven:
                return self._last_error[name]
        return None
