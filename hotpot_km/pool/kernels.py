"""Where each pooled kernel is in its life: the one owner of that state.

A pooled kernel moves through these places, and only :class:`PoolKernels` moves it::

    launched --> UNCLAIMED --claim--> CLAIMED --hand_out--> SETTLING --settled--> GONE
                  |   ^                 |   \\                 (or straight to GONE when
                  |   `----unclaim-----'    \\                 nothing waits for it to settle)
                  `--evict--> EVICTED        `--remove--> GONE (discarded)
                  `--remove--> GONE (dropped: surplus, dead, failed, pool closed)

Independently of its place, a kernel is *warming* from its launch until its warm-up ended
(either way): a start may claim a kernel that still warms, and wait for it. The engine's
concerns ask this object which kernels are where; none keeps a collection of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from .model import Place, PooledKernel


class InvalidTransition(RuntimeError):
    """A kernel was moved from a place that does not lead where it was moved to."""


#: place -> the places a kernel may move to from it (GONE is reachable from everywhere).
TRANSITIONS: dict[Place | None, frozenset[Place]] = {
    None: frozenset({Place.UNCLAIMED}),
    Place.UNCLAIMED: frozenset({Place.CLAIMED, Place.EVICTED, Place.GONE}),
    Place.CLAIMED: frozenset({Place.UNCLAIMED, Place.SETTLING, Place.GONE}),
    Place.EVICTED: frozenset({Place.GONE}),
    Place.SETTLING: frozenset({Place.GONE}),
    Place.GONE: frozenset({Place.GONE}),
}


class PoolKernels:
    """Every kernel of a pool, by place, and which of them are warming."""

    def __init__(self) -> None:
        # kernel name -> its unclaimed kernels, in launch order (a put-back one goes first)
        self._unclaimed: dict[str, list[PooledKernel]] = {}
        self._claimed: set[PooledKernel] = set()
        self._settling: set[PooledKernel] = set()
        self._warming: set[PooledKernel] = set()

    # -- moves -------------------------------------------------------------------------------

    def launched(self, kernel: PooledKernel) -> None:
        """A new kernel joins its pool, warming."""
        self._move(kernel, Place.UNCLAIMED)
        self._unclaimed.setdefault(kernel.name, []).append(kernel)
        self._warming.add(kernel)

    def warmed(self, kernel: PooledKernel) -> None:
        """Its warm-up ended: ready, or failed (an unclaimed kernel that failed leaves)."""
        self._warming.discard(kernel)
        if not kernel.is_ready and kernel.place is Place.UNCLAIMED:
            self.remove(kernel)

    def ended(self, kernel: PooledKernel) -> None:
        """Its process is gone: an unclaimed kernel leaves; a claimed or evicted one stays
        its claimer's until that one lets it go (:meth:`remove`)."""
        self._warming.discard(kernel)
        if kernel.place is Place.UNCLAIMED:
            self.remove(kernel)

    def claim(self, kernel: PooledKernel) -> None:
        """A start takes it (it may still be warming)."""
        self._move(kernel, Place.CLAIMED)
        self._unclaimed[kernel.name].remove(kernel)
        self._claimed.add(kernel)

    def evict(self, kernel: PooledKernel) -> None:
        """Taken to be discarded for its slot; it no longer counts toward its pool."""
        self._move(kernel, Place.EVICTED)
        self._unclaimed[kernel.name].remove(kernel)

    def unclaim(self, kernel: PooledKernel) -> None:
        """Put back untouched, first in line."""
        self._move(kernel, Place.UNCLAIMED)
        self._claimed.discard(kernel)
        self._unclaimed.setdefault(kernel.name, []).insert(0, kernel)

    def hand_out(self, kernel: PooledKernel, *, settle: bool) -> None:
        """Handed out: it settles (its refill waits for it), or leaves at once."""
        if not settle:
            self.remove(kernel)
            return
        self._move(kernel, Place.SETTLING)
        self._claimed.discard(kernel)
        self._settling.add(kernel)

    def settled(self, kernel: PooledKernel) -> None:
        """A handed-out kernel went idle (or its watch ended): it leaves the pool."""
        self.remove(kernel)

    def remove(self, kernel: PooledKernel) -> None:
        """It leaves the pool, from wherever it is (idempotent). Its warm-up, if one still
        runs, ends on its own (and reports :meth:`warmed`)."""
        self._move(kernel, Place.GONE)
        unclaimed = self._unclaimed.get(kernel.name, [])
        if kernel in unclaimed:
            unclaimed.remove(kernel)
        self._claimed.discard(kernel)
        self._settling.discard(kernel)

    def _move(self, kernel: PooledKernel, to: Place) -> None:
        if to not in TRANSITIONS[kernel.place]:
            where = "new" if kernel.place is None else kernel.place.value
            raise InvalidTransition(f"a pooled {kernel.name!r} kernel: {where} -> {to.value}")
        kernel.place = to

    # -- questions ---------------------------------------------------------------------------

    def unclaimed(self, name: str) -> list[PooledKernel]:
        """The unclaimed kernels of pool ``name``, in the order starts take them (a copy)."""
        return list(self._unclaimed.get(name, ()))

    def all_unclaimed(self) -> list[PooledKernel]:
        return [kernel for kernels in list(self._unclaimed.values()) for kernel in list(kernels)]

    def unclaimed_count(self, name: str | None = None) -> int:
        if name is not None:
            return len(self._unclaimed.get(name, ()))
        return sum(len(kernels) for kernels in list(self._unclaimed.values()))

    def ready_count(self, name: str) -> int:
        return sum(kernel.is_ready for kernel in self._unclaimed.get(name, ()))

    def names(self) -> list[str]:
        """Kernel names that have or had unclaimed kernels."""
        return list(self._unclaimed)

    def claimed(self) -> list[PooledKernel]:
        return list(self._claimed)

    def warming(self) -> list[PooledKernel]:
        return list(self._warming)

    def is_warming(self, kernel: PooledKernel) -> bool:
        return kernel in self._warming

    def warming_count(self) -> int:
        return len(self._warming)

    def settling_count(self, name: str | None = None) -> int:
        settling = list(self._settling)  # a metrics thread asks too
        return len(settling) if name is None else sum(k.name == name for k in settling)

    def held(self, name: str, *, settling: bool) -> int:
        """Kernels that count toward pool ``name``'s size: unclaimed and claimed ones, and
        settling ones if ``settling``."""
        taken = list(self._claimed) + (list(self._settling) if settling else [])
        return len(self._unclaimed.get(name, ())) + sum(k.name == name for k in taken)

    def overlapping(self, name: str) -> bool:
        """Whether visits to pool ``name`` overlap: two or more of its handed-out kernels
        settle at once (see ``Filling._pressed``)."""
        return self.settling_count(name) >= 2

    def views(self) -> Iterator[tuple[PooledKernel, str]]:
        """Each kernel a status shows, with its state: warming, ready or claimed."""
        for kernel in self.all_unclaimed():
            yield kernel, "ready" if kernel.is_ready else "warming"
        for kernel in self.claimed():
            yield kernel, "claimed"
