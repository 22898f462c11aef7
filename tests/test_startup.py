"""How test servers start: on ports kernels can't take."""

from __future__ import annotations

import socket
from pathlib import Path

from servers import free_port


def test_server_ports_are_below_the_ephemeral_range():
    """Kernels bind their ports in the ephemeral range; a server port from there could be
    taken by a pooled kernel before the server listens."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert 1024 < port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
