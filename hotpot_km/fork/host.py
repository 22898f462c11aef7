"""The host's side of one template process: start it, ask it to fork, follow its kernels.

The template is a child of the host; the kernels it forks are children of the
template. The host holds a pidfd of every forked kernel (sent by the template
with the ``forked`` reply), so it waits for and signals them by pidfd, race-free,
although it is not their parent; the template reaps them and reports their exit
status. A kernel's argv, cwd and env go to the kernel alone, over a socket the
template hands over with the pidfd. Nothing here blocks the event loop: sockets
and pidfds are watched with ``add_reader``.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import select
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import keeper
from .hoisting import Import
from .template import STATUS_UNKNOWN, Framer, encode

#: The template program, run with the kernelspec's own interpreter.
TEMPLATE_FILE = str(Path(__file__).with_name("template.py"))


class TemplateError(RuntimeError):
    """The template could not be started, refused to fork, or went away.

    ``stage`` is ``"hoisted"`` when it happened while the template imported the init
    files' modules (see :mod:`hotpot_km.fork.hoisting`): a template without them may work.
    """

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class TemplateKey:
    """What a template fixes for every kernel it forks: a different key needs another one."""

    prefix: tuple[str, ...]  # interpreter and interpreter flags of the kernelspec's argv
    startup_env: tuple[tuple[str, str | None], ...]  # variables read only at process start
    imports: tuple[str, ...]  # python_imports
    hoisted: tuple[Import, ...] = ()  # the init files' imports (hotpot_km.fork.hoisting)


class ForkedProcess:
    """A forked kernel seen from the host: the parts of ``Popen`` jupyter_client uses."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int, template: TemplateProcess) -> None:
        loop = asyncio.get_running_loop()
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: int | None = None
        self.template = template
        self._status: asyncio.Future[int | None] = loop.create_future()  # from the template
        self._gone: asyncio.Future[None] | None = None

    def _report(self, status: int | None) -> None:
        if not self._status.done():
            self._status.set_result(status)

    def exited(self) -> bool:
        """Whether the process has exited (a pidfd turns readable then)."""
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def poll(self) -> int | None:
        """``None`` while running; then its exit status (1 while that is still on its way)."""
        if self.returncode is not None:
            return self.returncode
        if not self.exited():
            return None
        if self._status.done():
            status = self._status.result()
            self.returncode = STATUS_UNKNOWN if status is None else status
            return self.returncode
        return STATUS_UNKNOWN

    async def wait_exit(self, status_timeout: float = 5.0) -> int:
        """Wait for the process to exit (off the loop's critical path: a pidfd reader)."""
        if not self.exited():
            if self._gone is None:
                loop = asyncio.get_running_loop()
                self._gone = gone = loop.create_future()
                fd = self.pidfd

                def on_exit() -> None:
                    loop.remove_reader(fd)
                    if not gone.done():
                        gone.set_result(None)

                loop.add_reader(fd, on_exit)
            await asyncio.shield(self._gone)
        try:
            status = await asyncio.wait_for(asyncio.shield(self._status), status_timeout)
        except asyncio.TimeoutError:
            status = None
        self.returncode = STATUS_UNKNOWN if status is None else status
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """``Popen.wait`` for callers that polled first: the status is known by then."""
        status = self.poll()
        return STATUS_UNKNOWN if status is None else status

    def send_signal(self, signum: int) -> None:
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Release the pidfd (once the process is gone)."""
        if self.pidfd >= 0:
            if self._gone is not None and not self._gone.done():
                asyncio.get_running_loop().remove_reader(self.pidfd)
                self._gone.cancel()
            os.close(self.pidfd)
            self.pidfd = -1


class TemplateProcess:
    """One running template, talked to over a socketpair."""

    def __init__(
        self,
        name: str,
        key: TemplateKey,
        log: logging.Logger | logging.LoggerAdapter[Any],
        on_exit: Callable[[TemplateProcess, int | None], None],
        on_spawn: Callable[[int], None] = lambda group: None,
    ) -> None:
        self.name = name
        self._on_spawn = on_spawn  # told the template's process group as soon as it exists
        self.key = key
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.launch_env: dict[str, str] = {}  # what it was started with (see start)
        self.stopping = False
        self.forks = 0
        self.stage = "imports"  # of its start-up: "hoisted" once it imports the init files'
        self._on_exit = on_exit
        self._sock: socket.socket | None = None
        self._pidfd = -1
        self._framer = Framer()
        self._fds: deque[int] = deque()
        self._ids = 0
        self._requests: dict[int, asyncio.Future[tuple[ForkedProcess, socket.socket]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._send_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int | None] = loop.create_future()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def socket(self) -> socket.socket | None:
        """The host's end of the template's socket (``None`` once closed)."""
        return self._sock

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.exited.done() and not self.stopping

    def process_group(self) -> int | None:
        """The template's own process group (it runs in a session of its own)."""
        return self.pid if self.process is not None and not self.exited.done() else None

    # -- start and stop ------------------------------------------------------------------------

    async def start(self, cwd: str, env: Mapping[str, str], room: int, timeout: float) -> None:
        """Start the template and wait until it is ready; raise :class:`TemplateError` if not."""
        loop = asyncio.get_running_loop()
        self.launch_env = dict(env)  # every child's /proc/<pid>/environ
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [*self.key.prefix, TEMPLATE_FILE, str(theirs.fileno()), " " * room]
        spawn = asyncio.ensure_future(
            asyncio.to_thread(
                subprocess.Popen,
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        )
        try:
            self.process = await asyncio.shield(spawn)
            self._on_spawn(self.process.pid)  # its own session: the group is its pid
        except asyncio.CancelledError:  # it still starts: don't leave it behind
            ours.close()
            process = await asyncio.gather(spawn, return_exceptions=True)
            if isinstance(process[0], subprocess.Popen):
                process[0].kill()
                await asyncio.to_thread(process[0].wait)
            raise
        except OSError as error:
            ours.close()
            raise TemplateError(f"could not start it: {error}") from None
        finally:
            theirs.close()
        self._sock = ours
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_readable)
        self._pidfd = os.pidfd_open(self.process.pid)
        loop.add_reader(self._pidfd, self._on_process_exit)
        prefix, imports = list(self.key.prefix), list(self.key.imports)
        hoisted = [[module, list(names)] for module, names in self.key.hoisted]
        init = {"op": "init", "prefix": prefix, "imports": imports, "hoisted": hoisted}
        try:
            await self._send(init)
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            await self.aclose(grace=0)
            raise TemplateError(f"it was not ready within {timeout:g} s", self.stage) from None
        except TemplateError as error:
            await self.aclose(grace=0)
            raise TemplateError(str(error), error.stage or self.stage) from None
        except BaseException:
            await self.aclose(grace=0)
            raise

    def stop(self) -> None:
        """No more forks: the template exits, the kernels it forked keep running."""
        if self.stopping:
            return
        self.stopping = True
        if self._sock is not None and not self.exited.done():
            try:
                self._sock.send(encode({"op": "stop"}))
            except OSError:
                pass

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop the template and wait for it to exit (killed after ``grace`` seconds)."""
        self.stop()
        if self.process is not None and not self.exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except asyncio.TimeoutError:
                self.process.kill()
                await asyncio.wait_for(asyncio.shield(self.exited), 10)
        self._close_socket()

    # -- forking -------------------------------------------------------------------------------

    async def fork(
        self, argv: Sequence[str], cwd: str, env: Mapping[str, str], timeout: float
    ) -> ForkedProcess:
        """Fork a kernel and give it ``argv``, ``cwd`` and ``env``.

        Returns once its sockets are bound (or it died, or ``timeout`` passed);
        raises ``OSError`` as ``Popen`` would if ``cwd`` is unusable.
        """
        if not self.alive:
            raise TemplateError("it is not running")
        loop = asyncio.get_running_loop()
        self._ids += 1
        request = self._ids
        future: asyncio.Future[tuple[ForkedProcess, socket.socket]] = loop.create_future()
        self._requests[request] = future
        try:
            await self._send({"op": "fork", "id": request})
            child, channel = await _within(future, timeout)
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # it arrived just as we were cancelled: nobody will give it a birth
                child, channel = future.result()
                channel.close()
                child.kill()
                child.close()
            future.cancel()  # a child forked for it after all is killed on arrival
            raise
        self.forks += 1
        try:
            birth = {"argv": list(argv), "cwd": cwd, "env": dict(env)}
            await loop.sock_sendall(channel, encode(birth))
            reply = await asyncio.wait_for(_receive(channel), timeout)
        except (OSError, asyncio.TimeoutError):
            reply = None  # it died, or is slow: the caller finds out as for a launch
        except BaseException:
            child.kill()
            raise
        finally:
            channel.close()
        if reply is not None and reply.get("op") == "failed":
            code = int(reply.get("errno") or 0)
            await child.wait_exit()
            child.close()
            raise OSError(code, os.strerror(code), cwd)
        return child

    async def _send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        async with self._send_lock:
            if self._sock is None or self.exited.done():
                raise TemplateError("it is not running")
            try:
                await asyncio.get_running_loop().sock_sendall(self._sock, data)
            except OSError as error:
                raise TemplateError(f"it went away ({error})") from None

    # -- messages from the template ------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data, ancdata, _flags, _address = sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(16 * array.array("i").itemsize)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancdata = b"", []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                self._on_eof()
                return
            for message in self._framer.feed(data):
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "ready":
            if not self._ready.done():
                self._ready.set_result(None)
        elif op == "stage":
            self.stage = str(message.get("stage"))
        elif op == "refused":
            if not self._ready.done():
                reason, stage = message["reason"], message.get("stage")
                self._ready.set_exception(TemplateError(f"it refused to fork: {reason}", stage))
                self._ready.exception()  # retrieved: a start no longer waiting must not log it
        elif op == "forked":
            child = ForkedProcess(message["pid"], self._fds.popleft(), self)
            # Registered at once, not when its slot binds it after its sockets are bound:
            # the keeper SIGKILLs the template too, which then cannot kill it on the host's
            # death. Until the child's setsid() it is in the template's group, then in its own.
            keeper.register(child.pid)
            channel = socket.socket(fileno=self._fds.popleft())
            channel.setblocking(False)
            self._children[child.pid] = child
            future = self._requests.pop(message["id"], None)
            if future is None or future.done():  # nobody waits for it any more
                channel.close()  # it exits when it finds the channel closed
                child.kill()
                child.close()
            else:
                future.set_result((child, channel))
        elif op == "exited":
            keeper.unregister(message["pid"])
            child = self._children.pop(message["pid"], None)
            if child is not None:
                child._report(message["status"])

    def _on_eof(self) -> None:
        """The template closed its end: it exited or is about to."""
        self._close_socket()
        if not self._ready.done():
            self._ready.set_exception(TemplateError("it exited during start-up"))
            self._ready.exception()  # retrieved: a start no longer waiting must not log it
        for future in self._requests.values():
            if not future.done():
                future.set_exception(TemplateError("it exited"))
                future.exception()  # likewise for a fork nobody waits for any more
        self._requests.clear()
        for child in self._children.values():
            child._report(None)  # orphaned: its exit status can't be known any more
        self._children.clear()

    def _on_process_exit(self) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        status = self.process.poll()  # exited: reaps without blocking
        self._on_eof()
        if not self.exited.done():
            self.exited.set_result(status)
        self._on_exit(self, status)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except RuntimeError:
                pass
            sock.close()
        while self._fds:
            os.close(self._fds.popleft())


async def _within(future: asyncio.Future[Any], timeout: float) -> Any:
    """``future``'s result, or ``TimeoutError`` after ``timeout`` seconds (``future`` goes on).

    Unlike ``wait_for`` on Python 3.11, a cancellation of the caller is never dropped
    because ``future`` finished in the same step: a fork being cancelled must end the
    child that just arrived, not carry on with it.
    """
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        raise asyncio.TimeoutError
    return future.result()


async def _receive(channel: socket.socket) -> dict[str, Any] | None:
    """The first message a child sends on its channel; ``None`` if it closed it first."""
    loop = asyncio.get_running_loop()
    framer = Framer()
    while True:
        data = await loop.sock_recv(channel, 1 << 12)
        if not data:
            return None
        messages = framer.feed(data)
        if messages:
            return messages[0]


def kernel_command(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """Split ``<python> [flags] -m ipykernel_launcher <args>`` into (python + flags, args).

    ``None`` for any other command: the template can only reproduce that one.
    """
    argv = list(argv)
    if "-m" not in argv[1:]:
        return None
    at = argv.index("-m", 1)
    if argv[at + 1 : at + 2] != ["ipykernel_launcher"]:
        return None
    flags = argv[1:at]
    taking_value = {"-X", "-W", "--check-hash-based-pycs"}
    for i, flag in enumerate(flags):
        if flag.startswith("-") and flag not in ("-c", "-m", "-", "-i"):
            continue
        if i > 0 and flags[i - 1] in taking_value:
            continue
        return None
    return argv[:at], argv[at + 2 :]
