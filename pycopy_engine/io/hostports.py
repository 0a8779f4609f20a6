"""The host's port facts own-address mode needs (reads /proc only).

``ip_local_port_range``, the listening TCP ports and the local ports of every
live TCP socket (IPv4 and IPv6), in the current network namespace.
"""

from __future__ import annotations

import time

PROC_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"


def local_port_range(path: str = PROC_RANGE) -> tuple[int, int]:
    with open(path) as f:
        lo, hi = f.read().split()[:2]
    return int(lo), int(hi)


def _ports(paths: tuple[str, ...], listening_only: bool) -> set[int]:
    out: set[int] = set()
    for p in paths:
        try:
            with open(p) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) < 4 or (listening_only and parts[3] != LISTEN):
                        continue
                    out.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return out


def listening_ports(paths: tuple[str, ...] = PROC_TCP) -> set[int]:
    return _ports(paths, True)


def live_ports(paths: tuple[str, ...] = PROC_TCP) -> set[int]:
    """Local ports of every TCP socket, in any state (TIME_WAIT included)."""
    return _ports(paths, False)


class LivePorts:
    """``busy(port)`` for the pool: the live sockets, re-read at most every ``max_age`` s."""

    def __init__(self, max_age: float = 1.0, paths: tuple[str, ...] = PROC_TCP) -> None:
        self.max_age = max_age
        self.paths = paths
        self._ports: set[int] = set()
        self._read_at = float("-inf")

    def __call__(self, port: int) -> bool:
        now = time.monotonic()
        if now - self._read_at >= self.max_age:
            self._ports = live_ports(self.paths)
            self._read_at = now
        return port in self._ports
