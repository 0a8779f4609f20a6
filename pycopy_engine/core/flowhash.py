"""Which worker a packet belongs to when every worker reads the same capture
file (``tcpcopy --workers N`` offline), sans-IO.

A flow's slot is a symmetric hash of its two endpoints (the same for both
directions; CPython's hash of a tuple of ints, which no hash seed changes)
modulo N: each worker replays only the packets of its slot, so
every flow is replayed once, by one worker.  Live captures are shared by the
kernel (PACKET_FANOUT) instead.  Packets that are not IPv4 TCP, or too short
to say, go to slot 0 (where they are counted and dropped as usual).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

_ADDRS = struct.Struct("!II")  # source, destination address at offset 12
_PORTS = struct.Struct("!HH")


def flow_slot(pkt: bytes | memoryview, count: int) -> int:
    """The slot (0..count-1) of the IPv4/TCP packet ``pkt`` (from the IP header)."""
    if count <= 1 or len(pkt) < 24 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return 0
    ihl = (pkt[0] & 0x0F) << 2
    if ihl < 20 or len(pkt) < ihl + 4:
        return 0
    src, dst = _ADDRS.unpack_from(pkt, 12)
    sport, dport = _PORTS.unpack_from(pkt, ihl)
    a = (src << 16) | sport
    b = (dst << 16) | dport
    # a tuple of ints hashes the same in every process (no hash seed for ints)
    return hash((a, b) if a < b else (b, a)) % count


def own_flows(
    packets: Iterable[tuple[float, Any]], index: int, count: int
) -> Iterator[tuple[float, Any]]:
    """The ``(timestamp, packet)`` pairs of slot ``index`` out of a capture's
    pairs, for a worker's pacer: the capture's first and last pairs always
    come out, their packet replaced by None when it is another slot's, so
    the pacer's schedule (its start, and the end of a round) is the whole
    file's.  Without an idle-gap skip (-I) the release times are then those
    of the whole file; the other slots' packets cost a hash, not a pacing."""
    it = iter(packets)
    item = next(it, None)
    if item is None:
        return
    ts, pkt = item
    yield item if flow_slot(pkt, count) == index else (ts, None)
    last_own, last_ts = True, ts
    for ts, pkt in it:
        if flow_slot(pkt, count) == index:
            yield ts, pkt
            last_own = True
        else:
            last_own, last_ts = False, ts
    if not last_own:
        yield last_ts, None
