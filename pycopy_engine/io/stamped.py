"""Captures whose packets carry the kernel's capture time (``--compare``,
``--delay`` on ``-i``).

``open_stamped_capture`` opens an AF_PACKET TPACKET_V3 ring (io/ring.py) that
sees both directions, and ``read_stamped`` hands each packet to
``handle(pkt, ts)`` with ``ts`` the kernel's timestamp (wall clock, seconds),
read from the ring's ``tpacket3_hdr`` (or ``tpacket2_hdr``: a V2 ring stamps
its frames too).  A capture that fell back to socket reads gives ``ts`` None
(the caller uses its read time).

``CaptureClock`` puts those stamps on the loop's monotonic clock for
``--delay``, which must never hold a packet less than the delay after its
capture, wall-clock steps included.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import time
from typing import Any, Callable, List, Optional, Tuple

from .capture import open_packet_capture
from .ring import TP_STATUS_USER, PacketRingCapture, PacketRingV3Capture

# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac, tp_net
_T3TS = struct.Struct("=IIIII4x2xH")
# struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec
_T2TS = struct.Struct("=IIIHHII")
_V3BLK = struct.Struct("=III")
_ZERO4 = bytes(4)

MAX_AGE = 1.0  # s: a stamp older than this (or in the future) is not trusted

StampedHandle = Callable[[Any, Optional[float]], Any]

log = logging.getLogger("pycopy.capture")


def open_stamped_capture(ifaces: Optional[list], program: bytes, snaplen: int = 65535,
                         ring_bytes: int = 32 << 20, block_timeout_ms: int = 10) -> Any:
    """Packets carry their own time, so a block may wait ``block_timeout_ms``
    to fill: the ring then holds ~256 such periods, not 128 one-millisecond ones."""
    return open_packet_capture(ifaces, program, ignore_outgoing=False, snaplen=snaplen,
                               version=3, ring_bytes=ring_bytes,
                               block_timeout_ms=block_timeout_ms)


def has_stamps(cap: Any) -> bool:
    """Whether ``read_stamped`` gives this capture's packets a kernel time."""
    return isinstance(cap, (PacketRingV3Capture, PacketRingCapture))


def read_stamped(cap: Any, handle: StampedHandle) -> int:
    if isinstance(cap, PacketRingV3Capture):
        n = _read_v3(cap, handle)
    elif isinstance(cap, PacketRingCapture):
        n = _read_v2(cap, handle)
    else:
        return int(cap.read_batch(lambda pkt: handle(pkt, None)))
    if n and time.monotonic() >= cap.drop_check_at:  # as read_batch does
        cap.check_drops()
    return n


def _read_v3(cap: PacketRingV3Capture, handle: StampedHandle) -> int:
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


def _read_v2(cap: PacketRingCapture, handle: StampedHandle) -> int:
    """As ``PacketRingCapture.read_batch``, with the frame's tp_sec/tp_nsec."""
    mm = cap._mm
    mv = cap._mv
    offsets = cap._offsets
    nframes = len(offsets)
    unpack = _T2TS.unpack_from
    i = cap._idx
    n = 0
    try:
        while n < cap.max_batch:
            off = offsets[i]
            status, tp_len, tp_snap, _mac, net, sec, nsec = unpack(mm, off)
            if not status & TP_STATUS_USER:
                break
            if tp_snap < tp_len and tp_snap < cap.snaplen:
                cap.truncated += 1
            start = off + net
            try:
                handle(mv[start:start + tp_snap], sec + nsec * 1e-9)
            finally:
                mv[off:off + 4] = _ZERO4
                i = i + 1 if i + 1 < nframes else 0
                n += 1
    finally:
        cap._idx = i
        cap._packets += n
    return n


class ClockSetWatch:
    """The kernel's word that CLOCK_REALTIME was set (a step), not slewed.

    A timerfd on CLOCK_REALTIME armed with ``TFD_TIMER_ABSTIME |
    TFD_TIMER_CANCEL_ON_SET`` fails its next read with ECANCELED after every
    discontinuous change of the wall clock (settimeofday, clock_settime,
    chronyd's or ntpd's step, a leap second), and only then: slewing, however
    fast (chronyd slews up to 8 %), is never reported.  Comparing wall minus
    monotonic between batches cannot tell the two apart after a long idle gap.
    ``stepped()`` costs one non-blocking read(2).  ``available`` is False where
    timerfd cannot be made (then every stamp must be distrusted)."""

    TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2
    TFD_NONBLOCK, TFD_CLOEXEC = 0o4000, 0o2000000

    def __init__(self) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fd = create(0, self.TFD_NONBLOCK | self.TFD_CLOEXEC)  # CLOCK_REALTIME
        if fd < 0:
            return
        far = int(time.time()) + 10 * 365 * 86400  # never expires: only the cancel matters
        spec = (ctypes.c_long * 4)(0, 0, far, 0)  # struct itimerspec
        if settime(fd, self.TFD_TIMER_ABSTIME | self.TFD_TIMER_CANCEL_ON_SET,
                   ctypes.addressof(spec), None) != 0:
            os.close(fd)
            return
        self.fd = fd

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def stepped(self) -> bool:
        """True once for each step of the wall clock since the previous call."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        except OSError as exc:
            return exc.errno == errno.ECANCELED
        return False  # the timer expired: ten years on, not a step

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CaptureClock:
    """Kernel capture stamps (wall clock) on the loop's clock (``mono``).

    ``--delay`` on a ring holds each packet from its capture rather than from
    its read: a TPACKET_V3 block hands its packets over only when full or when
    its timer expires, which at low rates added up to the block timeout (16 ms
    with tcpcopy's default -B) to every delay.  One pair of clock readings is
    taken per batch, after the batch is read, so that every packet of it was
    captured before them: wall first, then monotonic, so that the pair's own
    gap can only make a packet look captured later, never earlier.  Slewing
    moves both clocks alike between a capture and its read (by microseconds);
    a step moves one against the other, and a packet stamped before a forward
    step would look older than it is and leave early.  So a stamp is not
    trusted, and the packet is held from the batch's read time instead (never
    less than the delay after its capture, as before), when:

    * it is later than the wall reading, or more than ``MAX_AGE`` before it;
    * the wall clock was stepped (``stepped()``, the kernel's timerfd notice by
      default) since the previous batch: the ring may still hold packets
      stamped before the step, so stamps are ignored for ``MAX_AGE`` after it
      is seen (older stamps then fail the age test whichever way it went);
    * there is no way to learn of steps (no timerfd): no stamp is trusted.
    """

    def __init__(self, mono: Callable[[], float],
                 wall: Callable[[], float] = time.time,
                 stepped: Optional[Callable[[], bool]] = None) -> None:
        self._mono = mono
        self._wall = wall
        self._watch: Optional[ClockSetWatch] = None
        if stepped is None:
            self._watch = ClockSetWatch()
            if self._watch.available:
                stepped = self._watch.stepped
            else:
                log.warning("no timerfd to learn of wall-clock steps: --delay holds packets"
                            " from their read time (up to the ring's block timeout more)")
        self._stepped = stepped
        self._trust_at = float("-inf") if stepped is not None else float("inf")
        self.stepped = 0  # clock steps seen
        self.read_timed = 0  # packets held from their read time, not their stamp

    def push_batch(self, got: List[Tuple[bytes, Optional[float]]],
                   push: Callable[[bytes, float], Any]) -> None:
        """``push(pkt, t)`` for every ``(pkt, ts)`` just read, in order, ``t``
        its capture time on the loop's clock (the read time if not trusted)."""
        wall = self._wall()
        now = self._mono()
        if self._stepped is not None and self._stepped():
            self._trust_at = now + MAX_AGE
            self.stepped += 1
            log.warning("the wall clock was stepped: --delay holds packets from their read"
                        " time for the next %g s", MAX_AGE)
        if now < self._trust_at:
            for pkt, _ts in got:
                push(pkt, now)
            self.read_timed += len(got)
            return
        offset = wall - now
        oldest = wall - MAX_AGE
        untrusted = 0
        for pkt, ts in got:
            if ts is None or not oldest <= ts <= wall:
                untrusted += 1
                push(pkt, now)
                continue
            t = ts - offset
            push(pkt, t if t < now else now)
        self.read_timed += untrusted

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
