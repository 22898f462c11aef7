"""Per-language preparation of pooled kernels: the only place that knows a language.

A pooled kernel is started before anyone asks for it, so everything a request
decides (working directory, environment) must be applied afterwards, from
inside the kernel. Each language says here how, with *constant* code: the
request's values reach the kernel as JSON in the execute request's metadata
and are never spliced into source.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preparation:
    """How the pool prepares and hands out kernels of one language.

    ``bootstrap`` runs first in every pooled kernel and receives
    ``{"launch_env": ...}``; ``import_modules`` receives ``{"modules": [...]}``;
    ``handout`` receives ``{"cwd": ..., "env": ...}`` and must make the kernel
    look as if it had been started with them (``cwd`` ``None``: where it started).
    ``startup_env`` lists variables read only while the process starts (or while the
    warm-up imports run): a request that changes one of them cannot be served by a
    pooled kernel.
    """

    language: str
    file_extension: str
    bootstrap: str
    import_modules: str
    handout: str
    startup_env: frozenset[str] = field(default_factory=frozenset)


_PYTHON_BOOTSTRAP = """\
def __hotpot_km_bootstrap():
    import os, pathlib, sys, time, types

    shell = get_ipython()

    def data():
        return shell.kernel.get_parent()["metadata"]["hotpot_km"]

    launch = dict(data()["launch_env"])
    started = dict(os.environ)
    start_dir = os.getcwd()
    # What the kernel changed in its own environment while starting up; a cold
    # start with the request's env would do the same on top of that env.
    own = {k: v for k, v in started.items() if launch.get(k) != v}
    dropped = [k for k in launch if k not in started]

    def import_modules():
        import importlib

        for name in data()["modules"]:
            importlib.import_module(name)

    def handout():
        request = data()
        os.chdir(start_dir if request["cwd"] is None else request["cwd"])
        env = dict(request["env"])
        for key, value in own.items():
            # A value the kernel overwrote is overwritten again; a value it only
            # added as a default gives way to the request's own.
            if key in launch or key not in env:
                env[key] = value
        for key in dropped:
            env.pop(key, None)
        os.environ.clear()
        os.environ.update(env)
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
        sys.modules.pop("_hotpot_km", None)

    module = types.ModuleType("_hotpot_km")
    module.import_modules = import_modules
    module.handout = handout
    sys.modules["_hotpot_km"] = module


__hotpot_km_bootstrap()
del __hotpot_km_bootstrap
"""

PYTHON = Preparation(
    language="python",
    file_extension=".py",
    bootstrap=_PYTHON_BOOTSTRAP,
    import_modules='__import__("_hotpot_km").import_modules()',
    handout='__import__("_hotpot_km").handout()',
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

_PREPARATIONS = {p.language: p for p in (PYTHON,)}

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
    return _PREPARATIONS.get((language or "").lower())


def init_file_extension(language: str | None, reported: str | None = None) -> str | None:
    """Extension of ``kernel_pool_init_<name>.<ext>``: the kernel's own ``language_info`` wins."""
    if reported:
        return reported if reported.startswith(".") else f".{reported}"
    prep = preparation_for(language)
    return prep.file_extension if prep else _EXTENSIONS.get((language or "").lower())
