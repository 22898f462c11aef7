"""Starting the user's pool service in the background on first use, as build daemons do.

Opt-in, per kernelspec (``hotpot-km kernelspec install --autostart``). Race-free:
the service holds an exclusive lock on ``hotpot-km.lock`` for its whole life, so of
two runners that start one at the same moment, one service keeps running and the
other exits at once; a runner that finds the lock held starts nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading

from .paths import ServicePaths, open_private

#: Pool size of an autostarted service whose configuration sets no kernel_pools.
AUTOSTART_POOL = 2


def lock_is_held(path: str) -> bool:
    """Whether a service holds (or is taking) the service lock at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(error.errno, f"{path} is a symbolic link; remove it") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start_service(paths: ServicePaths, idle_timeout: float, kernel_name: str) -> str:
    """Start ``hotpot-km serve`` detached, unless one is starting; return what happened.

    Without ``kernel_pools`` in the user's configuration, it pools ``kernel_name``.

    The service gets its own session and writes to its log file, so it holds none of
    the runner's terminal or pipes; a thread of the runner reaps it when it exits.
    """
    os.makedirs(paths.runtime_dir, mode=0o700, exist_ok=True)
    try:
        paths.check_private()
        if lock_is_held(paths.lock):
            return "the pool service is starting"
    except OSError as error:
        return f"not starting the pool service: {error}"
    argv = [
        sys.executable,
        # never import from the cwd or the script's dir: see the cwd below
        *(["-P"] if sys.version_info >= (3, 11) else []),
        "-m",
        "hotpot_km",
        "serve",
        f"--ServeApp.idle_timeout={idle_timeout:g}",
        "--ServeApp.exit_if_running=True",
        f"--ServeApp.default_pools={json.dumps({kernel_name: AUTOSTART_POOL})}",
    ]
    try:
        log = open_private(paths.log, os.O_WRONLY | os.O_APPEND)
    except OSError as error:
        return f"not starting the pool service: {error}"
    try:
        # A neutral cwd: `python -m` imports from the cwd first (before Python 3.11's -P),
        # and a hotpot_km/ planted in a runtime dir must never run.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(log)
    threading.Thread(target=process.wait, name="hotpot_km service reaper", daemon=True).start()
    return f"started the pool service in the background (pid {process.pid}, log {paths.log})"
