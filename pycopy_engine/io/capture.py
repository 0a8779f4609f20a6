"""Batched packet capture: the hot path.

Two kinds of capture, one interface (:class:`Capture`):

* :func:`open_raw_ip_capture` -- ``socket(AF_INET, SOCK_RAW, IPPROTO_TCP)`` as
  the C tcpcopy does by default: sees inbound IPv4 TCP for local addresses.
* :func:`open_packet_capture` -- ``AF_PACKET``/``SOCK_DGRAM`` (the packet starts
  at the IP header, no link header to parse) on one, several or all
  interfaces, reading a ``PACKET_RX_RING`` (TPACKET_V2, mmap) so a batch of
  packets costs no syscall at all; falls back to a bounded ``recv_into`` loop
  when the ring cannot be set up.

``read_batch(handle)`` calls ``handle(pkt)`` for every packet ready now and
never blocks.  ``pkt`` is a memoryview starting at the IPv4 header, valid only
during the call (the ring slot or buffer is reused right after).  It may be
shorter than the IP total length: ``truncated`` counts packets cut below the
requested snaplen (a frame or buffer too small), which callers report.

Every socket gets a kernel filter that passes IPv4 only (AF_PACKET sockets
see ARP and IPv6 too), then the caller's program, whose accept value is
lowered to the snaplen so the kernel copies no more than asked for.

This module holds the factories and the socket-read captures; the ring
captures are in :mod:`pycopy_engine.io.ring`, the recvmmsg(2) binding in
:mod:`pycopy_engine.io.mmsg` and :class:`Capture` itself in
:mod:`pycopy_engine.io.capture_base` (re-exported here).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Sequence
from time import monotonic as _monotonic
from typing import Any

from pycopy_engine.errors import ConfigError, PycopyError
from pycopy_engine.io import bpf
from pycopy_engine.io.capture_base import (
    FANOUT_DEFAULT_MODE,
    SOL_PACKET,
    Capture,
    Fanout,
    FanoutError,
    Handle,
    join_fanout,
    update_packet_stats,
)
from pycopy_engine.io.ifaces import if_indextoname, if_nametoindex
from pycopy_engine.io.mmsg import FLAGS_LEN, FLAGS_OFF, MMSG_SIZE, batch_buffers, libc_recvmmsg
from pycopy_engine.io.ring import NETOFF_DGRAM, PACKET_RX_RING, ring_v2, ring_v3

__all__ = [
    "CAP_NET_RAW_MSG",
    "FANOUT_DEFAULT_MODE",
    "Capture",
    "CapturePermissionError",
    "PacketRecvCapture",
    "RawIPCapture",
    "build_program",
    "open_packet_capture",
    "open_raw_ip_capture",
]

PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # not exported by CPython
CAP_NET_RAW_MSG = "capturing needs CAP_NET_RAW (run as root or grant the capability)"


# plain ints: socket.MSG_* are IntFlag enums, whose & costs ~1 µs per packet
_MSG_TRUNC = int(socket.MSG_TRUNC)
_RECV_FLAGS = int(socket.MSG_TRUNC | socket.MSG_DONTWAIT)


class CapturePermissionError(PermissionError, PycopyError):
    """No CAP_NET_RAW: the one-line message says so."""


def build_program(
    program: bytes | None,
    snaplen: int,
    ifindexes: Sequence[int] = (),
    drop_outgoing: bool = False,
) -> bytes:
    """IPv4-only guard (+ optional interface and direction checks) in front of
    ``program``, with every non-zero ``ret #k`` lowered to ``snaplen``."""
    if program is None:
        insns = [(bpf.BPF_RET_K, 0, 0, snaplen)]
    else:
        insns = [
            (c, jt, jf, min(k, snaplen) if c == bpf.BPF_RET_K and k else k)
            for c, jt, jf, k in bpf.unpack_insns(program)
        ]
    guard = [
        (0x30, 0, 0, 0),  # ldb [0]
        (0x54, 0, 0, 0xF0),  # and #0xf0
        (bpf.BPF_JEQ_K, 1, 0, 0x40),  # IPv4? skip the drop
        (bpf.BPF_RET_K, 0, 0, 0),
    ]
    if drop_outgoing:
        guard = [
            (bpf.BPF_LD_W_ABS, 0, 0, bpf.SKF_AD_OFF + bpf.SKF_AD_PKTTYPE),
            (bpf.BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
            (bpf.BPF_RET_K, 0, 0, 0),
        ] + guard
    out = bpf.pack_insns(guard + insns)
    if ifindexes:
        out = bpf.restrict_to_ifindexes(out, ifindexes)
    return out


class _RecvCapture(Capture):
    """Socket reads, at most ``max_batch`` packets per call: one recvmmsg(2)
    per batch through ctypes where libc has it (``batched``), else a
    recv_into loop (one syscall per packet)."""

    kind = "recv"

    def __init__(
        self, sock: socket.socket, snaplen: int, max_batch: int = 64, batched: bool = True
    ) -> None:
        super().__init__(sock, snaplen)
        self.max_batch = max_batch
        self.lost = 0  # packets of a batch dropped because a handler raised
        self._buf = bytearray(snaplen)
        self._mv = memoryview(self._buf)
        self._recvmmsg: Any = libc_recvmmsg() if batched else None
        self.batched = self._recvmmsg is not None
        if self.batched:
            self._data, self._iov, self._msgs = batch_buffers(max_batch, snaplen)
            self._msgs_addr = ctypes.addressof(self._msgs)
            self._dmv = memoryview(self._data).cast("B")
            self._mmv = memoryview(self._msgs).cast("B")

    def read_batch(self, handle: Handle) -> int:
        if self.batched:
            return self._read_mmsg(handle)
        recv_into = self.sock.recv_into
        buf_mv = self._mv
        size = self.snaplen
        n = 0
        while n < self.max_batch:
            try:
                got = recv_into(buf_mv, 0, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            n += 1
            if got > size:
                self.truncated += 1
                got = size
            handle(buf_mv[:got])
        self._packets += n
        if n and _monotonic() >= self.drop_check_at:
            self.check_drops()
        return n

    def _read_mmsg(self, handle: Handle) -> int:
        count = self._recvmmsg(
            self.sock.fileno(), self._msgs_addr, self.max_batch, socket.MSG_DONTWAIT, None
        )
        if count <= 0:
            return 0  # EAGAIN (or an error the next poll will show again)
        mmv = self._mmv
        dmv = self._dmv
        snap = self.snaplen
        unpack = FLAGS_LEN.unpack_from
        i = 0
        try:
            while i < count:
                flags, length = unpack(mmv, i * MMSG_SIZE + FLAGS_OFF)
                if flags & _MSG_TRUNC:
                    self.truncated += 1
                    length = snap
                start = i * snap
                i += 1
                handle(dmv[start : start + length])
        finally:
            self._packets += i
            self.lost += count - i  # a handler raised: the rest of the batch is gone
        if _monotonic() >= self.drop_check_at:
            self.check_drops()
        return count


class RawIPCapture(_RecvCapture):
    kind = "raw-ip"

    def kernel_stats(self) -> dict[str, int]:
        st = super().kernel_stats()
        st["drops"] = _raw_socket_drops(self.sock)
        return st


class PacketRecvCapture(_RecvCapture):
    kind = "packet-recv"

    def kernel_stats(self) -> dict[str, int]:
        update_packet_stats(self)
        return super().kernel_stats()


def _raw_socket_drops(sock: socket.socket) -> int:
    """The 'drops' column of /proc/net/raw for this socket's inode."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        with open("/proc/net/raw") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == inode:
                    return int(fields[12])
    except (OSError, ValueError, StopIteration):
        pass
    return 0


def _new_socket(family: int, type_: int, proto: int) -> socket.socket:
    try:
        return socket.socket(family, type_, proto)
    except PermissionError as exc:
        raise CapturePermissionError(exc.errno, CAP_NET_RAW_MSG) from None


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:  # root may exceed net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            pass


def open_raw_ip_capture(
    bpf_program: bytes | None,
    rcvbuf: int = 64 << 20,
    *,
    snaplen: int = 65535,
    max_batch: int = 64,
    batched: bool = True,
) -> Capture:
    """``socket(AF_INET, SOCK_RAW, IPPROTO_TCP)``: inbound IPv4 TCP to local
    addresses, as the C tcpcopy's default capture.  ``batched``: read with
    recvmmsg(2) (one syscall per batch) where libc has it."""
    sock = _new_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        _set_rcvbuf(sock, rcvbuf)
        if bpf_program is not None:
            bpf.attach_filter(sock, build_program(bpf_program, snaplen))
        return RawIPCapture(sock, snaplen, max_batch, batched)
    except BaseException:
        sock.close()
        raise


def _ifindexes(ifaces: list[str] | None) -> list[int]:
    if not ifaces or any(i in ("any", "") for i in ifaces):
        return []
    out = []
    for name in ifaces:
        try:
            out.append(if_nametoindex(name))
        except OSError:
            raise ConfigError(f"no such interface {name!r}") from None
    return out


def open_packet_capture(
    ifaces: list[str] | None,
    bpf_program: bytes | None,
    *,
    ring: bool = True,
    ignore_outgoing: bool = False,
    snaplen: int = 65535,
    ring_bytes: int | None = None,
    version: int | None = None,
    frame_size: int | None = None,
    block_size: int | None = None,
    block_timeout_ms: int | None = None,
    max_batch: int = 256,
    rcvbuf: int = 16 << 20,
    batched: bool = True,
    drop_hint: str | None = None,
    fanout: Fanout | None = None,
) -> Capture:
    """AF_PACKET/SOCK_DGRAM capture on ``ifaces`` (None, [] or "any" = all).

    One interface: the socket is bound to it.  Several: one unbound socket
    whose kernel filter checks the interface index.  ``ignore_outgoing`` drops
    frames this host sends (PACKET_IGNORE_OUTGOING, or a filter check on
    kernels without it).

    Ring: ``version`` 2 (fixed frames, no added latency) or 3 (packets packed
    into blocks, handed over when a block is full or after
    ``block_timeout_ms``).  The default is V2 when a frame of ``snaplen`` is
    at most 4 KB (intercept: 120 bytes) and V3 above (tcpcopy's full
    packets, where 64 KB V2 frames would hold only ~250 packets in 16 MB).
    ``ring_bytes`` defaults to 16 MB (V2) or 32 MB (V3; 64 MB for a forced V2
    with large frames); ``block_timeout_ms`` by default is the shortest for
    which the V3 ring holds 2 s of traffic below its byte limit (see
    :mod:`pycopy_engine.io.ringplan`).  ``drop_hint``: the fix that the
    warning logged on kernel drops names (e.g. the option enlarging the ring).  ``frame_size`` (V2) may be set below what ``snaplen``
    needs, trading counted truncation for memory.  ``ring=False`` or a ring
    that cannot be set up gives socket reads (recvmmsg if ``batched``).

    ``fanout = (group id, mode)``: once bound and its ring (or buffer) set
    up, and before anything is read, the socket joins that PACKET_FANOUT
    group (mode: :data:`FANOUT_DEFAULT_MODE`, PACKET_FANOUT_HASH with
    PACKET_FANOUT_FLAG_DEFRAG, so every packet of a flow, fragments
    included, goes to one member).  Every member must capture on the same
    ``ifaces`` with the same ``ignore_outgoing``.  Flows are shared out by
    ``hash % members``: until every member has joined, a flow may land on
    another member than later, so callers discard what their capture holds
    once the group is complete (:meth:`Capture.discard_pending`).
    """
    if snaplen <= 0 or snaplen > 262144:
        raise ConfigError(f"snaplen must be in 1..262144, not {snaplen}")
    if version not in (None, 2, 3):
        raise ConfigError(f"ring version must be 2 or 3, not {version}")
    idx = _ifindexes(ifaces)
    # ETH_P_IP would be cheaper, but only ETH_P_ALL taps see outgoing frames
    proto = ETH_P_IP if ignore_outgoing else ETH_P_ALL
    sock = _new_socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
    try:
        sock.setblocking(False)
        drop_out = False
        if ignore_outgoing:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                drop_out = True
        bind_idx = idx[0] if len(idx) == 1 else 0
        prog = build_program(bpf_program, snaplen, idx if len(idx) > 1 else (), drop_out)
        bpf.attach_filter(sock, prog)
        if bind_idx:  # unbound = every interface (CPython cannot bind to ifindex 0)
            sock.bind((if_indextoname(bind_idx), proto))  # CPython applies htons
        cap = _open_packet_reader(sock, snaplen, ring, version, ring_bytes, frame_size,
                                  block_size, block_timeout_ms, max_batch, rcvbuf, batched,
                                  fanout)
        if drop_hint:
            cap.drop_hint = drop_hint
        return cap
    except BaseException:
        sock.close()
        raise


def _open_packet_reader(
    sock: socket.socket,
    snaplen: int,
    ring: bool,
    version: int | None,
    ring_bytes: int | None,
    frame_size: int | None,
    block_size: int | None,
    block_timeout_ms: int | None,
    max_batch: int,
    rcvbuf: int,
    batched: bool,
    fanout: Fanout | None = None,
) -> Capture:
    if ring:
        if version is None:
            version = 2 if NETOFF_DGRAM + snaplen <= 4096 else 3
        try:
            if version == 3:
                return ring_v3(
                    sock, snaplen, ring_bytes, block_size, block_timeout_ms, max_batch, fanout
                )
            return ring_v2(sock, snaplen, ring_bytes, frame_size, block_size, max_batch, fanout)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES) or isinstance(exc, FanoutError):
                raise
            # e.g. ENOMEM for the ring or the mapping: fall back to socket
            # reads, after removing a ring that was set up (a zeroed request)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(28))
            except OSError:
                pass
    _set_rcvbuf(sock, rcvbuf)
    cap = PacketRecvCapture(sock, snaplen, min(max_batch, 64), batched)
    join_fanout(sock, fanout)
    return cap
