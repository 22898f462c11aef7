"""The handout of kernels that can't receive the pool's control message, through a file.

Such a kernel is launched with :data:`HANDOUT_FILE_VAR` naming a file only the pool and
the kernel know (in the Jupyter runtime directory). Its language's bootstrap writes the
kernel's environment there as it stands after start-up; at handout the pool computes the
environment a cold start with the request's env would have, writes it with the request's
cwd to the same file, and runs the language's constant ``apply`` code, which reads the
file, changes directory, replaces the *whole* environment and, as its last step, deletes
the file: the pool takes a file still there as a failed handout, whatever the reply
said. Values are data from end to end: no request value is ever part of code.

File format, both ways: NUL-terminated fields; the kernel's dump is ``KEY=value`` fields,
the handout is the cwd and then ``KEY=value`` fields (no value can hold a NUL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from jupyter_core.paths import jupyter_runtime_dir

#: Environment variable that tells a pooled kernel where its handout file is.
HANDOUT_FILE_VAR = "HOTPOT_KM_HANDOUT"

#: Variables a process or shell keeps for itself: never carried from the warm kernel into
#: the handed-out one's environment as "the kernel's own".
PER_PROCESS = frozenset({HANDOUT_FILE_VAR, "_"})


def new_handout_path() -> str:
    """A fresh handout file name in the user's private Jupyter runtime directory."""
    runtime = jupyter_runtime_dir()
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    return os.path.join(runtime, f"hotpot_km-{uuid.uuid4().hex}.handout")


def read_env_dump(path: str) -> dict[str, str]:
    """The kernel's environment as its bootstrap wrote it."""
    with open(path, "rb") as f:
        data = f.read()
    env: dict[str, str] = {}
    for field in data.split(b"\0"):
        key, sep, value = field.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def handout_env(
    started: Mapping[str, str],
    launch: Mapping[str, str],
    request: Mapping[str, str],
    per_process: frozenset[str] = frozenset(),
    cwds: tuple[str | None, str] = (None, ""),
) -> dict[str, str]:
    """The environment a cold start with ``request``'s env would show, given what a kernel
    launched with ``launch`` showed after start-up (``started``): what the runtime set or
    changed itself is set again, what it removed stays removed. The same rule as the Python
    bootstrap's. ``cwds`` is
    (launch cwd, request cwd): a ``PWD`` the runtime set to its working directory (R's
    front end is a shell script) names the request's."""
    skip = PER_PROCESS | per_process
    own = {k: v for k, v in started.items() if launch.get(k) != v and k not in skip}
    if own.get("PWD") is not None and own["PWD"] == cwds[0]:
        own["PWD"] = cwds[1]
    env = dict(request)
    # The kernel was launched with only what is fixed at its start (request.launch_env), so
    # whatever else it shows it set itself, as it would over the request's env: a default it
    # sets only when a variable is missing belongs in its language's ``startup_env``.
    env.update(own)
    for key in launch:
        if key not in started and key not in skip:
            env.pop(key, None)
    return env


def write_handout(path: str, cwd: str, env: Mapping[str, str]) -> None:
    """Write the handout for the kernel (readable by the pool's user only)."""
    fields = [os.fsencode(cwd)] + [os.fsencode(f"{k}={v}") for k, v in env.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(field + b"\0" for field in fields))


def init_path(path: str) -> str:
    """Where an init step's code goes for a language's ``run_init`` (next to the handout
    file, which the kernel names by :data:`HANDOUT_FILE_VAR`)."""
    return path + ".init"


def write_init(path: str, code: str) -> None:
    """Write one init step's code for the kernel (readable by the pool's user only)."""
    fd = os.open(init_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(code)


def init_outcome(path: str, code: str) -> str | None:
    """``None`` if the kernel ran the init step (its file is gone), else why not: the
    message the kernel wrote there, or that it never got to the end of the step."""
    try:
        with open(init_path(path), encoding="utf-8", errors="replace") as f:
            left = f.read()
    except FileNotFoundError:
        return None
    remove(init_path(path))
    if left == code or not left.strip():
        return "the kernel did not finish it (an exit, or the handout file was changed)"
    return left.strip()


def remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def discard(path: str) -> None:
    """Remove the handout file and an init step's file the kernel left behind."""
    remove(path)
    remove(init_path(path))


def prepare_handout(
    path: str,
    per_process: frozenset[str],
    launch: Mapping[str, str],
    cwds: tuple[str | None, str],
    request: Mapping[str, str],
) -> None:
    """Replace the kernel's dump at ``path`` by the handout of ``cwd`` and ``request``'s env
    (blocking file I/O: run it off the event loop); ``cwds``: (launch cwd, request cwd)."""
    started = read_env_dump(path)
    write_handout(path, cwds[1], handout_env(started, launch, request, per_process, cwds))
