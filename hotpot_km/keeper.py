"""No kernel outlives its host: process groups registered here die with the host.

A host registers the process group of every kernel process it starts
(:func:`register`) and unregisters it once the process is gone (:func:`unregister`).
jupyter_client starts each local kernel in a session of its own, so the group holds the
kernel and whatever it or its kernelspec's wrapper started, whether or not the kernel
watches its parent.

Two things kill the groups still registered when the host goes away:

* at a normal interpreter exit, an ``atexit`` hook, in the host itself;
* if the host is killed (SIGKILL, OOM killer, a crash), the *keeper*: a small process,
  one per host process, started on first use, that reads registrations from a pipe. The
  host holds the only write end, so the system closes it when the host dies, however it
  dies; the keeper then SIGKILLs every group still registered and exits. It is nobody's
  child (it detaches at start), so the host's children are its kernels only.

A process exists before its group can be registered: between ``fork`` and the return of
``Popen``, a signal can end the host (Python's own SIGINT handler, which jupyter_server
keeps when it has no terminal, raises ``KeyboardInterrupt`` wherever the loop is), and so
can a SIGKILL. So a launch runs inside :func:`launching`, which names a string only that
kernel's command line carries (its connection file, with a fresh id). If the host goes
away before the launch step finished, whatever process carries that string is killed too
(found through ``/proc``). A launch interrupted part-way (``KeyboardInterrupt``,
``SystemExit``, cancellation) keeps its mark until the host exits; one that failed with an
error started no process, and its mark goes (a kernelspec failing with back-off for days
must not pile marks up).

Process ids are reused: the keeper records the start time of each group's leader when it
is registered, and leaves a group alone if a process with that id now has another start
time. A group whose leader is gone is killed: Linux does not hand out an id while a
process group of that id has members. Registering costs one small pipe write; nothing
happens at hand-out, since a handed-out kernel keeps its registration.

This file is also the keeper's program: ``python -I -S keeper.py`` reads its standard
input (standard library only, nothing imported from the package).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading

TYPE_CHECKING = False  # not ``typing``'s: the keeper process starts faster without it
if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Keeper",
    "Launch",
    "ensure_running",
    "kill_all",
    "launching",
    "register",
    "registered",
    "signal_group",
    "unregister",
]


class Launch:
    """A launch under way (see :func:`launching`). Interrupted part-way, its process may
    run unregistered, so the mark stays until the host exits; an error means no process."""

    def __init__(self, keeper: Keeper, code: str) -> None:
        self._keeper = keeper
        self._code = code if _SUPPORTED else ""

    def __enter__(self) -> None:
        if self._code:
            self._keeper._mark(self._code)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._code and (kind is None or issubclass(kind, Exception)):
            self._keeper._unmark(self._code)


class Keeper:
    """The host side: the registered groups and the pipe to the keeper process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._launches: set[str] = set()  # hex of the marks of launches under way
        self._fd: int | None = None  # write end of the pipe to the keeper
        self._owner: int | None = None  # pid of the process that started it
        self._failed = not _SUPPORTED

    @property
    def running(self) -> bool:
        return self._fd is not None and self._owner == os.getpid()

    def start(self) -> None:
        """Start the keeper process if this process has none (blocks for ~20 ms the first time)."""
        with self._lock:
            if not self.running:
                self._start_locked()

    def register(self, group: int) -> None:
        with self._lock:
            if _SUPPORTED and group not in self._groups:
                self._groups.add(group)
                self._send(f"+{group}\n")

    def unregister(self, group: int) -> None:
        with self._lock:
            if group in self._groups:
                self._groups.discard(group)
                self._send(f"-{group}\n")

    def launching(self, mark: str) -> Launch:
        return Launch(self, mark.encode("utf-8", "surrogateescape").hex() if mark else "")

    def _mark(self, code: str) -> None:
        with self._lock:
            self._launches.add(code)
            self._send(f"?{code}\n")

    def _unmark(self, code: str) -> None:
        with self._lock:
            self._launches.discard(code)
            self._send(f"!{code}\n")

    def kill_all(self) -> None:
        """SIGKILL every group still registered (the host is exiting without stopping them)."""
        with self._lock:
            groups, self._groups = self._groups, set()
            launches, self._launches = self._launches, set()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        _kill_marked({bytes.fromhex(code) for code in launches})

    def _send(self, line: str) -> None:
        if not self.running:
            self._start_locked()  # also sends every registered group and mark
            return
        assert self._fd is not None
        try:
            os.write(self._fd, line.encode())
        except OSError:  # the keeper died: a new one gets the whole set
            self._start_locked()

    def _start_locked(self) -> None:
        if self._failed:
            return
        import subprocess  # here, not at the top: the keeper process starts faster without it

        self._forget()
        read, write = os.pipe()  # both ends close on exec: only the keeper gets ``read``
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,  # terminal signals to the host's group don't reach it
            )
            try:
                status = launcher.wait(30)  # it forks the keeper and exits at once
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
                raise
            if status != 0:
                raise OSError(f"the keeper's launcher exited with {status}")
            lines = [f"+{g}\n" for g in sorted(self._groups)]
            lines += [f"?{code}\n" for code in sorted(self._launches)]
            if lines:
                os.write(write, "".join(lines).encode())
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            os.close(write)
            self._failed = True
            logging.getLogger(__name__).warning(
                "hotpot_km: no keeper process (%s); kernels that do not watch their parent "
                "may outlive this process if it is killed",
                error,
            )
            return
        finally:
            os.close(read)
        self._fd, self._owner = write, os.getpid()

    def _forget(self) -> None:
        """Drop the pipe (in a forked child: the parent's keeper is not ours)."""
        fd, self._fd, self._owner = self._fd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._groups = set()
        self._launches = set()
        self._forget()
        self._failed = not _SUPPORTED


_SUPPORTED = hasattr(os, "killpg")  # POSIX: kernels run in process groups of their own
_KEEPER = Keeper()


def register(group: int) -> None:
    """Kill process group ``group`` if this process exits or dies before :func:`unregister`."""
    _KEEPER.register(group)


def unregister(group: int) -> None:
    """The group's process is gone (reaped): forget it."""
    _KEEPER.unregister(group)


def launching(mark: str) -> Launch:
    """Around a kernel's launch: if this process exits or dies before the block ends, kill
    the processes whose command line contains ``mark`` (make it unique, e.g. the
    connection file). Register the process's group inside the block."""
    return _KEEPER.launching(mark)


def registered() -> frozenset[int]:
    """The process groups registered now (what the keeper would kill)."""
    with _KEEPER._lock:
        return frozenset(_KEEPER._groups)


def kill_all() -> None:
    """SIGKILL every registered group now (a host giving up on an orderly stop)."""
    _KEEPER.kill_all()


async def ensure_running() -> None:
    """Start the keeper off the event loop, before the first kernel process is launched."""
    if not _KEEPER.running and not _KEEPER._failed:
        import asyncio

        await asyncio.to_thread(_KEEPER.start)


atexit.register(_KEEPER.kill_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_KEEPER._after_fork_in_child)


# -- the keeper process ------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def signal_group(pid: int, signum: int) -> bool:
    """Signal ``pid``'s process group if it leads one (as a launched kernel does, with the
    processes of a kernelspec's wrapper), else ``pid`` alone; ``False`` if that failed."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        return False
    return True


def _kill_marked(marks: set[bytes]) -> None:
    """SIGKILL the processes (and the groups they lead) whose command line contains a mark.

    Scanned three times over 0.2 s: ``Popen`` returns as soon as the child's exec closed its
    descriptors, a moment before the kernel gives the new program its command line.
    """
    if not marks:
        return
    import time

    for pause in (0.0, 0.02, 0.2):
        time.sleep(pause)
        for pid in _carriers(marks):
            signal_group(pid, signal.SIGKILL)


def _carriers(marks: set[bytes]) -> list[int]:
    """The other processes whose command line contains one of ``marks`` (none without /proc)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append(int(entry))
    return found


def _serve(fd: int) -> None:
    """Read ``+group`` / ``-group`` and ``?mark`` / ``!mark`` lines until the host's end
    closes, then kill what is left."""
    groups: dict[int, str | None] = {}
    launches: set[bytes] = set()
    pending = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                group = int(line[1:])
                groups[group] = _start_time(group)
            elif line[:1] == b"-":
                groups.pop(int(line[1:]), None)
            elif line[:1] == b"?":
                launches.add(bytes.fromhex(line[1:].decode()))
            elif line[:1] == b"!":
                launches.discard(bytes.fromhex(line[1:].decode()))
    # Twice: a process that left one registered group for a group of its own between the
    # two kills (a forked kernel's setsid()) is caught by the second pass.
    for _ in range(2):
        for group, started in groups.items():
            now = _start_time(group)
            if now is not None and now != started:
                continue  # that id is another process now
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
    _kill_marked(launches)


if __name__ == "__main__":
    if os.fork():
        os._exit(0)  # the host reaps the launcher; the keeper is reparented
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _serve(0)
