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
import signal
import subprocess
import threading
from typing import Any

import zmq
import zmq.asyncio

from .. import keeper


class Leftovers:
    """The pool's processes not handed out yet, their connection files, and its zmq context."""

    def __init__(self) -> None:
        self._processes: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
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
        """A pooled process just launched (only ``Popen``s of this machine are recorded)."""
        if isinstance(process, subprocess.Popen):
            self._processes[process.pid] = (process, connection_file)

    def forget(self, pid: int | None) -> None:
        """The process is handed out (its new owner sees it out) or was shut down."""
        if pid is not None:
            self._processes.pop(pid, None)

    def close(self) -> None:
        """SIGKILL and reap every recorded process still running, remove its connection
        file, close the context's sockets. Called from the garbage collector or at exit:
        nothing here waits on anything but a killed child."""
        processes, self._processes = list(self._processes.values()), {}
        for process, connection_file in processes:
            if process.poll() is None:
                keeper.signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            with contextlib.suppress(OSError):
                os.remove(connection_file)
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
