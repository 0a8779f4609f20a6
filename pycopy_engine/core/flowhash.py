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
