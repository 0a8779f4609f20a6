"""Which worker a packet belongs to when every worker reads the same capture
file (``tcpcopy --workers N`` offline), sans-IO.

A flow's slot is a symmetric hash of its two endpoints (the same for both
directions) modulo N: each worker replays only the packets of its slot, so
every flow is replayed once, by one worker.  Live captures are shared by the
kernel (PACKET_FANOUT) instead.  Packets that are not IPv4 TCP, or too short
to say, go to slot 0 (where they are counted and dropped as usual).
"""

from __future__ import annotations

import zlib


def flow_slot(pkt: bytes | memoryview, count: int) -> int:
    """The slot (0..count-1) of the IPv4/TCP packet ``pkt`` (from the IP header)."""
    if count <= 1 or len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return 0
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl + 4:
        return 0
    a = bytes(pkt[12:16]) + bytes(pkt[ihl : ihl + 2])  # source address and port
    b = bytes(pkt[16:20]) + bytes(pkt[ihl + 2 : ihl + 4])  # destination
    return zlib.crc32(a + b if a <= b else b + a) % count
