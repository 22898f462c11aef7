"""Running a command as a normal user, whose file modes are enforced (root ignores them).

When the suite runs as a normal user, that is the user itself. As root, it is a system
user created for the tests (``useradd``); its commands run through ``setpriv``, and when
this Python sits behind a directory others can't search (e.g. a ``/root/.pyenv`` behind a
0700 ``/root``), in a mount namespace of their own in which it is reachable, so the same
interpreter and venv serve it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

NAME = "hotpot-km-test"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    name: str


@cache
def account() -> Account:
    """The normal user commands run as (created once, when running as root)."""
    if os.getuid() != 0:
        return Account(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)
    try:
        entry = pwd.getpwnam(NAME)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", NAME],
            check=True, capture_output=True,
        )
        entry = pwd.getpwnam(NAME)
    return Account(entry.pw_uid, entry.pw_gid, NAME)


def private_dir(prefix: str = "hotpot-km-user-") -> Path:
    """A fresh 0700 directory owned by the account (remove it with :func:`remove`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    user = account()
    os.chown(path, user.uid, user.gid)
    return path


def own(*paths: Path) -> None:
    """Give ``paths`` (and what is under them) to the account."""
    user = account()
    for top in paths:
        for path in [top, *top.rglob("*")]:
            os.lchown(path, user.uid, user.gid)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _hidden() -> dict[Path, set[str]]:
    """Directories other users can't search on the way to this Python and checkout, and the
    child of each that the account must reach."""
    hidden: dict[Path, set[str]] = {}
    for target in {Path(sys.executable).resolve(), Path(sys.prefix), Path(__file__).parents[1]}:
        parts = target.parts
        for i in range(1, len(parts) - 1):
            here = Path(*parts[:i])
            if not os.stat(here).st_mode & stat.S_IXOTH:
                hidden.setdefault(here, set()).add(parts[i])
                break
    return hidden


@cache
def _stash() -> str:
    """Where the namespace keeps the hidden directories while it covers them."""
    return tempfile.mkdtemp(prefix="hotpot-km-stash-")


def command(argv: list[str]) -> list[str]:
    """``argv`` as run by the account."""
    if os.getuid() != 0:
        return argv
    user = account()
    drop = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    hidden = _hidden()
    if not hidden:  # no mount namespace needed
        return [*drop, *argv]
    script = ["set -e"]
    stash = _stash()
    for i, (top, children) in enumerate(sorted(hidden.items())):
        keep = f"{stash}/{i}"
        script += [f"mkdir -p {keep}", f"mount --bind {shlex.quote(str(top))} {keep}",
                   f"mount -t tmpfs -o mode=0755 hotpot-km-test {shlex.quote(str(top))}"]
        for child in sorted(children):
            inside = shlex.quote(f"{top}/{child}")
            script += [f"mkdir -p {inside}", f"mount --bind {keep}/{shlex.quote(child)} {inside}"]
    script.append(f'exec {shlex.join(drop)} "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            "\n".join(script), "sh", *argv]


def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(command(argv), **kwargs)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(command(argv), **kwargs)


def user_env(base: Path, **extra: str) -> dict[str, str]:
    """An environment of the account's own: HOME and Jupyter dirs under ``base`` (which it
    owns), this venv first on PATH, and this test's kernel marker."""
    dirs = {name: base / name for name in ("home", "config", "data", "runtime")}
    for path in dirs.values():
        path.mkdir(mode=0o700, exist_ok=True)
    own(*dirs.values())
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": str(dirs["home"]),
        "USER": account().name,
        "LANG": "C.UTF-8",
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_PREFER_ENV_PATH": "0",
        "IPYTHONDIR": str(dirs["home"] / ".ipython"),
    }
    marker = os.environ.get("HOTPOT_KM_TEST_MARKER")
    if marker:
        env["HOTPOT_KM_TEST_MARKER"] = marker
    if os.environ.get("HOTPOT_KM_TEST_FORK"):
        env["HOTPOT_KM_TEST_FORK"] = os.environ["HOTPOT_KM_TEST_FORK"]
    return {**env, **extra}
