"""A TCP port for a server the tests or benchmarks start, chosen where no kernel takes one.

Standard library only: used by the tests (``servers.py``) and by the benchmarks
(``benchmarks/environment.py``, no pytest there).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A free port for a server, below the OS's ephemeral range.

    A port from ``bind(0)`` is only free until someone binds it: a pooled kernel started
    before its server listens (``wait_at_startup``) takes its ports from the ephemeral
    range and may take exactly that one. The OS never hands out ports below the range,
    so only another explicit choice can collide: the port is checked free, and chosen at
    random so parallel runs rarely meet.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    for _ in range(100):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")
