"""What a pool owns that must not outlive a host manager dropped without ``shutdown_all()``.

A host that drops its manager (or whose event loop is closed under it) never awaits
:meth:`~hotpot_km.pool.KernelPool.aclose`: the pooled processes would run on, and the
garbage collector would meet their ``Popen``, sockets and zmq context, each with a
``ResourceWarning``. :class:`Leftovers` records those resources and nothing that refers back
to the pool or the host, so a ``weakref.finalize`` on the host can hold it and close them when
the host is collected (or the interpreter exits), synchronously and without blocking.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket as _socket
import subprocess
import threading
from typing import Any

import zmq
import zmq.asyncio

from .. import keeper


class Leftovers:
    """The pool's processes not handed out yet, their connection files, its zmq context, and
    the manager's fork templates."""

    def __init__(self) -> None:
        self._processes: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
        # forked kernels: a pidfd of our own (not the ForkedProcess, which refers back to
        # the host through its template) and the connection file
        self._forked: dict[int, tuple[int, str]] = {}
        self._templates: dict[int, tuple[subprocess.Popen[bytes], _socket.socket]] = {}
        self._sockets: list[zmq.Socket[Any]] = []  # held: the collector must not get them first
        self._context: zmq.asyncio.Context | None = None

    def new_context(self) -> zmq.asyncio.Context:
        """The pool's zmq context; the sockets made from it are recorded."""
        self._context = _RecordingContext()
        self._context.record = self._record
        return self._context

    def _record(self, socket: zmq.Socket[Any]) -> None:
        self._sockets = [s for s in self._sockets if not s.closed]
        self._sockets.append(socket)

    def add(self, process: object, connection_file: str) -> None:
        """A pooled process just launched or forked (only processes of this machine are
        recorded: a ``Popen``, or a forked kernel's ``ForkedProcess``)."""
        if isinstance(process, subprocess.Popen):
            self._processes[process.pid] = (process, connection_file)
        elif _is_forked(process) and process.pidfd >= 0:  # type: ignore[attr-defined]
            pidfd = os.dup(process.pidfd)  # type: ignore[attr-defined]
            self._forked[process.pid] = (pidfd, connection_file)  # type: ignore[attr-defined]

    def add_template(self, process: subprocess.Popen[bytes], sock: _socket.socket) -> None:
        """A fork template just started, and the host's end of its socket."""
        self._templates[process.pid] = (process, sock)

    def forget_template(self, pid: int | None) -> None:
        """The template exited (and was reaped) or was stopped."""
        if pid is not None:
            self._templates.pop(pid, None)

    def forget(self, pid: int | None) -> None:
        """The process is handed out (its new owner sees it out) or was shut down."""
        if pid is not None:
            self._processes.pop(pid, None)
            forked = self._forked.pop(pid, None)
            if forked is not None:
                os.close(forked[0])

    def close(self) -> None:
        """SIGKILL and reap every recorded process still running, remove its connection
        file, close the context's sockets. Called from the garbage collector or at exit:
        nothing here waits on anything but a killed child."""
        forked, self._forked = list(self._forked.items()), {}
        for pid, (pidfd, connection_file) in forked:
            # not our child (its template reaps it): killed, then its pidfd turns readable
            if not select.select([pidfd], [], [], 0)[0]:
                keeper.signal_group(pid, signal.SIGKILL)
                select.select([pidfd], [], [], 5)
            os.close(pidfd)
            with contextlib.suppress(OSError):
                os.remove(connection_file)
        processes, self._processes = list(self._processes.values()), {}
        for process, connection_file in processes:
            if process.poll() is None:
                keeper.signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            with contextlib.suppress(OSError):
                os.remove(connection_file)
        templates, self._templates = list(self._templates.values()), {}
        for template, sock in templates:  # after their pooled kernels: killed, then reaped
            sock.close()
            if template.poll() is None:
                keeper.signal_group(template.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    template.wait(timeout=5)
        sockets, self._sockets = self._sockets, []
        for socket in sockets:  # closing does not block (linger 0)
            with contextlib.suppress(zmq.ZMQError):
                socket.close(linger=0)
        context, self._context = self._context, None
        if context is not None and not context.closed:
            # term() waits for every socket of the context, even one a host thread still
            # holds: a thread of its own does that, never the collector
            threading.Thread(target=context.term, name="hotpot_km leftovers", daemon=True).start()


class _RecordingContext(zmq.asyncio.Context):
    """A zmq context that gives each socket it makes to ``record``."""

    record: Any = None

    def socket(self, *args: Any, **kwargs: Any) -> Any:
        socket = super().socket(*args, **kwargs)
        if self.record is not None:
            self.record(socket)
        return socket


def _is_forked(process: object) -> bool:
    """Whether ``process`` is a forked kernel (``hotpot_km.fork.ForkedProcess``), without
    importing fork mode here."""
    return type(process).__name__ == "ForkedProcess" and hasattr(process, "pidfd")
