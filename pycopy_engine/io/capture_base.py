"""The interface every capture kind implements, and the kernel counters they share.

Apart from :mod:`pycopy_engine.io.capture` (which re-exports :class:`Capture`)
so that the ring captures in :mod:`pycopy_engine.io.ring` can subclass it while
``capture``'s factories import them: no import cycle.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any, Callable

Handle = Callable[[memoryview], Any]

SOL_PACKET = 263
PACKET_STATISTICS = 6
_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops
DROP_CHECK_S = 1.0  # kernel drops are read this often while packets flow
DROP_WARN_S = 10.0  # and logged at most this often

log = logging.getLogger("pycopy.capture")

# PACKET_FANOUT (linux/if_packet.h): sockets of one group share the traffic,
# each packet going to exactly one member
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0  # by the skb's flow hash: a flow stays on one member
PACKET_FANOUT_LB = 1
PACKET_FANOUT_CPU = 2
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing
FANOUT_DEFAULT_MODE = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG

Fanout = tuple[int, int]  # (group id 0..65535, mode | flags)


def fanout_arg(group: int, mode: int = FANOUT_DEFAULT_MODE) -> int:
    """The PACKET_FANOUT option value: the group id in the low 16 bits, the
    mode and its flags in the high 16."""
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"fanout group id must be in 0..65535, not {group}")
    if not 0 <= mode <= 0xFFFF:
        raise ValueError(f"fanout mode must be in 0..65535, not {mode:#x}")
    return group | (mode << 16)


class FanoutError(OSError):
    """The kernel refused PACKET_FANOUT (another group with that id and
    other settings, or no fanout support)."""


def join_fanout(sock: socket.socket, fanout: Fanout | None) -> None:
    """Make the (bound, running) AF_PACKET socket a member of fanout group
    ``fanout = (group id, mode)``; None: nothing.  Every member of a group
    must use the same mode, protocol and device, or the kernel refuses
    (EINVAL), as it does on kernels without fanout."""
    if fanout is None:
        return
    group, mode = fanout
    try:
        # as bytes: with the DEFRAG flag the value does not fit a signed int
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", fanout_arg(group, mode)))
    except OSError as exc:
        raise FanoutError(exc.errno, f"cannot join PACKET_FANOUT group {group} (mode {mode:#x}):"
                      f" {exc.strerror}") from None


def _ignore(_pkt: memoryview) -> None:
    return None


class Capture:
    """Common interface; see :mod:`pycopy_engine.io.capture`."""

    kind = "base"

    def __init__(self, sock: socket.socket, snaplen: int) -> None:
        self.sock = sock
        self.snaplen = snaplen
        self.truncated = 0  # packets cut below the requested snaplen
        self._packets = 0  # packets handed to read_batch callers
        self._kpackets: int | None = None  # the kernel's count, where it keeps one
        self._drops = 0
        self._closed = False
        self.plan: Any = None  # a ring's RingPlan (pycopy_engine.io.ringplan)
        # the fix a drop warning names, e.g. "raise -B"; set by the caller
        self.drop_hint = "give the capture a larger buffer"
        self.drop_check_at = 0.0  # monotonic time of the next check_drops()
        self._drops_warned = 0
        self._warned_at: float | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, handle: Handle) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def discard_pending(self, limit: int = 1 << 20) -> int:
        """Read and throw away every packet ready now (at most ``limit``);
        returns how many.  Fanout members call this once the whole group has
        joined: what came before was shared out among fewer members."""
        n = 0
        while n < limit:
            got = self.read_batch(_ignore)
            if not got:
                break
            n += got
        return n

    def kernel_stats(self) -> dict[str, int]:
        """Cumulative counters: ``packets`` the kernel accepted for this socket
        (PACKET_STATISTICS, drops included; packets read where the kernel
        keeps no count), ``drops`` (ring/buffer full), ``truncated`` (cut
        below the snaplen), ``read`` (handed to read_batch callers)."""
        packets = self._packets if self._kpackets is None else self._kpackets
        return {
            "packets": packets,
            "drops": self._drops,
            "truncated": self.truncated,
            "read": self._packets,
        }

    def check_drops(self, now: float | None = None) -> int:
        """Read the kernel's drop counter; log a warning naming ``drop_hint``
        when it grew (at most once per DROP_WARN_S).  The readers call this
        at most once per DROP_CHECK_S while packets flow.  Returns the drops
        not yet warned about."""
        if now is None:
            now = time.monotonic()
        self.drop_check_at = now + DROP_CHECK_S
        drops = self.kernel_stats()["drops"]
        new = drops - self._drops_warned
        if new <= 0 or (self._warned_at is not None and now - self._warned_at < DROP_WARN_S):
            return new
        since = "" if self._warned_at is None else " in the last %.0f s" % (now - self._warned_at)
        log.warning("capture: the kernel dropped %d packet(s)%s (%d in all): the %s cannot hold"
                    " the backlog while this process is busy; %s", new, since, drops,
                    "ring" if self.plan is not None else "socket buffer", self.drop_hint)
        self._drops_warned = drops
        self._warned_at = now
        return new

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def update_packet_stats(cap: Capture) -> None:
    """Add an AF_PACKET socket's PACKET_STATISTICS to ``cap``'s counters."""
    # PACKET_STATISTICS resets on read; tp_packets already includes tp_drops
    try:
        raw = cap.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
    except OSError:
        return
    packets, drops = _STATS.unpack(raw)
    cap._kpackets = (cap._kpackets or 0) + packets
    cap._drops += drops
