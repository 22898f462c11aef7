"""Fork mode: kernels forked from a pre-imported template, compared with launched ones.

Real templates, real forked ipykernels, real servers; fork mode is switched on here by
configuration whatever ``HOTPOT_KM_TEST_FORK`` says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys

import psutil
import pytest
import requests
from children import ChildSampler
from conftest import (
    TEMPLATE_MARK,
    kernel_children,
    marked_kernels,
    marked_processes,
    templates,
)
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from kernel_helpers import ColdReference, probe, run, shut_down, wait_until, write_kernelspec
from servers import (
    TOKEN,
    api,
    free_port,
    jupyter_server,
    log_tracebacks,
    new_session,
    port_of,
    running,
    voila_command,
    wait_for,
    write_notebook,
)

from hotpot_km import MaximumKernelsException, PooledKernelManager, keeper
from hotpot_km.fork.host import TemplateKey, TemplateProcess, kernel_command
from hotpot_km.fork.templates import startup_values

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

FORK = {"python3": True, "other": True}


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_fork")
    return logging.getLogger("hotpot_fork")


def new_manager(log: logging.Logger, **traits) -> PooledKernelManager:
    traits.setdefault("fill_delay", 0)
    traits.setdefault("max_warming", 2)
    traits.setdefault("fork_from_template", FORK)
    km = PooledKernelManager(**traits)
    km.log = log
    return km


def template_pid() -> int:
    found = templates()
    assert len(found) == 1, found
    return found[0].pid


def forked_pids(template: int) -> set[int]:
    return {p.pid for p in kernel_children(template)}


def parent_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


#: What a kernel looks like from inside, beyond cwd and env (see kernel_helpers.PROBE).
STATE = r"""
import gc, json, os, random, signal, stat, sys, threading
import matplotlib, matplotlib.pyplot, numpy
from ipykernel.parentpoller import ParentPollerUnix
app = get_ipython().kernel.parent
with open("/proc/self/cmdline", "rb") as f:
    cmdline = [a.decode() for a in f.read().split(b"\0") if a]
handlers = {}
for signum in sorted(signal.valid_signals()):
    try:
        handler = signal.getsignal(signum)
    except (OSError, ValueError):
        continue
    handlers[str(signum)] = getattr(handler, "__name__", str(handler))
mask = os.umask(0); os.umask(mask)
print(json.dumps({
    "pid": os.getpid(),
    "argv0": sys.argv[0], "args": sys.argv[1:2], "connection_file": sys.argv[2],
    "orig_argv": sys.orig_argv[:4], "path": sys.path, "flags": str(sys.flags),
    "cwd": os.getcwd(), "env": dict(os.environ),
    "cmdline": cmdline,
    "handlers": handlers,
    "session_leader": os.getsid(0) == os.getpid() == os.getpgid(0),
    "stdin_is_pipe": stat.S_ISFIFO(os.fstat(0).st_mode), "stdin_at_eof": os.read(0, 1) == b"",
    "gc": gc.isenabled(),
    # (a forked kernel's poller is a ParentPollerUnix that watches the host, not its parent)
    # (ipykernel watches fds 1/2 with a thread of each unless PYTEST_CURRENT_TEST was in the
    # env it started with: a test runner's variable a pooled kernel, launched with only what
    # is fixed at process start, never had)
    "threads": sorted("parent poller" if isinstance(t, ParentPollerUnix) else type(t).__name__
                      for t in threading.enumerate()
                      if "_watch_pipe_fd" not in getattr(t, "name", "")),
    "poller": isinstance(app.poller, ParentPollerUnix), "parent_handle": app.parent_handle,
    "backend": matplotlib.get_backend(),
    "main_is_user_ns": sys.modules["__main__"].__dict__ is globals(),
    "numpy_is_kernel_code": any(f.startswith(os.path.dirname(numpy.__file__))
                                for f in get_ipython().kernel._kernel_modules),
    "umask": mask,
    "random": random.random(), "numpy_random": float(numpy.random.random()),
}))
"""


async def state(km: AsyncMultiKernelManager, kernel_id: str) -> dict:
    out, reply = await run(km, kernel_id, STATE)
    assert reply["status"] == "ok", reply
    return json.loads(out.strip().splitlines()[-1])


SAME = ["argv0", "args", "orig_argv", "path", "flags", "cwd", "env", "handlers",
        "session_leader", "stdin_is_pipe", "stdin_at_eof", "gc", "threads", "poller",
        "parent_handle", "backend", "main_is_user_ns", "numpy_is_kernel_code", "umask"]


async def test_a_forked_kernel_is_in_the_state_of_a_cold_start(jupyter_dirs, log):
    """A handed-out forked kernel and a forked start without a pooled kernel look like a
    launched kernel started with the same cwd and env (apart from the imported modules);
    random generators are seeded per kernel."""
    imports = ["numpy.random", "matplotlib.pyplot"]
    km = new_manager(log, kernel_pools={"python3": 1}, python_imports=imports)
    cold = ColdReference()
    cwd = jupyter_dirs["data"]
    env = dict(os.environ, REQUEST="r1", JPY_SESSION_NAME="dir/nb.ipynb")
    try:
        await km.wait_for_pool()
        template = template_pid()
        pooled = forked_pids(template)
        handed = await km.start_kernel(cwd=str(cwd), env=env)
        started = await km.start_kernel(cwd=str(cwd), env=env)  # the pool is empty: forked
        reference = await cold.start_kernel(cwd=str(cwd), env=env)
        seen = {"handed": await state(km, handed), "started": await state(km, started)}
        expected = await state(cold, reference)

        assert seen["handed"]["pid"] in pooled
        assert parent_of(seen["started"]["pid"]) == template
        assert parent_of(expected["pid"]) == os.getpid()
        for kind, got in seen.items():
            for key in SAME:
                assert got[key] == expected[key], (kind, key)
            assert got["cmdline"][:4] == [sys.executable, "-m", "ipykernel_launcher", "-f"]
            assert got["cmdline"][4] == got["connection_file"]
            assert got["random"] != expected["random"]
            assert got["numpy_random"] != expected["numpy_random"]
        assert seen["handed"]["random"] != seen["started"]["random"]
        assert seen["handed"]["numpy_random"] != seen["started"]["numpy_random"]
        assert expected["backend"] == "inline" or "inline" in expected["backend"]
        assert expected["poller"] and expected["parent_handle"] == os.getpid()
    finally:
        await shut_down(km)
        await cold.shutdown_all(now=True)


class FailingShutdown(PooledKernelManager):
    """A manager one of whose kernels fails to shut down (e.g. its connection file can't be
    removed): ``shutdown_all`` raises that error."""

    async def _async_shutdown_kernel(self, kernel_id: str, *args, **kwargs) -> None:
        await super()._async_shutdown_kernel(kernel_id, *args, **kwargs)
        raise OSError(f"hotpot test: kernel {kernel_id} did not shut down cleanly")

    shutdown_kernel = _async_shutdown_kernel


async def test_a_failing_kernel_shutdown_still_stops_the_templates(jupyter_dirs, log):
    """``shutdown_all`` raises the kernel's error, and no template outlives the manager."""
    km = FailingShutdown(kernel_pools={"python3": 1}, fill_delay=0, fork_from_template=FORK)
    km.log = log
    await km.wait_for_pool()
    template_pid()
    await km.start_kernel()
    with pytest.raises(OSError, match="did not shut down cleanly"):
        await km.shutdown_all()
    await wait_until(lambda: not templates(), what="the template exited")


async def test_starts_without_a_pooled_kernel_are_forked_too(jupyter_dirs, log):
    km = new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        template = template_pid()
        kids = await asyncio.gather(*(km.start_kernel() for _ in range(4)))
        pids = [(await probe(km, kid))["pid"] for kid in kids]
        assert len(set(pids)) == 4
        assert all(parent_of(pid) == template for pid in pids)
        # the host's keeper kills their process groups, and the template's, if it dies
        assert {*pids, template} <= keeper.registered()
    finally:
        await shut_down(km)
    assert not templates()


async def test_signals_interrupt_restart_and_kill_reach_a_forked_kernel(jupyter_dirs, log):
    """The host is not the parent of a forked kernel; it interrupts, signals, restarts,
    kills and waits for it all the same (by pidfd)."""
    km = new_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        template = template_pid()
        kid = await km.start_kernel()
        first = (await probe(km, kid))["pid"]
        assert parent_of(first) == template

        client = km.get_kernel(kid).client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=30)
            running = asyncio.ensure_future(
                client.execute_interactive("import time; time.sleep(60)", timeout=60)
            )
            await asyncio.sleep(1)
            await km.interrupt_kernel(kid)
            reply = await asyncio.wait_for(running, 30)
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        finally:
            client.stop_channels()

        # a signal the kernel handles: SIGUSR1 is ignored by no one, so set a handler first
        out, _ = await run(km, kid, "import signal\nhits = []\n"
                           "signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))")
        await km.signal_kernel(kid, signal.SIGUSR1)
        out, _ = await run(km, kid, "import time; time.sleep(0.2); print(len(hits))")
        assert out.strip() == "1"

        km.kernel_pools = {}  # no pooled kernel: a normal restart, forked again
        await wait_until(lambda: not (forked_pids(template) - {first}), what="pool emptied")
        await km.restart_kernel(kid)
        second = (await probe(km, kid))["pid"]
        assert second != first and parent_of(second) == template
        assert not alive(first)

        await km.shutdown_kernel(kid, now=True)
        assert not alive(second)
    finally:
        await shut_down(km)


# -- refusals ----------------------------------------------------------------------------------

UNSAFE = {
    "python_thread": (
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True)"
        ".start()\n",
        "the imports started Python threads",
    ),
    "native_thread": (
        "import _thread, time\n_thread.start_new_thread(time.sleep, (600,))\n",
        "native thread(s)",
    ),
    "cuda": (
        "import ctypes, os\nctypes.CDLL(os.path.join(os.path.dirname(__file__), 'libcuda.so.1'))\n",
        "a CUDA driver is loaded",
    ),
    "event_loop": (
        "import asyncio\nasyncio.set_event_loop(asyncio.new_event_loop())\n",
        "the imports created an asyncio event loop",
    ),
    "failing_import": ("raise ImportError('no such thing')\n", "importing 'unsafe_import' failed"),
}


@pytest.mark.parametrize("kind", list(UNSAFE))
async def test_unsafe_templates_are_refused_and_kernels_launched(jupyter_dirs, log, caplog, kind):
    code, reason = UNSAFE[kind]
    work = jupyter_dirs["work"]  # the kernels' cwd, so on their sys.path
    (work / "unsafe_import.py").write_text(code)
    if kind == "cuda":  # any shared library will do: only its name is looked at
        import _ctypes

        shutil.copy(_ctypes.__file__, work / "libcuda.so.1")
    km = new_manager(log, kernel_pools={"python3": 1}, python_imports=["unsafe_import"])
    try:
        if kind == "failing_import":  # launched kernels fail their warm-up as well
            await wait_until(lambda: records(caplog, logging.ERROR, reason), what="refusal")
        else:
            await km.wait_for_pool()
        refused = records(caplog, logging.ERROR, "fork template for 'python3' kernels failed")
        assert len(refused) == 1, refused
        assert reason in refused[0] and "launched instead" in refused[0]
        await wait_until(lambda: not templates(), what="the refused template exited")
        kid = await km.start_kernel()
        assert parent_of((await probe(km, kid))["pid"]) == os.getpid()  # launched
        assert len(records(caplog, logging.ERROR, "fork template")) == 1  # logged once
    finally:
        await shut_down(km)


async def test_a_kernelspec_the_template_cannot_reproduce_is_launched(jupyter_dirs, log, caplog):
    write_kernelspec(jupyter_dirs["data"], "other",
                     [sys.executable, "-m", "ipykernel", "-f", "{connection_file}"])
    km = new_manager(log, kernel_pools={"other": 2})
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel(kernel_name="other")
        assert parent_of((await probe(km, kid))["pid"]) == os.getpid()
        await km.start_kernel(kernel_name="other")
        assert not templates()
        notes = records(caplog, logging.WARNING, "fork_from_template['other'] is set, but")
        assert len(notes) == 1, notes
        assert "ipykernel_launcher" in notes[0] and "launched instead" in notes[0]
    finally:
        await shut_down(km)


# -- the template dies -------------------------------------------------------------------------


async def test_a_dead_template_is_replaced_and_its_kernels_live_on(jupyter_dirs, log, caplog):
    km = new_manager(log, kernel_pools={"python3": 2})
    try:
        await km.wait_for_pool()
        old = template_pid()
        orphans = forked_pids(old)
        assert len(orphans) == 2
        os.kill(old, signal.SIGKILL)
        await wait_until(lambda: not alive(old), what="template gone")
        await wait_until(lambda: records(caplog, logging.WARNING, "exited"), what="noticed")
        # its kernels are their owner's: still alive, still handed out, still controlled
        assert all(alive(pid) for pid in orphans)
        kids = [await km.start_kernel(), await km.start_kernel()]
        served = {kid: (await probe(km, kid))["pid"] for kid in kids}
        assert set(served.values()) == orphans
        # the refills come from a new template
        await km.wait_for_pool()
        new = template_pid()
        assert new != old and len(forked_pids(new)) == 2
        await km.shutdown_kernel(kids[0], now=True)  # an orphan, shut down by pidfd
        assert not alive(served[kids[0]])
        warned = records(caplog, logging.WARNING, "the fork template for 'python3' kernels exited")
        assert len(warned) == 1 and "keep running" in warned[0]
    finally:
        await shut_down(km)
    await wait_until(lambda: not any(alive(p) for p in orphans), 10, "orphans gone")


async def test_a_fork_cancelled_as_its_child_arrives_leaves_no_process(jupyter_dirs, log):
    """The pool closing (or a start giving up) can cancel a fork in the very step in which
    the template's answer arrives: that child gets no birth, and must not wait for one."""
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(jupyter_dirs["work"] / "k.json")]
    prefix, _ = kernel_command(argv)
    key = TemplateKey(tuple(prefix), startup_values(os.environ), ())
    template = TemplateProcess("python3", key, log, on_exit=lambda *_: None)
    await template.start(os.getcwd(), os.environ, room=4096, timeout=60)
    forked: list[int] = []
    held: list[asyncio.Future] = []
    fork: asyncio.Task | None = None
    dispatch = template._dispatch

    def cancel_on_arrival(message: dict) -> None:
        if message["op"] == "forked":
            # kept alive, as a traceback in a log record would: the child must not depend
            # on the host's garbage collector closing its channel
            held.append(template._requests[message["id"]])
        dispatch(message)  # the real one: the fork's future now holds the child
        if message["op"] == "forked":
            forked.append(message["pid"])
            assert fork is not None
            fork.cancel()

    template._dispatch = cancel_on_arrival
    try:
        fork = asyncio.ensure_future(template.fork(argv, os.getcwd(), os.environ, timeout=60))
        with pytest.raises(asyncio.CancelledError):
            await fork
        assert len(forked) == 1
        await wait_until(lambda: not alive(forked[0]), 10, "the unborn child gone")
    finally:
        await template.aclose()


# -- max_kernels -------------------------------------------------------------------------------


async def test_max_kernels_counts_kernels_not_the_template(jupyter_dirs, log, caplog):
    """max_kernels = N gives N kernels in fork mode too: the template is one more process,
    not a kernel (it never takes a kernel's place), and kernels never exceed N."""
    km = new_manager(log, kernel_pools={"python3": 2}, max_kernels=2)
    with ChildSampler(os.getpid(), interval=0.002) as counter:
        try:
            await km.wait_for_pool()
            template = template_pid()
            assert len(kernel_children()) == 2
            kids = [await km.start_kernel(), await km.start_kernel()]
            await asyncio.sleep(1)  # no room to refill: 2 kernels, both handed out
            assert len(kernel_children()) == 2
            with pytest.raises(MaximumKernelsException):
                await km.start_kernel()
            await km.shutdown_kernel(kids[0], now=True)
            third = await km.start_kernel()  # the freed slot: forked, no pooled kernel left
            assert parent_of((await probe(km, third))["pid"]) == template
            assert not records(caplog, logging.WARNING, "launched instead")
        finally:
            await shut_down(km)
    assert counter.max <= 2, counter.at_max


async def test_max_kernels_one_still_forks(jupyter_dirs, log, caplog):
    km = new_manager(log, kernel_pools={"python3": 1}, max_kernels=1)
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel()
        assert parent_of((await probe(km, kid))["pid"]) == template_pid()
    finally:
        await shut_down(km)


# -- the host goes away ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "watched"),
    [(signal.SIGKILL, True), (signal.SIGKILL, False), (signal.SIGTERM, False)],
    ids=["SIGKILL", "SIGKILL-unwatched", "SIGTERM-unwatched"],
)
def test_no_process_outlives_a_killed_or_stopped_server(jupyter_dirs, tmp_path, monkeypatch, sig,
                                                        watched):
    """jupyter_server in fork mode with pooled and handed-out kernels, stopped or SIGKILLed:
    the template and every kernel go, also kernels that don't watch their parent."""
    if not watched:  # a python3 spec that wins over the venv's: first in JUPYTER_PATH
        monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
        write_kernelspec(tmp_path / "path", "python3",
                         [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                          "--IPKernelApp.parent_handle=0"])
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"python3": 2}\n'
        'c.PooledKernelManager.fork_from_template = {"python3": True}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
    )
    root = tmp_path / "root"
    write_notebook(root / "nb.ipynb", "1+1")
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        new_session(server, "nb.ipynb")
        assert api(server, "POST", "/api/kernels", json={"name": "python3"}).ok
        [template] = templates(server.proc.pid)
        wait_for(lambda: len(server.kernel_pids()) == 4, what="2 handed out, 2 refilled")
        assert all(parent_of(pid) == template.pid for pid in server.kernel_pids())
        server.stop(sig)
    wait_for(lambda: not marked_kernels() and not marked_processes(TEMPLATE_MARK), timeout=10,
             what="every kernel and the template gone")


def test_voila_in_fork_mode_serves_pages_from_forked_kernels(jupyter_dirs, tmp_path):
    """The seed voila.json plus fork_from_template: pages run in forked kernels."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(json.dumps({
        "VoilaConfiguration": {
            "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
        "PooledKernelManager": {"kernel_pools": {"python3": 2}, "_wait_at_startup": True,
                                "fork_from_template": {"python3": True}},
    }))
    write_notebook(app / "dashboard.ipynb",
                   "import os\nprint('PID', os.getpid(), 'URL', os.environ['VOILA_REQUEST_URL'])")
    port = free_port()
    with running(voila_command("dashboard.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        [template] = templates(server.proc.pid)
        pids = []
        for query in ("?a=1", "?b=2", "?c=3"):
            page = requests.get(server.url + "/" + query, timeout=120)
            assert page.status_code == 200, server.log()[-3000:]
            match = re.search(r"PID (\d+) URL (\S+)", page.text)
            assert match and query in match.group(2)
            pids.append(int(match.group(1)))
        assert len(set(pids)) == 3
        assert all(parent_of(pid) == template.pid for pid in pids)
        assert not log_tracebacks(server.log())
    assert not marked_kernels()



# -- fork mode by default ----------------------------------------------------------------------


def default_manager(log: logging.Logger, **traits) -> PooledKernelManager:
    """A manager as users configure one: fork_from_template only if ``traits`` set it."""
    traits.setdefault("fill_delay", 0)
    traits.setdefault("max_warming", 2)
    km = PooledKernelManager(**traits)
    km.log = log
    return km


@pytest.mark.parametrize(
    ("config", "forked"),
    [
        ({}, True),
        ({"python3": True}, True),
        ({"python3": False}, False),
        ({"*": False}, False),
        ({"*": False, "python3": True}, True),
    ],
    ids=["default", "on", "off", "all-off", "all-off-but-one"],
)
async def test_pools_fork_by_default_and_opt_out_by_name_or_for_all(jupyter_dirs, log, caplog,
                                                                    config, forked):
    km = default_manager(log, kernel_pools={"python3": 1}, fork_from_template=config)
    try:
        await km.wait_for_pool()
        kid = await km.start_kernel()
        parent = parent_of((await probe(km, kid))["pid"])
        if forked:
            assert parent == template_pid()
        else:
            assert parent == os.getpid() and not templates()
        assert not records(caplog, logging.WARNING, "hotpot_km")
    finally:
        await shut_down(km)


async def test_names_without_a_pool_are_launched_by_default(jupyter_dirs, log, caplog):
    """The default is for pools: a start of a name without one launches and starts no
    template; {"*": true} forks those too; a non-Python pool launches, saying so once (info)."""
    write_kernelspec(jupyter_dirs["data"], "other")
    write_kernelspec(jupyter_dirs["data"], "plain", [sys.executable, "-c", "pass"],
                     language="bash")
    km = default_manager(log, kernel_pools={"plain": 0})
    try:
        kid = await km.start_kernel(kernel_name="other")
        assert parent_of((await probe(km, kid))["pid"]) == os.getpid()
        assert not templates()
        assert km._templates.enabled("plain") and not km._templates.enabled("other")
        assert not km._templates.reproducible("plain", km.kernel_spec_manager.get_kernel_spec("plain"))
        assert not km._templates.reproducible("plain", km.kernel_spec_manager.get_kernel_spec("plain"))
        notes = records(caplog, logging.INFO, "'plain' kernels are launched, not forked")
        assert len(notes) == 1 and "not Python" in notes[0], notes
        assert not records(caplog, logging.WARNING, "hotpot_km")
        km.fork_from_template = {"*": True}
        kid = await km.start_kernel(kernel_name="other")  # starts its template, launched
        await wait_until(lambda: len(templates()) == 1, what="a template for 'other'")
        await wait_until(lambda: "fork template for 'other' kernels ready" in caplog.text,
                         what="its template ready")
        kid = await km.start_kernel(kernel_name="other")
        assert parent_of((await probe(km, kid))["pid"]) == template_pid()
    finally:
        await shut_down(km)


# -- an init file's imports, done once in the template -----------------------------------------

HOISTED_MODULES = {
    "hoist_a.py": "import os\nPID = os.getpid()\n",
    "hoist_b.py": "import os\nPID = os.getpid()\n",
    "hoist_late.py": "import os\nPID = os.getpid()\n",
    "hoist_pkg/__init__.py": "import os\nPID = os.getpid()\n",
    "hoist_pkg/sub.py": "import os\nPID = os.getpid()\n",
    "hoist_pkg/deep/__init__.py": "",
    "hoist_pkg/deep/leaf.py": "import os\nPID = os.getpid()\n",
    "hoist_thread.py": "import os, threading, time\nPID = os.getpid()\n"
                       "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n",
}

INIT_FILE = """\
import hoist_a
from hoist_pkg import sub
import hoist_pkg.deep.leaf as leaf
if True:
    import hoist_late  # not at the top level: imported by each kernel
INIT_PID = __import__("os").getpid()  # the rest of the file runs in each kernel
"""

WHERE = """\
import json, os, sys
names = ("hoist_a", "hoist_b", "hoist_late", "hoist_pkg", "hoist_pkg.sub",
         "hoist_pkg.deep.leaf", "hoist_thread")
print(json.dumps({"pid": os.getpid(), "init": globals().get("INIT_PID"),
                  **{n: sys.modules[n].PID for n in names if n in sys.modules}}))
"""


def write_modules(work) -> None:
    for name, text in HOISTED_MODULES.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


async def where_imported(km: PooledKernelManager, kid: str) -> dict:
    out, reply = await run(km, kid, WHERE)
    assert reply["status"] == "ok", reply
    return json.loads(out.strip().splitlines()[-1])


def test_the_init_files_imports_are_read_as_data():
    from hotpot_km.fork.hoisting import module_imports

    source = (
        "from __future__ import annotations\n"
        "import a, b.c as d\n"
        "from e.f import g, h as i\n"
        "from . import local\n"
        "from .rel import x\n"
        "def f():\n    import inside\n"
        "try:\n    import guarded\nexcept ImportError:\n    pass\n"
        "print('never run')\n"
        "import a\n"
    )
    assert module_imports(source) == (("a", ()), ("b.c", ()), ("e.f", ("g", "h")))
    assert module_imports("import a\nprint(") == ()


async def test_an_init_files_imports_are_done_once_in_the_template(jupyter_dirs, log, caplog):
    """The seed's case: the init file's top-level imports are imported by the template (each
    forked kernel finds them imported), the rest of the file still runs in each kernel; a
    changed init file gives a new template."""
    write_modules(jupyter_dirs["work"])
    init = jupyter_dirs["config"] / "kernel_pool_init_python3.py"
    init.write_text(INIT_FILE)
    km = default_manager(log, kernel_pools={"python3": 1})
    try:
        await km.wait_for_pool()
        template = template_pid()
        kids = [await km.start_kernel(), await km.start_kernel()]  # pooled, then forked cold
        for kid, pooled in zip(kids, (True, False), strict=True):
            seen = await where_imported(km, kid)
            assert parent_of(seen["pid"]) == template
            for name in ("hoist_a", "hoist_pkg", "hoist_pkg.sub", "hoist_pkg.deep.leaf"):
                assert seen[name] == template, name
            if pooled:  # the init file ran in it
                assert seen["hoist_late"] == seen["init"] == seen["pid"]
            else:  # a cold start runs no init file (it finds the template's modules imported)
                assert seen["init"] is None and "hoist_late" not in seen
            assert "hoist_b" not in seen

        init.write_text("import hoist_b\n" + INIT_FILE)
        await km.shutdown_kernel(kids[0], now=True)
        kid = await km.start_kernel()  # hands out the pooled kernel: the refill is forked anew
        await km.wait_for_pool()
        await wait_until(lambda: [p.pid for p in templates()] not in ([], [template]),
                         what="a new template")
        new = template_pid()
        kid = await km.start_kernel()
        seen = await where_imported(km, kid)
        assert parent_of(seen["pid"]) == new
        assert seen["hoist_b"] == seen["hoist_a"] == new
        assert not records(caplog, logging.WARNING, "hotpot_km")
    finally:
        await shut_down(km)


@pytest.mark.parametrize("kind", ["thread", "failing"])
async def test_init_file_imports_that_make_the_template_unsafe_are_dropped(jupyter_dirs, log,
                                                                           caplog, kind):
    """An init file importing a module that starts a thread (or fails to import in the
    template only): the template serves with python_imports alone, one warning says why,
    kernels are forked and import the module themselves in their init file."""
    write_modules(jupyter_dirs["work"])
    if kind == "failing":  # fails in the template only (kernels show ipykernel's command line)
        (jupyter_dirs["work"] / "hoist_thread.py").write_text(
            "import os\nPID = os.getpid()\n"
            "if 'fork/template.py' in open('/proc/self/cmdline').read():\n"
            "    raise ImportError('only in kernels')\n")
    init = jupyter_dirs["config"] / "kernel_pool_init_python3.py"
    init.write_text("import hoist_a\nimport hoist_thread\n")
    km = default_manager(log, kernel_pools={"python3": 2}, python_imports=["hoist_b"])
    try:
        await km.wait_for_pool()
        template = template_pid()
        kids = [await km.start_kernel() for _ in range(3)]
        for kid in kids:
            seen = await where_imported(km, kid)
            assert parent_of(seen["pid"]) == template
            assert seen["hoist_b"] == template  # python_imports: still in the template
            assert seen["hoist_a"] == seen["hoist_thread"] == seen["pid"]  # by the init file
        dropped = records(caplog, logging.WARNING, "can't import what its init files import")
        assert len(dropped) == 1, dropped
        reason = "Python threads" if kind == "thread" else "only in kernels"
        assert "import hoist_a; import hoist_thread" in dropped[0] and reason in dropped[0]
        assert not records(caplog, logging.ERROR, "hotpot_km")
    finally:
        await shut_down(km)


# -- what users do with a forked kernel --------------------------------------------------------

DEBUG_INIT = {"clientID": "jupyterlab", "clientName": "JupyterLab", "adapterID": "python",
              "pathFormat": "path", "linesStartAt1": True, "columnsStartAt1": True,
              "supportsVariableType": True, "supportsVariablePaging": True,
              "supportsRunInTerminalRequest": True, "locale": "en-us"}


async def debugger_first_requests(km: AsyncMultiKernelManager, kernel_id: str) -> list[dict]:
    """What JupyterLab's debugger sends first on the control channel: debugInfo, initialize,
    debugInfo; the replies' content."""
    client = km.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=30)
        replies = []
        requests_ = [("debugInfo", {}), ("initialize", DEBUG_INIT), ("debugInfo", {})]
        for seq, (command, arguments) in enumerate(requests_, 1):
            msg = client.session.msg("debug_request", {"type": "request", "seq": seq,
                                                       "command": command,
                                                       "arguments": arguments})
            client.control_channel.send(msg)
            while True:
                reply = await client.control_channel.get_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    break
            replies.append(reply["content"])
        return replies
    finally:
        client.stop_channels()


def debugger_shape(replies: list[dict]) -> list[tuple]:
    return [(r.get("command"), r.get("success"), sorted(r.get("body") or {}),
             (r.get("body") or {}).get("isStarted")) for r in replies]


async def run_ok(km: AsyncMultiKernelManager, kid: str, code: str) -> str:
    out, reply = await run(km, kid, code)
    assert reply["status"] == "ok", reply
    return out


async def test_a_forked_kernel_supports_what_users_do(jupyter_dirs, log):
    """In the default mode, handed-out forked kernels run subprocesses (%pip, !, subprocess),
    threads started in a cell, are interrupted in a sleep loop and stay usable, restart, draw
    different random numbers from each other, and answer the JupyterLab debugger's first
    requests as a launched kernel does."""
    km = default_manager(log, kernel_pools={"python3": 2}, python_imports=["numpy"])
    cold = ColdReference()
    try:
        await km.wait_for_pool()
        template = template_pid()
        a, b = await km.start_kernel(), await km.start_kernel()
        pids = [(await probe(km, kid))["pid"] for kid in (a, b)]
        assert [parent_of(pid) for pid in pids] == [template, template]

        out = await run_ok(km, a, "%pip --version\n")
        assert re.search(r"pip \d+", out), out
        out = await run_ok(km, a, "import subprocess, sys\n"
                           "print(subprocess.run([sys.executable, '-c', 'print(6 * 7)'],"
                           " capture_output=True, text=True).stdout)\n!echo from-a-shell\n")
        assert "42" in out and "from-a-shell" in out

        out = await run_ok(km, a, "import threading\nresults = []\n"
                           "t = threading.Thread(target=lambda: results.append(sum(range(10))))\n"
                           "t.start(); t.join()\nprint(results, t.ident != threading.get_ident())")
        assert out.strip() == "[45] True"

        draws = [json.loads(await run_ok(km, kid, "import json, random, numpy\nprint(json.dumps("
                                         "[random.random(), float(numpy.random.random())]))"))
                 for kid in (a, b)]
        assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]

        client = km.get_kernel(b).client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=30)
            looping = asyncio.ensure_future(client.execute_interactive(
                "import time\nfor _ in range(600):\n    time.sleep(0.1)", timeout=90))
            await asyncio.sleep(1)
            await km.interrupt_kernel(b)
            reply = await asyncio.wait_for(looping, 60)
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        finally:
            client.stop_channels()
        assert (await run_ok(km, b, "print(6 * 7)")).strip() == "42"

        reference = await cold.start_kernel()
        forked = debugger_shape(await debugger_first_requests(km, a))
        launched = debugger_shape(await debugger_first_requests(cold, reference))
        assert forked == launched
        assert [step[:2] for step in forked] == [("debugInfo", True), ("initialize", True),
                                                 ("debugInfo", True)]

        await km.restart_kernel(b)
        after = (await probe(km, b))["pid"]
        assert after != pids[1] and parent_of(after) == template
        await wait_until(lambda: not alive(pids[1]), 30, "the kernel before the restart gone")
        assert (await run_ok(km, b, "print(6 * 7)")).strip() == "42"
    finally:
        await shut_down(km)
        await cold.shutdown_all(now=True)
