"""The client-port pool of own-address mode (``tcpcopy --no-assistant``), sans-IO.

Replayed sessions leave the online host with the host's own address, so their
client ports share the port space of the host's own connections.  The pool
holds only ports the host's stack will not pick or is not using:

* outside ``ip_local_port_range`` (the kernel's ephemeral ports), at or above
  1024, and not a listening port nor a port live at start -- the io layer
  reads those facts and passes them in (:func:`pool_ports`);
* checked again against the host's live sockets at every allocation (the
  caller's ``busy`` predicate; a busy port is skipped, counted, and rests);
* a released port rests ``reuse_gap`` seconds (60: the target's TIME_WAIT)
  before any new session gets it, and ports are handed out least recently
  released first.  The rest applies towards every target, which is stricter
  than "not towards the same target" and keeps the pool a single queue.

Across restarts the pool does not start at its first port: it starts where a
pool used at its sustained rate (``size / reuse_gap`` per second) since the
epoch would be at the start time (``epoch``).  A previous process that stayed
within that rate used only the slots just before the new start, so the new
process reaches them last, after they have rested.

The pool's slots are (own address, port) pairs: with several own addresses
(``-c``) every port is available once per address, and the addresses take
turns.  An empty pool is not an error: :meth:`PortPool.acquire` returns None
and the caller counts ``port_pool_exhausted``.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Iterable, List, Optional, Sequence, Set, Tuple

Slot = Tuple[bytes, int]  # (own address, port)

REUSE_GAP = 60.0
PORT_LOW = 1024


def pool_ports(local_range: Tuple[int, int], excluded: Iterable[int]) -> List[int]:
    """Ports 1024..65535 outside ``local_range`` (inclusive bounds) and not in ``excluded``."""
    lo, hi = local_range
    if lo > hi:
        raise ValueError("bad ip_local_port_range %d %d" % (lo, hi))
    ex = set(excluded)
    return [p for p in range(PORT_LOW, 0x10000) if (p < lo or p > hi) and p not in ex]


def worker_port(port: int, index: int, count: int) -> int:
    """``--workers``: the port of worker ``index``'s class (of ``count``) that
    replaces ``port`` (1024..65535): the classes are ``(port - 1024) % count``,
    so no two workers ever pick the same client port.  The port itself when
    it is in the class, else the class's port in its block of ``count``
    ports (one block lower at the top of the range)."""
    if count <= 1:
        return port
    q = port - (port - PORT_LOW) % count + index
    return q if q <= 0xFFFF else q - count


def worker_ports(ports: Iterable[int], index: int, count: int) -> List[int]:
    """The pool ports of worker ``index`` of ``count``: its class only."""
    if count <= 1:
        return list(ports)
    return [p for p in ports if (p - PORT_LOW) % count == index]


def port_intervals(ports: Iterable[int]) -> List[Tuple[int, int]]:
    """Sorted ports as inclusive (first, last) intervals, for firewall rules and filters."""
    out: List[Tuple[int, int]] = []
    for p in sorted(set(ports)):
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def start_offset(epoch: float, size: int, reuse_gap: float = REUSE_GAP) -> int:
    """Where a pool of ``size`` slots starts when the process starts at wall time ``epoch``."""
    return int(epoch * size / reuse_gap) % size


class PortPool:
    """Least-recently-released-first (address, port) allocation with a reuse gap."""

    def __init__(self, addresses: Sequence[bytes], ports: Iterable[int],
                 reuse_gap: float = REUSE_GAP, epoch: Optional[float] = None) -> None:
        # (slot, time it may be used again); never-used slots are ready at once
        self._free: Deque[Tuple[Slot, float]] = deque(
            ((ip, p), float("-inf")) for p in ports for ip in addresses)
        if epoch is not None and self._free:  # the restart salt (module docstring)
            self._free.rotate(-start_offset(epoch, len(self._free), reuse_gap))
        self._held: Set[Slot] = set()
        self.reuse_gap = reuse_gap
        self.size = len(self._free)
        self.exhausted = 0
        self.busy_skipped = 0

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def held_count(self) -> int:
        return len(self._held)

    def ready_count(self, now: float) -> int:
        return sum(1 for _p, t in self._free if t <= now)

    def acquire(self, now: float, busy: Optional[Callable[[int], bool]] = None) -> Optional[Slot]:
        """(address, port) for a new session, or None (counted in ``exhausted``).

        ``busy(port)``: the host has a live socket on that port."""
        free = self._free
        for _ in range(len(free)):
            slot, ready_at = free[0]
            if ready_at > now:
                break  # the queue is in release order: nothing behind is ready either
            free.popleft()
            if busy is not None and busy(slot[1]):
                self.busy_skipped += 1
                free.append((slot, now + self.reuse_gap))
                continue
            self._held.add(slot)
            return slot
        self.exhausted += 1
        return None

    def release(self, slot: Slot, now: float) -> None:
        """The session on ``slot`` ended: it rests ``reuse_gap`` seconds."""
        if slot in self._held:
            self._held.remove(slot)
            self._free.append((slot, now + self.reuse_gap))
