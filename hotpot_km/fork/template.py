"""The template process of fork mode: imports once, then forks kernels on request.

hotpot_km runs this file with the kernelspec's own interpreter and interpreter flags::

    <python> [flags] template.py <socket fd> <room>

It runs wherever the kernel runs, so it uses only the standard library and
ipykernel, never hotpot_km. It imports ipykernel, IPython, the pool's
``python_imports`` and then the modules the host found imported at the top of
the kernel name's init files the way a launched kernel would, refuses to serve (and exits)
if that left threads, an event loop, a zmq context or a CUDA driver behind,
freezes the heap so children share its pages, then waits for fork requests from
the host on its socket. A forked child becomes an ordinary ipykernel, as
``<python> [flags] -m ipykernel_launcher <args>`` started in the request's cwd
and env would be (see :func:`become_kernel`). ``<room>`` is padding that the
child overwrites with its own command line, so ``ps`` shows what it is.

Protocol, both ways: a 4-byte big-endian length, then a JSON object. The
``forked`` reply carries two descriptors (SCM_RIGHTS): the child's pidfd, so the
host can wait for and signal a process it is not the parent of without pid-reuse
races, and a socket private to the child, over which the host sends its argv,
cwd and env and the child answers ``started`` once its sockets are bound.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct(">I")
#: The matplotlib backend ipykernel sets before any user code runs (``init_gui_pylab``).
MPL_INLINE = "module://matplotlib_inline.backend_inline"
STATUS_UNKNOWN = 1  # exit status reported for a child whose status could not be read


def encode(message: dict[str, Any]) -> bytes:
    """One frame: length, then JSON (ASCII-escaped, so any ``str`` round-trips)."""
    data = json.dumps(message).encode("ascii")
    return HEADER.pack(len(data)) + data


class Framer:
    """Splits a byte stream into messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            out.append(json.loads(bytes(self.buffer[HEADER.size : end])))
            del self.buffer[:end]
        return out


def kernel_args(argv: list[str], prefix: list[str]) -> list[str] | None:
    """The ipykernel arguments of ``argv`` if it is ``<prefix> -m ipykernel_launcher …``."""
    n = len(prefix)
    if argv[:n] != prefix or argv[n : n + 2] != ["-m", "ipykernel_launcher"]:
        return None
    return argv[n + 2 :]


class Birth:
    """What a forked child needs to become a kernel; the rest comes from the host."""

    def __init__(self, channel: socket.socket, template: Template) -> None:
        self.channel = channel  # private to this child and the host
        self.prefix = template.prefix
        self.launcher = template.launcher
        self.host = template.host
        self.template = template


class Host:
    """The process that started the template (the kernels' owner), as a pidfd."""

    def __init__(self) -> None:
        self.pid = os.getppid()
        self.pidfd = os.pidfd_open(self.pid)
        if self.pid == 1 or os.getppid() != self.pid:  # it exited before we held on to it
            os._exit(0)


class Template:
    """Imports, checks, then forks on request until the host stops or goes away.

    Requests carry no data: a child's argv, cwd and env come from the host over a
    socket private to that child, so nothing of one request stays in the
    template's memory for the next child to find.
    """

    def __init__(self, sock: socket.socket, path0: str | None) -> None:
        self.sock = sock
        self.path0 = path0
        self.host = Host()
        self.prefix: list[str] = []  # interpreter and flags, as in the kernelspec's argv
        self.launcher = ""
        # what the imports did to os.environ (debugpy sets PYDEVD_USE_FRAME_EVAL, ...)
        self.env_changes: dict[str, str] = {}
        self.env_removed: list[str] = []
        self.env_before: set[str] = set()
        self.kernel_files: set[str | None] = set()  # files of the modules a kernel imports itself
        self.children: dict[int, int] = {}  # pid -> pidfd, until reaped
        self.framer = Framer()
        self.selector: selectors.BaseSelector | None = None

    # -- start-up ------------------------------------------------------------------------------

    def receive(self) -> dict[str, Any]:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                os._exit(0)
            messages = self.framer.feed(data)
            if messages:
                return messages[0]

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = encode(message)
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                data = data[sent:]
            self.sock.sendall(data)
        except OSError:  # the host is gone
            self.host_gone()
            os._exit(0)

    def prepare(self, imports: list[str], hoisted: list[Any]) -> tuple[str, str] | None:
        """Import what every kernel needs; return (stage, why) if forking would be unsafe.

        ``hoisted``: the init files' imports, done after ``python_imports`` as a stage of
        their own (``"hoisted"``), announced to the host before it begins, so that the host
        knows a failure there (or a crash, or a hang) is theirs and can start a template
        without them.
        """
        # Compared with the env the template was launched with, so that what the interpreter
        # set while starting (PEP 538 sets LC_CTYPE in a C locale) counts too: a launched
        # kernel's interpreter does the same.
        before = launched_environ()
        try:
            reason = self._prepare(imports)
            if reason is not None:
                return "imports", reason
            if hoisted:
                self.send({"op": "stage", "stage": "hoisted"})
                reason = import_hoisted(hoisted)
                if reason is not None:
                    return "hoisted", reason
            return None
        finally:
            self.env_changes = {k: v for k, v in os.environ.items() if before.get(k) != v}
            self.env_removed = [k for k in before if k not in os.environ]
            self.env_before = set(before)

    def _prepare(self, imports: list[str]) -> str | None:
        if not os.environ.get("MPLBACKEND"):
            os.environ["MPLBACKEND"] = MPL_INLINE  # before user imports, as in a kernel
        name = "ipykernel"
        try:
            import ctypes  # noqa: F401  (the children rewrite their command line with it)
            import importlib
            import importlib.util

            spec = importlib.util.find_spec("ipykernel_launcher")
            if spec is None or not spec.origin:
                return "ipykernel is not installed for this interpreter"
            self.launcher = spec.origin
            # ipykernel_launcher drops the cwd that ``-m`` put first, then imports ipykernel
            if self.path0 is not None and sys.path[:1] == [self.path0]:
                del sys.path[0]
            import ipykernel.kernelapp  # noqa: F401
            import IPython  # noqa: F401

            with quiet():  # a kernel's own output goes to its clients, not to the host's log
                for module in kernel_modules():  # what a kernel imports while it starts
                    try:
                        importlib.import_module(module)
                    except Exception:  # an alias or a lazily made module: not importable
                        continue
            # a launched kernel lists these as its own (the debugger skips their frames)
            self.kernel_files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
            add_cwd_to_path()  # what IPython's init_path does before any user code
            for name in imports:
                importlib.import_module(name)
        except BaseException as error:
            return f"importing {name!r} failed: {type(error).__name__}: {error}"
        return unsafe()

    # -- serving -------------------------------------------------------------------------------

    def serve(self) -> Birth | None:
        """Fork on request; return a :class:`Birth` in a forked child, ``None`` to exit."""
        self.selector = selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, None)
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    try:
                        data = self.sock.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        self.host_gone()
                        return None
                    for message in self.framer.feed(data):
                        if message["op"] == "stop":
                            return None
                        birth = self.fork(message["id"])
                        if birth is not None:
                            return birth
                else:
                    self.reap(key.data)

    def fork(self, request: int) -> Birth | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # what was allocated since the last fork stays shared too
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                self.close_in_child()
                return Birth(theirs, self)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        theirs.close()
        pidfd = os.pidfd_open(pid)
        self.children[pid] = pidfd
        assert self.selector is not None
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        self.send({"op": "forked", "id": request, "pid": pid}, [pidfd, ours.fileno()])
        ours.close()
        return None

    def reap(self, pid: int) -> None:
        assert self.selector is not None
        if pid not in self.children:
            return
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return
        pidfd = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        self.send({"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})

    def host_gone(self) -> None:
        """The host died (or closed its end): no kernel it forked may outlive it."""
        for pid, pidfd in list(self.children.items()):
            try:  # the group: the child is not reaped, so no one else can have its pgid
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass

    def close_in_child(self) -> None:
        """Drop the template's own descriptors; the child keeps its channel and the host's pidfd."""
        if self.selector is not None:
            self.selector.close()
        self.sock.close()
        for pidfd in self.children.values():
            os.close(pidfd)
        self.children.clear()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send what is written to fds 1 and 2 to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def kernel_modules() -> list[str]:
    """The modules a kernel imports while it initializes, in import order.

    Found by initializing a throw-away kernel in a throw-away fork (random local
    ports, output to /dev/null, never started), so the template can import them
    once for all its children instead of each child importing them again.
    """
    import tempfile

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            before = set(sys.modules)
            directory = tempfile.mkdtemp(prefix="hotpot_km-template-")
            from ipykernel.kernelapp import IPKernelApp

            app = IPKernelApp.instance()
            app.initialize(
                ["-f", os.path.join(directory, "probe.json"), f"--parent_handle={os.getppid()}"]
            )
            # what a first execution imports (the pool's warm-up is one)
            app.shell.run_cell("pass", store_history=False, silent=True)
            names = [name for name in sys.modules if name not in before]
            with os.fdopen(write, "w") as out:
                json.dump(names, out)
            for name in os.listdir(directory):
                os.remove(os.path.join(directory, name))
            os.rmdir(directory)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as found:
        data = found.read()
    os.waitpid(pid, 0)
    try:
        return [str(name) for name in json.loads(data)]
    except ValueError:
        return []


def pack_module_files() -> None:
    """Give every module's ``__file__`` a fresh copy, allocated side by side.

    A starting kernel reads the ``__file__`` of every loaded module (ipykernel lists
    its own modules); left where each import put it, every string read would cost a
    copied page in every child.
    """
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if type(path) is str:
            module.__file__ = (path + ".")[:-1]


def add_cwd_to_path() -> None:
    """IPython's ``InteractiveShellApp.init_path``: ``''`` before the first site-packages."""
    if "" in sys.path or getattr(sys.flags, "safe_path", False):
        return
    index = 0
    for i, path in enumerate(sys.path):
        if os.path.basename(path) in ("site-packages", "dist-packages"):
            index = i
            break
    sys.path.insert(index, "")


def import_hoisted(hoisted: list[Any]) -> str | None:
    """Import the init files' modules (``[module, names]`` pairs, data from the host): as
    ``import module``, or as ``from module import names`` without binding anything, which
    imports ``module.name`` where that is a submodule. Return why forking would then be
    unsafe, if it would."""
    import importlib

    statement = ""
    try:
        for module, names in hoisted:
            if names:
                statement = f"from {module} import {', '.join(names)}"
                __import__(str(module), fromlist=[str(n) for n in names])
            else:
                statement = f"import {module}"
                importlib.import_module(str(module))
    except BaseException as error:
        return f"{statement!r} failed: {type(error).__name__}: {error}"
    return unsafe()


def unsafe() -> str | None:
    """Why this process must not be forked, or ``None``.

    One throw-away fork first: libraries that stop their own threads at fork time
    (OpenBLAS's thread pool, for one) do so in their at-fork handlers, and what is
    still running afterwards would be missing from every child.
    """
    if threading.active_count() > 1:
        names = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"the imports started Python threads ({', '.join(names)})"
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    tasks = sorted(os.listdir("/proc/self/task"))
    if len(tasks) > 1:
        names = []
        for tid in tasks:
            if int(tid) != os.getpid():
                try:
                    with open(f"/proc/self/task/{tid}/comm") as f:
                        names.append(f.read().strip())
                except OSError:
                    names.append(tid)
        return f"the imports started {len(names)} native thread(s) ({', '.join(names)})"
    with open("/proc/self/maps") as f:
        maps = f.read()
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    if "libcuda.so" in maps or "/dev/nvidia" in maps or any("/dev/nvidia" in x for x in links):
        return "a CUDA driver is loaded, and a CUDA context does not survive fork"
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        policy = getattr(asyncio.events, "_event_loop_policy", None)
        if getattr(getattr(policy, "_local", None), "_loop", None) is not None:
            return "the imports created an asyncio event loop"
    zmq = sys.modules.get("zmq")
    if zmq is not None and getattr(zmq.Context, "_instance", None) is not None:
        return "the imports created a zmq context"
    return None


def become_kernel(birth: Birth) -> None:
    """Turn this forked child into the kernel the host asks for, as launched from ``argv``."""
    channel = birth.channel
    framer = Framer()
    messages: list[dict[str, Any]] = []
    while not messages:
        data = channel.recv(1 << 20)
        if not data:  # the host gave up on this start
            os._exit(1)
        messages = framer.feed(data)
    request = messages[0]
    argv: list[str] = request["argv"]
    args = kernel_args(argv, birth.prefix)
    os.setsid()  # its own session and process group, like jupyter_client's launch
    try:
        if args is None:
            raise OSError(errno.EINVAL, "not this template's interpreter")
        os.chdir(request["cwd"])
    except OSError as error:  # what Popen would raise in the host, before any kernel ran
        channel.sendall(encode({"op": "failed", "errno": error.errno or errno.EINVAL}))
        os._exit(1)
    read, write = os.pipe()  # stdin: an empty pipe, closed at the other end, as launched
    os.dup2(read, 0)
    for fd in (read, write):
        if fd != 0:
            os.close(fd)
    os.environ.clear()
    os.environ.update(env_after_imports(request["env"], birth.template))
    if hasattr(time, "tzset"):
        time.tzset()
    gc.enable()
    sys.argv = [birth.launcher, *args]
    sys.orig_argv = list(argv)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # numpy's global generator was seeded once, in the template
    set_command_line(argv)

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    # ipykernel's defaults for these come from the env it was imported in, the template's
    # (traitlets keeps them from class creation); the kernel's own env decides, and its
    # command line still overrides (``--IPKernelApp.parent_handle=0``)
    app.parent_handle = int(os.environ.get("JPY_PARENT_PID") or 0)
    app.interrupt = int(os.environ.get("JPY_INTERRUPT_EVENT") or 0)
    app.initialize(args)
    # ipykernel lists the modules loaded when it starts as its own, for the debugger to skip;
    # python_imports are loaded already here, but not yet in a launched kernel
    files = getattr(app.kernel, "_kernel_modules", None)
    if isinstance(files, list):
        files[:] = [f for f in files if f in birth.template.kernel_files]
    watch_host(app, birth.host)
    try:
        channel.sendall(encode({"op": "started"}))  # sockets are bound: clients can connect
    except OSError:
        pass
    channel.close()
    app.start()


def launched_environ() -> dict[str, str]:
    """The environment this process was started with (``/proc/self/environ``), before the
    interpreter changed anything; ``os.environ`` where that can't be read."""
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return dict(os.environ)
    items = (item.split(b"=", 1) for item in block.split(b"\0") if b"=" in item)
    return {os.fsdecode(k): os.fsdecode(v) for k, v in items}


def env_after_imports(env: dict[str, str], template: Template) -> dict[str, str]:
    """``env`` as the imports done in the template would have left it in a launched kernel.

    As for a handout: a value the imports overwrote is overwritten again, one they
    only added gives way to the request's own, one they removed is removed.
    """
    env = dict(env)
    for key, value in template.env_changes.items():
        if key in template.env_before or key not in env:
            env[key] = value
    for key in template.env_removed:
        env.pop(key, None)
    return env


def watch_host(app: Any, host: Host) -> None:
    """ipykernel's parent poller, with the host (``JPY_PARENT_PID``) as the parent.

    A launched kernel exits when the process that launched it is gone; a forked
    kernel's parent is the template, so the poller watches the host's pidfd
    instead. Kernels started without a poller (``parent_handle=0``) get none.
    """
    from ipykernel.parentpoller import ParentPollerUnix

    if not isinstance(app.poller, ParentPollerUnix) or app.parent_handle != host.pid:
        os.close(host.pidfd)
        return

    class HostPoller(ParentPollerUnix):  # type: ignore[misc]
        def run(self) -> None:
            import select

            from traitlets.log import get_logger

            while True:
                try:
                    select.select([host.pidfd], [], [])
                    break
                except InterruptedError:
                    continue
            get_logger().warning("Parent appears to have exited, shutting down.")
            os._exit(1)

    app.poller = HostPoller(parent_pid=host.pid)


def set_command_line(argv: list[str]) -> None:
    """Show ``argv`` in /proc/<pid>/cmdline (and ps) by rewriting the argv area in place."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end
        data = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
        if len(data) > end - start:
            return
        import ctypes

        ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    except (OSError, ValueError, IndexError):
        pass


def main(argv: list[str]) -> None:
    gc.disable()  # no collections between imports and forks: fewer holes, more shared pages
    here = os.path.dirname(os.path.realpath(__file__))
    path0 = None
    if not getattr(sys.flags, "safe_path", False) and sys.path:
        if os.path.realpath(sys.path[0]) == here:
            sys.path[0] = path0 = os.getcwd()  # what ``-m`` puts first, not this directory
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    template = Template(sock, path0)
    init = template.receive()
    template.prefix = list(init["prefix"])
    refusal = template.prepare(list(init.get("imports", [])), list(init.get("hoisted", [])))
    if refusal is not None:
        stage, reason = refusal
        template.send({"op": "refused", "stage": stage, "reason": reason})
        os._exit(0)
    pack_module_files()
    gc.freeze()
    template.send({"op": "ready", "pid": os.getpid()})
    birth = template.serve()
    if birth is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    become_kernel(birth)


if __name__ == "__main__":
    main(sys.argv)
