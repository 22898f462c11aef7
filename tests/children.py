"""Counting a host's child processes the way process monitoring sees them, from ``/proc``.

A kernel process is a direct child of the manager that launched it. Between ``fork``
and ``exec`` it still carries the host's command line, so it is counted as whatever
child it is, not by what it will become; zombies (exited, not yet reaped) are not
counted. Used by the tests and by ``benchmarks/stress_max_kernels.py`` (no pytest here).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Child:
    pid: int
    state: str  # /proc/<pid>/stat's state letter: R, S, D, T, ...
    cmdline: str

    def describe(self, host_cmdline: str | None = None) -> str:
        what = "forked, not exec'd yet" if self.cmdline == host_cmdline else self.cmdline[-90:]
        return f"{self.pid} [{self.state}] {what}"


def cmdline_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def child_pids(pid: int) -> list[str]:
    """Children of ``pid`` (of any of its threads), zombies included: one cheap read per thread."""
    found: list[str] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += f.read().split()
        except OSError:
            continue
    return found


#: The command line of a fork template (``hotpot_km.fork``): its forked kernels are the
#: host's kernels too, counted under ``max_kernels``; the template itself is not a kernel.
TEMPLATE_MARK = "hotpot_km/fork/template.py"
_templates: dict[int, dict[int, bool]] = {}  # host -> its live children -> is a template


def _is_template(pid: int, host: int, known: dict[int, bool]) -> bool:
    """Whether ``pid`` runs the template program. Remembered only once the child has exec'd:
    between fork and exec a template still carries its host's command line."""
    if pid in known:
        return known[pid]
    cmdline = cmdline_of(pid)
    answer = TEMPLATE_MARK in cmdline
    if answer or (cmdline and cmdline != cmdline_of(host)):
        known[pid] = answer
    return answer


def kernel_pids(pid: int) -> list[str]:
    """``child_pids(pid)``, fork templates replaced by their children (the kernels they forked)."""
    children = child_pids(pid)
    # only the children seen now are remembered: a pid used again is looked at afresh
    previous = _templates.get(pid, {})
    known = _templates[pid] = {int(c): previous[int(c)] for c in children if int(c) in previous}
    found = []
    for child in children:
        if _is_template(int(child), pid, known):
            found += child_pids(int(child))
        else:
            found.append(child)
    return found


def live_children(pid: int, with_cmdline: bool = False) -> list[Child]:
    """Children of ``pid`` (of any of its threads) that have not exited, its fork templates'
    children instead of the templates; zombies excluded."""
    found = []
    for child in kernel_pids(pid):
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state in ("Z", "X"):
            continue
        cmd = cmdline_of(int(child)) if with_cmdline else ""
        found.append(Child(int(child), state, cmd))
    return found


class ChildSampler:
    """Samples ``live_children(pid)`` in a thread every ``interval`` s; keeps the highest
    count and the children that made it up. A sample only counts the children lists (one
    read per thread of the host) unless they hold more than the highest count so far."""

    def __init__(self, pid: int, interval: float = 0.001) -> None:
        self.pid = pid
        self.host_cmdline = cmdline_of(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.max = 0
        self.at_max: list[str] = []
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples += 1
            if len(kernel_pids(self.pid)) <= self.max:
                time.sleep(self._interval)
                continue
            children = live_children(self.pid)
            if len(children) > self.max:
                # read the command lines only now: what the children are, for the report
                described = [
                    Child(c.pid, c.state, cmdline_of(c.pid)).describe(self.host_cmdline)
                    for c in children
                ]
                self.max = len(children)
                self.at_max = described
            time.sleep(self._interval)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
