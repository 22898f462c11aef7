"""ipykernel's Python: the bootstrap that installs the handout handler and the gate in
every pooled kernel, and the variables Python reads only while its process starts."""

from __future__ import annotations

from .base import Preparation
from .common import LOADER_AND_LOCALE, NUMERIC_THREADS

_PYTHON_BOOTSTRAP = """\
def __hotpot_km_bootstrap():
    import asyncio, inspect, os, pathlib, sys, time, types
    from concurrent.futures import Future

    shell = get_ipython()
    kernel = shell.kernel
    if getattr(kernel, "control_thread", None) is None:
        # the handout runs on the control thread while shell requests wait at the gate
        raise RuntimeError("pooled Python kernels need ipykernel >= 6 (a control thread)")
    parent = kernel.get_parent()
    pool_session = parent["header"]["session"]
    launch_cwd = os.getcwd()
    launch = dict(parent["metadata"]["hotpot_km"]["launch_env"])
    started = dict(os.environ)
    # What the kernel changed in its own environment while starting up; a cold
    # start with the request's env would do the same on top of that env.
    own = {k: v for k, v in started.items() if launch.get(k) != v}
    dropped = [k for k in launch if k not in started]
    # The warm-up's code sees the pool's whole env, in os.environ only (the process's own
    # environment block keeps just the launch's); the handout replaces it.
    for key, value in parent["metadata"]["hotpot_km"].get("warmup_env", {}).items():
        if key not in started and key not in launch:
            os.environ[key] = value
    handlers = kernel.shell_handlers
    released = Future()

    def import_modules():
        import importlib

        for name in kernel.get_parent()["metadata"]["hotpot_km"]["modules"]:
            importlib.import_module(name)

    def gated(handler):
        async def gate(stream, idents, msg):
            # Nobody but the pool runs anything before the request's cwd/env are in place.
            if msg["header"].get("session") != pool_session:
                await asyncio.wrap_future(released)
            result = handler(stream, idents, msg)
            if inspect.isawaitable(result):
                await result

        return gate

    class Gated(dict):
        def get(self, msg_type, default=None):
            handler = dict.get(self, msg_type)
            return default if handler is None else gated(handler)

    def apply(cwd, request_env):
        os.chdir(cwd)
        env = dict(request_env)
        for key, value in own.items():
            # What the kernel set while starting (IPython's TERM, PAGER, ...) it would
            # set over the request's env too; a default it sets only where missing is
            # read at startup, so it is listed in startup_env and equal in both envs.
            env[key] = value
        for key in dropped:
            env.pop(key, None)
        before = {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
        os.environ.clear()
        os.environ.update(env)
        if any(env.get(k) != v for k, v in before.items()) and "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # gettempdir() looks again
        if hasattr(time, "tzset"):
            time.tzset()
        history = getattr(shell, "history_manager", None)
        if history is not None and isinstance(getattr(history, "dir_hist", None), list):
            history.dir_hist[:] = [pathlib.Path.cwd()]  # IPython's _dh starts at the cwd
        session = env.get("JPY_SESSION_NAME")
        if session:
            shell.user_ns["__session__"] = session
        else:
            shell.user_ns.pop("__session__", None)

    def handout(stream, idents, msg):
        # Runs on the control thread; the shell is idle or waiting at the gate.
        request = msg["metadata"].get("hotpot_km") or {}
        try:
            cwd = request.get("cwd")  # None: stay where the kernel started
            apply(launch_cwd if cwd is None else cwd, request.get("env", launch))
            kernel.control_handlers.pop("hotpot_km_handout_request", None)
            sys.modules.pop("_hotpot_km", None)
        except BaseException as error:
            # Never run a request's code half set up: exit now, the host restarts the kernel.
            try:
                print(f"hotpot_km: applying the request's cwd/env failed: {error!r}; "
                      "the kernel exits", file=sys.__stderr__, flush=True)
            finally:
                os._exit(1)
        kernel.session.send(stream, "hotpot_km_handout_reply", {"status": "ok"}, msg, idents)
        try:
            # open the gate once this message's idle status is published, so a client's
            # first request never sees a status of the handout after its own
            asyncio.get_running_loop().call_soon(release)
        except RuntimeError:
            release()

    def release():
        kernel.shell_handlers = handlers
        released.set_result(None)

    # IPython builds these on a kernel's first displayed result (tens of ms): here, in the
    # pool, rather than in the first request of whoever gets the kernel.
    shell.display_formatter.formatters
    getattr(shell, "logger", None)

    kernel.shell_handlers = Gated(handlers)
    kernel.control_handlers["hotpot_km_handout_request"] = handout
    module = types.ModuleType("_hotpot_km")
    module.import_modules = import_modules
    sys.modules["_hotpot_km"] = module


__hotpot_km_bootstrap()
del __hotpot_km_bootstrap
"""

PYTHON = Preparation(
    language="python",
    file_extension=".py",
    bootstrap=_PYTHON_BOOTSTRAP,
    import_modules='__import__("_hotpot_km").import_modules()',
    # the loader's and the C library's (not PATH: it is read again for each command) and
    # the numeric libraries' thread counts, and Python's own
    startup_env=LOADER_AND_LOCALE
    | NUMERIC_THREADS
    | frozenset(
        {
            # read by the interpreter at startup
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSAFEPATH",
            "PYTHONNOUSERSITE",
            "PYTHONUSERBASE",
            "PYTHONPLATLIBDIR",
            "PYTHONHASHSEED",
            "PYTHONOPTIMIZE",
            "PYTHONDEBUG",
            "PYTHONDONTWRITEBYTECODE",
            "PYTHONPYCACHEPREFIX",
            "PYTHONIOENCODING",
            "PYTHONUTF8",
            "PYTHONUNBUFFERED",
            "PYTHONWARNINGS",
            "PYTHONDEVMODE",
            "PYTHONMALLOC",
            "PYTHONFAULTHANDLER",
            "PYTHONTRACEMALLOC",
            "PYTHONINTMAXSTRDIGITS",
            "PYTHONNODEBUGRANGES",
            "PYTHONSTARTUP",
            "PYTHONBREAKPOINT",
            # read by debugpy when ipykernel imports it (a default it sets if missing)
            "PYDEVD_USE_FRAME_EVAL",
            # where the user site, IPython's profile (its config and startup files) and
            # the kernel's Jupyter config are read from while it starts
            "HOME",
            "IPYTHONDIR",
            "JUPYTER_CONFIG_DIR",
            "JUPYTER_CONFIG_PATH",
            "JUPYTER_DATA_DIR",
            "JUPYTER_PATH",
            "JUPYTER_PLATFORM_DIRS",
            "JUPYTER_PREFER_ENV_PATH",
            "JUPYTER_NO_CONFIG",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            # read once when the warm-up imports numeric libraries and matplotlib
            "NUMEXPR_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS",
            "OPENBLAS_L2_SIZE",
            "MPLBACKEND",
            "MPLCONFIGDIR",
        }
    ),
)
