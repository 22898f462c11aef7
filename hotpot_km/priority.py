"""CPU priority of pooled kernel processes: refills yield the CPU to kernels in use.

A kernel that warms up while nobody waits for it runs under Linux's ``SCHED_IDLE``
policy: it gets a core only when nothing else wants it, so a refill does not slow the
page being served. The policy is per thread (``/proc/<pid>/task/*``); threads a kernel
creates inherit it. Before a kernel is handed out, every thread goes back to
``SCHED_OTHER`` (the kernel's nice value is kept).

An unprivileged process can always lower a policy but can only leave ``SCHED_IDLE``
when its ``RLIMIT_NICE`` allows nice 0 (or with ``CAP_SYS_NICE``); :func:`can_restore`
finds out once, on a throwaway thread of this process (kernels inherit its limits). If
it can't, kernels keep normal priority: a kernel that could not be brought back must
never be handed out.

:meth:`ProcessPriority.stop` and :meth:`~ProcessPriority.cont` go further: the pool stops
a warm-up outright while a handed-out kernel settles (see :mod:`hotpot_km.pool.pausing`).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Iterable

from . import keeper

_IDLE: int | None = getattr(os, "SCHED_IDLE", None)
_NORMAL: int | None = getattr(os, "SCHED_OTHER", None)
#: Whether processes can be stopped and continued here (POSIX).
_STOPPABLE = hasattr(signal, "SIGSTOP") and hasattr(os, "killpg")


@functools.cache
def can_restore() -> bool:
    """Whether threads moved to ``SCHED_IDLE`` can be moved back (probed once, blocking)."""
    if _IDLE is None or _NORMAL is None or not hasattr(os, "sched_setscheduler"):
        return False
    outcome: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, _IDLE, os.sched_param(0))
            os.sched_setscheduler(0, _NORMAL, os.sched_param(0))
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, name="hotpot_km priority probe", daemon=True)
    thread.start()
    thread.join()
    return bool(outcome and outcome[0])


def threads(pid: int) -> list[int]:
    """Thread ids of a process and of its descendants (a kernelspec may start the kernel
    through a wrapper process; children inherit the policy). Reads ``/proc``: call it off
    the event loop."""
    found: list[int] = []
    pending = [pid]
    while pending:
        process = pending.pop()
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{process}/task")]
        except OSError:
            continue
        found += tids
        for tid in tids:
            try:
                with open(f"/proc/{process}/task/{tid}/children") as children:
                    pending += [int(child) for child in children.read().split()]
            except OSError:
                continue
    return found


def _set(tids: Iterable[int], policy: int | None) -> list[int]:
    done = []
    if policy is None:
        return done
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            done.append(tid)
        except OSError:  # the thread ended, or not ours to change
            continue
    return done


def lower(tids: Iterable[int]) -> list[int]:
    """Move threads to ``SCHED_IDLE``; returns those moved. Only system calls."""
    return _set(tids, _IDLE)


def lower_process(pid: int) -> list[int]:
    """Every thread of ``pid`` and its descendants to ``SCHED_IDLE`` (off the event loop)."""
    return lower(threads(pid))


def restore(tids: Iterable[int]) -> None:
    """Threads back to ``SCHED_OTHER``. Only system calls."""
    _set(tids, _NORMAL)


def restore_process(pid: int) -> None:
    """Every thread of ``pid`` and its descendants back to ``SCHED_OTHER`` (off the event loop)."""
    restore(threads(pid))


class ProcessPriority:
    """The CPU priority of one local kernel process (its threads, and its children's).

    The pool decides *when* a kernel yields (a warm-up nobody waits for) and when it is
    back to normal (claimed, awaited, handed out or shut down); this keeps track of which
    threads were moved, so a handout restores them with system calls only.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.low_threads: list[int] | None = None  # None: normal priority

    @property
    def lowered(self) -> bool:
        return self.low_threads is not None

    def lower(self) -> None:
        """The main thread to ``SCHED_IDLE``, right after launch: threads it starts later
        inherit it."""
        self.low_threads = lower([self.pid])

    async def lower_all(self) -> None:
        """Find every thread of a lowered process (libraries start their own while
        importing), so that :meth:`restore` needs no lookup."""
        import asyncio

        if self.low_threads is None:
            return
        threads = await asyncio.to_thread(lower_process, self.pid)
        if self.low_threads is None:  # restored meanwhile
            await asyncio.to_thread(restore_process, self.pid)
        else:
            self.low_threads = threads

    def restore(self) -> bool:
        """Back to normal priority the threads known to be low; ``True`` if the process
        was lowered (threads it started since may need :func:`restore_process`)."""
        threads, self.low_threads = self.low_threads, None
        if threads is None:
            return False
        restore(threads)
        return True

    def stop(self) -> bool:
        """Stop the process and its group (SIGSTOP); ``False`` if it can't be stopped."""
        return _STOPPABLE and keeper.signal_group(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """Let a stopped process and its group go on (SIGCONT)."""
        if _STOPPABLE:
            keeper.signal_group(self.pid, signal.SIGCONT)
