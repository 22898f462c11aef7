"""Where a user's pool service lives: files in the Jupyter runtime directory."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from jupyter_core.paths import jupyter_runtime_dir

#: Unix socket paths longer than this can't be bound (``sun_path`` is 108 bytes on Linux).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ServicePaths:
    """The socket, the lock held by the running service, and the autostarted service's log."""

    runtime_dir: str

    @classmethod
    def default(cls) -> ServicePaths:
        return cls(jupyter_runtime_dir())

    @property
    def socket(self) -> str:
        return os.path.join(self.runtime_dir, "hotpot-km.sock")

    @property
    def lock(self) -> str:
        return os.path.join(self.runtime_dir, "hotpot-km.lock")

    @property
    def log(self) -> str:
        return os.path.join(self.runtime_dir, "hotpot-km-service.log")

    def check(self) -> None:
        """Raise ``OSError`` with a clear message if the socket path can't be bound."""
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise OSError(
                f"the Jupyter runtime dir is too long for a Unix socket path ({self.socket}); "
                "set JUPYTER_RUNTIME_DIR to a shorter directory"
            )

    def check_private(self) -> None:
        """Raise ``OSError`` unless the runtime dir is this user's alone.

        Anyone who can write to it (a shared ``/tmp``, a group directory) or owns it could
        put their own socket, lock or log there: a service would trust them, and a client
        would send them its whole environment.
        """
        try:
            st = os.stat(self.runtime_dir)
        except FileNotFoundError:
            return  # created 0700 by whoever starts the service
        fix = "set JUPYTER_RUNTIME_DIR to a private directory (owned by you, mode 0700)"
        if st.st_uid != os.getuid():
            raise OSError(
                f"the Jupyter runtime dir {self.runtime_dir} belongs to uid {st.st_uid}, not to "
                f"this user (uid {os.getuid()}); {fix}"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(
                f"the Jupyter runtime dir {self.runtime_dir} can be written by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); {fix}"
            )


def open_private(path: str, flags: int) -> int:
    """Open (or create, 0600) a file of the service without following a symlink: a link
    planted in its place would make the service write wherever it points."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                error.errno, f"{path} is a symbolic link; remove it (the service makes its own)"
            ) from None
        raise
