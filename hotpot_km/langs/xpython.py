"""Python without ipykernel (xeus-python): no control thread to gate the shell, so the
handout is constant Python run before the host gets the kernel, reading the file."""

from __future__ import annotations

import dataclasses

from .base import Preparation
from .common import PROCESS_START
from .python import PYTHON

_BOOTSTRAP = """\
def __hotpot_km_bootstrap():
    import os

    fd = os.open(os.environ["HOTPOT_KM_HANDOUT"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(k + b"=" + v + b"\\0" for k, v in os.environb.items()))


__hotpot_km_bootstrap()
del __hotpot_km_bootstrap
"""

# Both handouts' last part: the environment becomes the handout's fields (b"KEY=value",
# after the cwd's), and the time zone follows TZ.
_SET_ENV = """\
    env = dict(field.split(b"=", 1) for field in fields[1:])
    os.environb.clear()
    os.environb.update(env)
    if hasattr(time, "tzset"):
        time.tzset()
"""

_APPLY = (
    """\
def __hotpot_km_apply():
    import os, time

    path = os.environ["HOTPOT_KM_HANDOUT"]
    with open(path, "rb") as f:
        fields = f.read().split(b"\\0")[:-1]
    os.chdir(fields[0])
"""
    + _SET_ENV
    + """\
    os.remove(path)


__hotpot_km_apply()
del __hotpot_km_apply
"""
)

# python_imports: the module names arrive as JSON in the step's data file (xeus-python
# can't read a request's metadata); imported into sys.modules, nothing bound in globals.
_IMPORT_MODULES = """\
def __hotpot_km_imports():
    import importlib, json, os

    path = os.environ["HOTPOT_KM_HANDOUT"] + ".init"
    with open(path, encoding="utf-8") as f:
        names = json.load(f)["modules"]
    os.remove(path)
    for name in names:
        importlib.import_module(name)


__hotpot_km_imports()
del __hotpot_km_imports
"""

XPYTHON = Preparation(
    language="xpython",
    spec_language="python",
    executables=frozenset({"xpython", "xpython_launcher"}),
    file_extension=".py",
    bootstrap=_BOOTSTRAP,
    import_modules=_IMPORT_MODULES,
    apply=_APPLY,
    remote="xpython (gateway)",
    startup_env=PYTHON.startup_env | PROCESS_START,
)

# On a remote gateway the pool can't share a file with the kernel: the same exchange goes
# through input(), which xeus-python forwards as an input request on the stdin channel
# (R's way, langs/r.py). The bootstrap's prompt is the environment, the handout's one line
# of input the cwd and the new environment: JSON lists of base64 fields, parsed with json,
# never evaluated. ``builtins.input``: an init file's own ``input`` can't stand in for it.
_STDIN_BOOTSTRAP = """\
def __hotpot_km_bootstrap():
    import base64, builtins, json, os

    fields = [base64.b64encode(k + b"=" + v).decode("ascii") for k, v in os.environb.items()]
    builtins.input(json.dumps(fields))


__hotpot_km_bootstrap()
del __hotpot_km_bootstrap
"""

_STDIN_APPLY = (
    """\
def __hotpot_km_apply():
    import base64, builtins, json, os, time

    fields = [base64.b64decode(field) for field in json.loads(builtins.input())]
    if fields[0]:
        os.chdir(fields[0])
"""
    + _SET_ENV
    + """\


__hotpot_km_apply()
del __hotpot_km_apply
"""
)

#: xeus-python kernels on a remote gateway: the handout's data through the stdin channel.
#: ``python_imports`` don't reach them (their module names travel in a file): use an init
#: file there.
XPYTHON_GATEWAY = dataclasses.replace(
    XPYTHON,
    language="xpython (gateway)",
    # served by remote_language only: never matched to a kernelspec of its own
    spec_language=None,
    executables=frozenset(),
    bootstrap=_STDIN_BOOTSTRAP,
    import_modules="",
    apply=_STDIN_APPLY,
    stdin=True,
    remote=None,
)
