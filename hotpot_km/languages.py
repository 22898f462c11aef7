"""Per-language preparation of pooled kernels: the only place that knows a language.

A pooled kernel is started before anyone asks for it, so everything a request
decides (working directory, environment) must be applied afterwards, from
inside the kernel. Each language says here how, with *constant* code: the
request's values reach the kernel as JSON in the execute request's metadata
and are never spliced into source.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Message type of the handout, sent on the control channel (see :class:`Preparation`).
HANDOUT_REQUEST = "hotpot_km_handout_request"
HANDOUT_REPLY = "hotpot_km_handout_reply"


@dataclass(frozen=True)
class Preparation:
    """How the pool prepares and hands out kernels of one language.

    ``bootstrap`` runs first in every pooled kernel and receives
    ``{"launch_env": ...}``; ``import_modules`` receives ``{"modules": [...]}`` (a language
    whose handout goes through a file gets such data as JSON in the file
    :func:`~hotpot_km.langs.handout.init_path` names instead, and removes it).
    The bootstrap must also install, in the kernel, a handler for
    :data:`HANDOUT_REQUEST` control messages and a gate on the shell channel: until
    the handout is applied, shell requests of anyone but the pool wait. The handout
    carries ``{"cwd": ..., "env": ...}`` (or nothing, meaning the launch's own values;
    ``cwd`` ``None``: where the kernel started) and must make the kernel look as if it
    had been started with them; if applying fails, the kernel must exit at once.
    ``startup_env`` lists variables read only while the process starts (or while the
    warm-up imports run): a request that changes one of them cannot be served by a
    pooled kernel.

    A pooled kernel's process is launched with only the kernelspec's ``env``, the
    ``startup_env`` variables of the pool's env and, for a program found on the
    ``PATH``, ``PATH`` (:func:`hotpot_km.request.launch_env`); the bootstrap's
    ``launch_env`` is exactly that. The handout's ``env`` is the request's whole final
    env, a superset of ``launch_env`` with equal values: the handout replaces the
    kernel's environment with it, keeps what the kernel itself set or removed while
    starting (compared with ``launch_env``), and makes the language's runtime see the
    change (Python: ``os.environ``, ``time.tzset()``, ``tempfile``'s cached directory),
    so children it spawns get it too.
    """

    language: str
    file_extension: str
    bootstrap: str
    import_modules: str
    startup_env: frozenset[str] = field(default_factory=frozenset)
    #: Constant code run (silently, on the shell channel) at handout by kernels that can't
    #: receive a control message: the pool runs it before the host gets the kernel, with the
    #: request's values in a file (see :mod:`hotpot_km.langs.handout`). Empty: the
    #: control-message handout above.
    apply: str = ""
    #: The kernelspec ``language`` this preparation serves, when it is not ``language``
    #: itself (xeus-python's kernelspec says ``python``).
    spec_language: str | None = None
    #: Basenames of which one must be in the kernelspec's ``argv`` (its program or module,
    #: e.g. ``xpython_launcher``) for this preparation to serve it; empty: any kernel of
    #: ``spec_language``.
    executables: frozenset[str] = field(default_factory=frozenset)
    #: Variables the bootstrap's view of the environment shows that the kernel itself does
    #: not hold (e.g. a shell's ``PWD`` when the dump goes through ``/bin/sh``).
    per_process_env: frozenset[str] = field(default_factory=frozenset)
    #: Whether the pool runs init code (``initialization_code``, init files) silently. Off
    #: for kernels that report an error only to code that is not silent (IRkernel answers
    #: ``ok`` to silent code that failed); history is never stored either way.
    init_silent: bool = True
    #: Constant code that runs one init step for kernels that answer ``ok`` to code that
    #: failed (bash_kernel looks only at the last command's status, octave_kernel at
    #: nothing): the pool writes the step's code to :func:`~hotpot_km.langs.handout.init_path`
    #: of the handout file, and this code runs it in the user's namespace, then removes the
    #: file if it ran without error, or writes why it failed there instead. A file still
    #: there after the reply fails the warm-up. Only for :attr:`handout_by_file` languages;
    #: empty: the init code runs as it is and the reply's status tells.
    run_init: str = ""
    #: Whether :attr:`bootstrap` and :attr:`apply` exchange their data with the pool through
    #: input requests (the stdin channel) instead of a file: for kernels on another machine
    #: (a remote gateway). The bootstrap asks for input with the kernel's environment for
    #: its prompt (the pool answers an empty line); :attr:`apply` asks for one line and gets
    #: the cwd (empty: stay) and the new environment. Both are the handout file's fields, as
    #: a JSON list of base64 strings. Both run silently or not as :attr:`init_silent` says,
    #: so that an error is reported.
    stdin: bool = False
    #: For :attr:`stdin` kernels that read their input through a terminal (octave_kernel),
    #: whose lines hold at most 4095 bytes: the pool answers :attr:`apply` in lines of at
    #: most this many characters, then an empty line, which the code concatenates. 0: one
    #: line, whatever its length.
    stdin_line_max: int = 0
    #: For :attr:`stdin` kernels that answer ``ok`` to code that failed (octave_kernel): the
    #: prompt of the input request :attr:`apply` makes as its last step, once everything is
    #: applied; a handout that never asks it failed. Empty: the reply's status tells.
    stdin_done: str = ""
    #: The ``language`` of the preparation that serves this language's kernels on a remote
    #: gateway, where the handout file can't reach them (one with :attr:`stdin`); ``None``:
    #: such kernels serve only requests with the pool's own cwd/env there.
    remote: str | None = None

    @property
    def handout_by_file(self) -> bool:
        """Whether the handout is the :attr:`apply` code and a file, not a control message."""
        return bool(self.apply) and not self.stdin

    def serves(self, language: str | None, argv: Sequence[str]) -> bool:
        """Whether kernels of a kernelspec with this ``language`` and ``argv`` are prepared here."""
        if (language or "").lower() != (self.spec_language or self.language).lower():
            return False
        return not self.executables or any(
            os.path.basename(arg) in self.executables for arg in argv
        )


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
    startup_env=frozenset(
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
            # read by the dynamic loader and the C library at startup
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LANG",
            "LANGUAGE",
            "LC_ALL",
            "LC_CTYPE",
            # read once when the warm-up imports numeric libraries and matplotlib
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS",
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
            "MPLBACKEND",
            "MPLCONFIGDIR",
        }
    ),
)

#: Entry point group of language preparations: ``name = "module:PREPARATION"``, each a
#: :class:`Preparation` whose ``language`` is ``name`` (see docs/languages.md).
ENTRY_POINT_GROUP = "hotpot_km.languages"

log = logging.getLogger(__name__)


@functools.cache
def _preparations() -> dict[str, Preparation]:
    """Every known preparation by ``language``: the built-in ones, then the entry points
    (read once per process; a broken one is logged and left out)."""
    from .langs import BUILTIN

    found = {p.language: p for p in (PYTHON, *BUILTIN)}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            prep = entry.load()
        except Exception:
            log.exception("hotpot_km: language entry point %r failed to load", entry.name)
            continue
        if not isinstance(prep, Preparation) or prep.language != entry.name:
            log.error(
                "hotpot_km: language entry point %r is not a Preparation whose language is %r",
                entry.name,
                entry.name,
            )
            continue
        found.setdefault(prep.language, prep)  # the built-in ones are registered as themselves
    return found


def kernel_language(language: str | None, argv: Sequence[str]) -> str | None:
    """The pool's name for the language of a kernelspec (``language``, ``argv``): the
    preparation that serves it, preferring one limited to the spec's program; else the
    kernelspec's own language."""
    preps = sorted(_preparations().values(), key=lambda p: not p.executables)
    for prep in preps:
        if prep.serves(language, argv):
            return prep.language
    return language


def remote_language(language: str | None) -> str | None:
    """The pool's name for the language of a kernel another machine runs: the file of
    :attr:`Preparation.apply` would be on this machine, so a language whose handout goes
    through one is served there by its :attr:`Preparation.remote` preparation (data through
    the stdin channel), if it has one; else it goes cold on a cwd/env change."""
    prep = preparation_for(language)
    if prep is not None and prep.handout_by_file:
        return prep.remote or f"{language} (remote)"
    return language


#: Init-file extensions for languages the pool cannot hand out with a new cwd/env.
_EXTENSIONS = {
    "python": ".py",
    "r": ".R",
    "julia": ".jl",
    "javascript": ".js",
    "typescript": ".ts",
    "scala": ".scala",
    "java": ".java",
    "c++": ".cpp",
    "c": ".c",
    "ruby": ".rb",
    "bash": ".sh",
    "sql": ".sql",
    "octave": ".m",
    "matlab": ".m",
    "go": ".go",
    "rust": ".rs",
}


def preparation_for(language: str | None) -> Preparation | None:
    """How to prepare kernels of a kernelspec ``language``; ``None``: cwd/env can't be applied."""
    return _preparations().get((language or "").lower())


def init_file_extension(language: str | None, reported: str | None = None) -> str | None:
    """Extension of ``kernel_pool_init_<name>.<ext>``: a prepared language's own (IRkernel
    reports ``.r``, the files are ``.R``), else the kernel's ``language_info``'s."""
    prep = preparation_for(language)
    if prep is not None:
        return prep.file_extension
    if reported:
        return reported if reported.startswith(".") else f".{reported}"
    return _EXTENSIONS.get((language or "").lower())
