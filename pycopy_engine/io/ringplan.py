"""Geometry of an AF_PACKET receive ring, computed before the ring is set up (pure).

How much traffic a ring holds while its reader is behind decides whether the
kernel drops packets at saturation, and it is not just its size in bytes:

* TPACKET_V2: ``frame_nr`` fixed frames, one packet each, whatever its size.
* TPACKET_V3: ``block_nr`` blocks, each handed to the reader when full *or*
  when its retire timer (``tov_ms``, rounded up to a kernel tick) expires,
  however little it holds.  At rates where a block does not fill within
  ``tov_ms`` the ring holds ``block_nr x tov_ms`` of traffic, so a ring of
  16 MB in 128 KB blocks with a 1 ms timer held only ~0.5 s (128 ticks of
  4 ms) at 35k packets/s, about a quarter of its bytes.  Above that rate it holds
  ``block_nr x packets per block`` packets.

:func:`plan_v3` therefore uses the smallest block that fits a full packet
(a power of two pages: the kernel allocates blocks in such orders) and, unless
told otherwise, the shortest timer for which ``block_nr x tov_ms`` covers
:data:`HOLD_S` (8 s: a reader starved of CPU for seconds loses nothing; the
cost is that at low rates a packet waits up to the timer, 16 ms at most);
:meth:`RingPlan.hold_seconds` gives what a plan holds at a given packet rate,
which the callers log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PAGE = 4096
HOLD_S = 8.0  # a V3 ring's default timer makes it hold this long below its byte limit
MAX_TOV_MS = 16  # ...but a lone packet never waits longer than this (plus a tick)
V3_BLOCK_HDR = 48  # struct tpacket_block_desc, aligned to 8
V3_NETOFF = 96  # TPACKET_ALIGN(TPACKET3_HDRLEN) + 16: where the IP header lands in SOCK_DGRAM
V2_NETOFF = 80  # the same for TPACKET2_HDRLEN


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _pow2_pages(n: int, page: int) -> int:
    size = page
    while size < n:
        size <<= 1
    return size


@dataclass(frozen=True)
class RingPlan:
    version: int  # 2 or 3
    block_size: int
    block_nr: int
    frame_size: int  # V2: one packet's slot; V3: the block (frames mean nothing there)
    frame_nr: int
    tov_ms: int  # V3 retire timer; 0 for V2

    @property
    def ring_bytes(self) -> int:
        return self.block_size * self.block_nr

    def slot_bytes(self, pkt_bytes: int) -> int:
        """Ring bytes one captured packet of ``pkt_bytes`` (from its IP header) takes."""
        if self.version == 2:
            return self.frame_size
        return _align(V3_NETOFF + pkt_bytes, 8)

    def hold_packets(self, pkt_bytes: int) -> int:
        """Packets of that size the ring holds when every block is full."""
        if self.version == 2:
            return self.frame_nr
        per_block = (self.block_size - V3_BLOCK_HDR) // self.slot_bytes(pkt_bytes)
        return per_block * self.block_nr

    def hold_seconds(self, rate_pps: float, pkt_bytes: int) -> float:
        """Seconds of traffic at ``rate_pps`` the ring holds for a reader that
        stopped reading (a lower bound: the kernel rounds the timer up)."""
        if rate_pps <= 0:
            return math.inf
        full = self.hold_packets(pkt_bytes) / rate_pps
        if self.version == 2:
            return full
        return min(full, self.block_nr * self.tov_ms / 1000.0)

    def max_rate(self, pkt_bytes: int, hold_s: float = HOLD_S) -> float:
        """Highest packet rate the ring holds ``hold_s`` of."""
        if self.version == 3 and self.block_nr * self.tov_ms / 1000.0 < hold_s:
            return 0.0
        return self.hold_packets(pkt_bytes) / hold_s

    def describe(self, pkt_bytes: int = 200) -> str:
        kb = self.ring_bytes >> 10
        if self.version == 2:
            return "TPACKET_V2, %d KB in %d frames of %d bytes: holds %d packets" % (
                kb, self.frame_nr, self.frame_size, self.frame_nr)
        hold = min(HOLD_S, self.block_nr * self.tov_ms / 1000.0)
        return ("TPACKET_V3, %d KB in %d blocks of %d KB, block timeout %d ms: holds %.1f s"
                " of traffic up to %.0f packets/s of %d bytes" % (
                    kb, self.block_nr, self.block_size >> 10, self.tov_ms, hold,
                    self.max_rate(pkt_bytes, hold), pkt_bytes))


def plan_v3(snaplen: int, ring_bytes: int, block_size: int | None = None,
            tov_ms: int | None = None, page: int = PAGE) -> RingPlan:
    """Blocks as small as a full packet allows (``block_size`` overrides,
    rounded to pages), as many as ``ring_bytes`` holds (at least 2), and a
    timer of ``tov_ms`` or, by default, ``HOLD_S / block_nr`` (1..MAX_TOV_MS)."""
    need = V3_BLOCK_HDR + V3_NETOFF + snaplen
    if block_size is None:
        block_size = _pow2_pages(need, page)
    block_size = _align(max(block_size, need), page)
    block_nr = max(2, ring_bytes // block_size)
    if tov_ms is None:
        tov_ms = min(MAX_TOV_MS, max(1, math.ceil(HOLD_S * 1000.0 / block_nr)))
    return RingPlan(3, block_size, block_nr, block_size, block_nr, max(1, tov_ms))


def plan_v2(snaplen: int, ring_bytes: int | None, frame_size: int | None = None,
            block_size: int | None = None, page: int = PAGE) -> RingPlan:
    """Frames that fit ``snaplen`` (or ``frame_size``, counted truncation
    below it), 128 KB blocks for small frames, one page-rounded frame per
    block for big ones; 16 MB (64 MB with frames above 4 KB) by default."""
    if frame_size is None:
        frame_size = _align(V2_NETOFF + snaplen, 16)
    frame_size = max(_align(frame_size, 16), V2_NETOFF + 16)
    if block_size is None:
        # a 64 KB frame in a 128 KB block would waste half of it
        block_size = 1 << 17 if frame_size * 4 <= 1 << 17 else _align(frame_size, page)
    block_size = _align(max(block_size, frame_size), page)
    if ring_bytes is None:
        ring_bytes = (64 << 20) if frame_size > 4096 else (16 << 20)
    block_nr = max(1, ring_bytes // block_size)
    per_block = block_size // frame_size
    return RingPlan(2, block_size, block_nr, frame_size, per_block * block_nr, 0)
