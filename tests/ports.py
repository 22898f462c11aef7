"""A TCP port for a server the tests or benchmarks start, chosen where no kernel takes one.

Standard library only: used by the tests (``servers.py``) and by the benchmarks
(``benchmarks/environment.py``, no pytest there).
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def _worker_range(low: int, high: int) -> tuple[int, int]:
    """The part of ``[low, high)`` of this pytest-xdist worker (``gw<i>`` of ``n``), or all
    of it outside xdist: the workers of one run never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        index, count = int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    except (KeyError, ValueError):
        return low, high
    if not 0 <= index < count:
        return low, high
    size = (high - low) // count
    return low + index * size, low + (index + 1) * size


def free_port() -> int:
    """A free port for a server, below the OS's ephemeral range.

    A port from ``bind(0)`` is only free until someone binds it: a pooled kernel started
    before its server listens (``wait_at_startup``) takes its ports from the ephemeral
    range and may take exactly that one. The OS never hands out ports below the range,
    so only another explicit choice can collide: the port is checked free, taken from
    this test worker's share of the range, and chosen at random so parallel runs rarely
    meet.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    start, stop = _worker_range(10000, max(low, 10001))
    for _ in range(100):
        port = random.randrange(start, max(stop, start + 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")
