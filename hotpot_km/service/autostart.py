"""Starting the user's pool service in the background on first use, as build daemons do.

Opt-in, per kernelspec (``hotpot-km kernelspec install --autostart``). Race-free:
the service holds an exclusive lock on ``hotpot-km.lock`` for its whole life, so of
two runners that start one at the same moment, one service keeps running and the
other exits at once; a runner that finds the lock held starts nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading

from .paths import ServicePaths

#: Pool size of an autostarted service whose configuration sets no kernel_pools.
AUTOSTART_POOL = 2


def lock_is_held(path: str) -> bool:
    """Whether a service holds (or is taking) the service lock at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
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
    if lock_is_held(paths.lock):
        return "the pool service is starting"
    argv = [
        sys.executable,
        "-m",
        "hotpot_km",
        "serve",
        f"--ServeApp.idle_timeout={idle_timeout:g}",
        "--ServeApp.exit_if_running=True",
        f"--ServeApp.default_pools={json.dumps({kernel_name: AUTOSTART_POOL})}",
    ]
    with open(paths.log, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=paths.runtime_dir,
            start_new_session=True,
        )
    threading.Thread(target=process.wait, name="hotpot_km service reaper", daemon=True).start()
    return f"started the pool service in the background (pid {process.pid}, log {paths.log})"
