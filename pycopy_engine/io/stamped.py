"""Captures whose packets carry the kernel's capture time (``--compare``).

``open_stamped_capture`` opens an AF_PACKET TPACKET_V3 ring (io/ring.py) that
sees both directions, and ``read_stamped`` hands each packet to
``handle(pkt, ts)`` with ``ts`` the kernel's timestamp (wall clock, seconds),
read from the ring's ``tpacket3_hdr``.  A capture that fell back to socket
reads gives ``ts`` None (the caller uses its read time).
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Optional

from .capture import open_packet_capture
from .ring import TP_STATUS_USER, PacketRingV3Capture

# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac, tp_net
_T3TS = struct.Struct("=IIIII4x2xH")
_V3BLK = struct.Struct("=III")
_ZERO4 = bytes(4)

StampedHandle = Callable[[Any, Optional[float]], Any]


def open_stamped_capture(ifaces: Optional[list], program: bytes, snaplen: int = 65535,
                         ring_bytes: int = 32 << 20, block_timeout_ms: int = 10) -> Any:
    """Packets carry their own time, so a block may wait ``block_timeout_ms``
    to fill: the ring then holds ~256 such periods, not 128 one-millisecond ones."""
    return open_packet_capture(ifaces, program, ignore_outgoing=False, snaplen=snaplen,
                               version=3, ring_bytes=ring_bytes,
                               block_timeout_ms=block_timeout_ms)


def read_stamped(cap: Any, handle: StampedHandle) -> int:
    if not isinstance(cap, PacketRingV3Capture):
        return int(cap.read_batch(lambda pkt: handle(pkt, None)))
    mm = cap._mm
    mv = cap._mv
    blocks = cap._blocks
    nblocks = len(blocks)
    unpack_blk = _V3BLK.unpack_from
    unpack = _T3TS.unpack_from
    b, left, off = cap._blk, cap._left, cap._off
    n = 0
    try:
        while n < cap.max_batch:
            if left == 0:
                boff = blocks[b]
                status, num, first = unpack_blk(mm, boff + 8)
                if not status & TP_STATUS_USER:
                    break
                if num == 0:
                    mv[boff + 8:boff + 12] = _ZERO4
                    b = b + 1 if b + 1 < nblocks else 0
                    continue
                left, off = num, boff + first
            nxt, sec, nsec, tp_snap, tp_len, net = unpack(mm, off)
            if tp_snap < tp_len and tp_snap < cap.snaplen:
                cap.truncated += 1
            start = off + net
            try:
                handle(mv[start:start + tp_snap], sec + nsec * 1e-9)
            finally:
                n += 1
                off += nxt
                left -= 1
                if left == 0:
                    boff = blocks[b]
                    mv[boff + 8:boff + 12] = _ZERO4
                    b = b + 1 if b + 1 < nblocks else 0
    finally:
        cap._blk, cap._left, cap._off = b, left, off
        cap._packets += n
    return n
