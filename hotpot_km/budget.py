"""Counting kernel processes against ``max_kernels``.

Every kernel process started through a hotpot_km manager holds one
:class:`Slot`, whether it is warming in the pool, waiting there, or handed out.
A slot is taken before its process is launched and released only once the
process is gone (reaped), so the number of live kernel processes never exceeds
the limit, whatever the interleaving of concurrent starts, handouts, restarts
and shutdowns. While its process runs, the slot also keeps the process group
registered with :mod:`hotpot_km.keeper`, so it dies with the host.
"""

from __future__ import annotations

from collections.abc import Callable

from . import keeper


class MaximumKernelsException(Exception):
    """Raised when starting a kernel would exceed ``max_kernels``."""


class KernelLimitReached(MaximumKernelsException):
    """A start refused because a limit on kernels is reached: ``limit`` names it (the trait,
    e.g. ``"max_kernels"``) and ``value`` is its value. Hosts answer it as an overload (HTTP
    503 with the message), not as an error of the server; every refusal of a start for want
    of room is one of these, whatever the limit."""

    def __init__(self, message: str, limit: str = "max_kernels", value: object = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


class Slot:
    """Permission for one kernel process to exist; :meth:`release` is idempotent."""

    __slots__ = ("_budget", "_group")

    def __init__(self, budget: KernelBudget) -> None:
        self._budget: KernelBudget | None = budget
        self._group: int | None = None

    @property
    def held(self) -> bool:
        return self._budget is not None

    def bind(self, group: int | None) -> None:
        """The slot's process now runs in process group ``group`` (None: not a local process)."""
        if group == self._group:
            return
        self.unbind()
        if group:
            keeper.register(group)
            self._group = group

    def unbind(self) -> None:
        """The slot's process is gone; the slot may be used for another one."""
        group, self._group = self._group, None
        if group:
            keeper.unregister(group)

    def release(self) -> None:
        """Call only once the slot's process is gone (or was never launched)."""
        self.unbind()
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._used -= 1
            budget._on_release()


class KernelBudget:
    """Hands out slots up to ``limit()`` (0 means unlimited)."""

    def __init__(self, limit: Callable[[], int], on_release: Callable[[], None] = lambda: None):
        self._limit = limit
        self._used = 0
        self._on_release = on_release

    @property
    def used(self) -> int:
        return self._used

    @property
    def limit(self) -> int:
        return self._limit()

    def free(self) -> int | None:
        """Slots left, or ``None`` when unlimited."""
        limit = self._limit()
        return None if limit <= 0 else max(limit - self._used, 0)

    def try_take(self) -> Slot | None:
        free = self.free()
        if free is not None and free <= 0:
            return None
        self._used += 1
        return Slot(self)
