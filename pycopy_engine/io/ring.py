"""AF_PACKET ``PACKET_RX_RING`` captures: packets read from an mmap'd ring, no syscall.

* :class:`PacketRingCapture` -- TPACKET_V2, fixed-size frames, each handed
  over as soon as it is filled.
* :class:`PacketRingV3Capture` -- TPACKET_V3, variable-size packets packed
  into blocks, handed over when a block is full or its timer expires.

:func:`ring_v2` and :func:`ring_v3` size a ring and set it up on an
AF_PACKET/SOCK_DGRAM socket; :func:`pycopy_engine.io.capture.open_packet_capture`
chooses between them and falls back to socket reads when the ring cannot be
set up.
"""

from __future__ import annotations

import mmap
import socket
import struct
from time import monotonic as _monotonic

from pycopy_engine.io.capture_base import (
    SOL_PACKET,
    Capture,
    Fanout,
    Handle,
    join_fanout,
    update_packet_stats,
)
from pycopy_engine.io.ringplan import plan_v2, plan_v3

PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_USER = 1

# struct tpacket2_hdr: status, len, snaplen, mac, net (first 16 bytes)
_T2HDR = struct.Struct("=IIIHH")
TPACKET2_HDRLEN = 32 + 20  # TPACKET_ALIGN(sizeof tpacket2_hdr) + sizeof sockaddr_ll
NETOFF_DGRAM = ((TPACKET2_HDRLEN + 15) & ~15) + 16  # where the IP header lands: 80
# struct tpacket3_hdr: next_offset, (sec, nsec), snaplen, len, (status, mac), net
_T3HDR = struct.Struct("=I8xII4x2xH")
# struct tpacket_hdr_v1 at offset 8 of a block: block_status, num_pkts, offset_to_first_pkt
_V3BLK = struct.Struct("=III")
_ZERO4 = b"\0\0\0\0"


class _MmapRing(Capture):
    """Common part of the two ring kinds: the mapping and its release."""

    def _map(self, req: bytes, ring_bytes: int) -> None:
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.ring_bytes = ring_bytes
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self._mm = mmap.mmap(self.sock.fileno(), ring_bytes, mmap.MAP_SHARED, prot)
        self._mv = memoryview(self._mm)

    def kernel_stats(self) -> dict[str, int]:
        update_packet_stats(self)
        return super().kernel_stats()

    def close_ring(self) -> None:
        """Unmap the ring (the socket stays open)."""
        try:
            self._mv.release()
            self._mm.close()
        except BufferError:
            pass  # a handler kept a packet view: the mapping dies with it

    def close(self) -> None:
        if self._closed:
            return
        self.close_ring()
        super().close()


class PacketRingCapture(_MmapRing):
    """AF_PACKET + PACKET_RX_RING, TPACKET_V2: fixed-size frames, each handed
    over as soon as it is filled (no added latency)."""

    kind = "packet-ring"

    def __init__(
        self,
        sock: socket.socket,
        snaplen: int,
        frame_size: int,
        block_size: int,
        block_nr: int,
        max_batch: int,
    ) -> None:
        super().__init__(sock, snaplen)
        per_block = block_size // frame_size
        self.frame_nr = per_block * block_nr
        self.frame_size = frame_size
        req = struct.pack("=IIII", block_size, block_nr, frame_size, self.frame_nr)
        self._map(req, block_size * block_nr)
        self._offsets = [
            b * block_size + f * frame_size for b in range(block_nr) for f in range(per_block)
        ]
        self._idx = 0
        self.max_batch = max_batch

    def read_batch(self, handle: Handle) -> int:
        mm = self._mm
        mv = self._mv
        offsets = self._offsets
        unpack = _T2HDR.unpack_from
        nframes = len(offsets)
        snaplen = self.snaplen
        i = self._idx
        n = 0
        limit = self.max_batch
        try:
            while n < limit:
                off = offsets[i]
                status, tp_len, tp_snap, _mac, net = unpack(mm, off)
                if not status & TP_STATUS_USER:
                    break
                if tp_snap < tp_len and tp_snap < snaplen:
                    self.truncated += 1
                start = off + net
                try:
                    handle(mv[start : start + tp_snap])
                finally:
                    mv[off : off + 4] = _ZERO4  # give the frame back to the kernel
                    i += 1
                    if i == nframes:
                        i = 0
                    n += 1
        finally:
            self._idx = i
            self._packets += n
        if n and _monotonic() >= self.drop_check_at:
            self.check_drops()
        return n


class PacketRingV3Capture(_MmapRing):
    """TPACKET_V3: variable-size packets packed into blocks, so a ring of a
    given size holds many more packets when the snaplen is large (full 64 KB
    offload packets next to 60-byte ACKs).  A block is handed over when full
    or after ``tov_ms`` (rounded up to a kernel tick), which is the latency a
    packet can wait at low rates."""

    kind = "packet-ring-v3"

    def __init__(
        self,
        sock: socket.socket,
        snaplen: int,
        block_size: int,
        block_nr: int,
        tov_ms: int,
        max_batch: int,
    ) -> None:
        super().__init__(sock, snaplen)
        self.block_size = block_size
        self.tov_ms = tov_ms
        # one "frame" per block: frames only matter to the kernel's checks in V3
        req = struct.pack("=7I", block_size, block_nr, block_size, block_nr, tov_ms, 0, 0)
        self._map(req, block_size * block_nr)
        self._blocks = [b * block_size for b in range(block_nr)]
        self._blk = 0  # current block
        self._left = 0  # packets of the current block not read yet
        self._off = 0  # offset of the next packet in the mapping
        self.max_batch = max_batch

    def read_batch(self, handle: Handle) -> int:
        mm = self._mm
        mv = self._mv
        blocks = self._blocks
        nblocks = len(blocks)
        unpack_blk = _V3BLK.unpack_from
        unpack = _T3HDR.unpack_from
        snaplen = self.snaplen
        b, left, off = self._blk, self._left, self._off
        n = 0
        limit = self.max_batch
        try:
            while n < limit:
                if left == 0:
                    boff = blocks[b]
                    status, num, first = unpack_blk(mm, boff + 8)
                    if not status & TP_STATUS_USER:
                        break
                    if num == 0:  # nothing in it: hand it back
                        mv[boff + 8 : boff + 12] = _ZERO4
                        b = b + 1 if b + 1 < nblocks else 0
                        continue
                    left, off = num, boff + first
                nxt, tp_snap, tp_len, net = unpack(mm, off)
                if tp_snap < tp_len and tp_snap < snaplen:
                    self.truncated += 1
                start = off + net
                try:
                    handle(mv[start : start + tp_snap])
                finally:
                    n += 1
                    off += nxt
                    left -= 1
                    if left == 0:
                        boff = blocks[b]
                        mv[boff + 8 : boff + 12] = _ZERO4
                        b = b + 1 if b + 1 < nblocks else 0
        finally:
            self._blk, self._left, self._off = b, left, off
            self._packets += n
        if n and _monotonic() >= self.drop_check_at:
            self.check_drops()
        return n


def ring_v2(
    sock: socket.socket,
    snaplen: int,
    ring_bytes: int | None,
    frame_size: int | None,
    block_size: int | None,
    max_batch: int,
    fanout: Fanout | None = None,
) -> PacketRingCapture:
    """A V2 ring on ``sock`` (bound already); ``fanout``: the (group id,
    mode) the socket joins once the ring is mapped, before it is read."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    plan = plan_v2(snaplen, ring_bytes, frame_size, block_size, mmap.PAGESIZE)
    cap = PacketRingCapture(
        sock, snaplen, plan.frame_size, plan.block_size, plan.block_nr, max_batch
    )
    cap.plan = plan
    try:
        join_fanout(sock, fanout)
    except OSError:
        cap.close_ring()
        raise
    return cap


def ring_v3(
    sock: socket.socket,
    snaplen: int,
    ring_bytes: int | None,
    block_size: int | None,
    tov_ms: int | None,
    max_batch: int,
    fanout: Fanout | None = None,
) -> PacketRingV3Capture:
    """A V3 ring on ``sock`` (bound already); ``fanout`` as :func:`ring_v2`."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
    plan = plan_v3(snaplen, 32 << 20 if ring_bytes is None else ring_bytes, block_size, tov_ms,
                   mmap.PAGESIZE)
    cap = PacketRingV3Capture(sock, snaplen, plan.block_size, plan.block_nr, plan.tov_ms,
                              max_batch)
    cap.plan = plan
    try:
        join_fanout(sock, fanout)
    except OSError:
        cap.close_ring()
        raise
    return cap
