"""Where a user's pool service lives: files in the Jupyter runtime directory."""

from __future__ import annotations

import os
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
