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
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, Callable

from pycopy_engine.errors import ConfigError, PycopyError
from pycopy_engine.io import bpf

Handle = Callable[[memoryview], Any]

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_USER = 1
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4

# struct tpacket2_hdr: status, len, snaplen, mac, net (first 16 bytes)
_T2HDR = struct.Struct("=IIIHH")
TPACKET2_HDRLEN = 32 + 20  # TPACKET_ALIGN(sizeof tpacket2_hdr) + sizeof sockaddr_ll
_NETOFF_DGRAM = ((TPACKET2_HDRLEN + 15) & ~15) + 16  # where the IP header lands: 80
# struct tpacket3_hdr: next_offset, (sec, nsec), snaplen, len, (status, mac), net
_T3HDR = struct.Struct("=I8xII4x2xH")
# struct tpacket_hdr_v1 at offset 8 of a block: block_status, num_pkts, offset_to_first_pkt
_V3BLK = struct.Struct("=III")
_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops
_ZERO4 = b"\0\0\0\0"

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # not exported by CPython
CAP_NET_RAW_MSG = "capturing needs CAP_NET_RAW (run as root or grant the capability)"


# plain ints: socket.MSG_* are IntFlag enums, whose & costs ~1 µs per packet
_MSG_TRUNC = int(socket.MSG_TRUNC)
_RECV_FLAGS = int(socket.MSG_TRUNC | socket.MSG_DONTWAIT)

class CapturePermissionError(PermissionError, PycopyError):
    """No CAP_NET_RAW: the one-line message says so."""


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


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


class Capture:
    """Common interface; see the module docstring."""

    kind = "base"

    def __init__(self, sock: socket.socket, snaplen: int) -> None:
        self.sock = sock
        self.snaplen = snaplen
        self.truncated = 0  # packets cut below the requested snaplen
        self._packets = 0  # packets handed to read_batch callers
        self._kpackets: int | None = None  # the kernel's count, where it keeps one
        self._drops = 0
        self._closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, handle: Handle) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

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

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_FLAGS_OFF = _MsgHdr.msg_flags.offset
_LEN_OFF = _MMsgHdr.msg_len.offset
_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
# msg_flags and msg_len of one struct mmsghdr, read in one unpack
_FLAGS_LEN = struct.Struct(f"=i{_LEN_OFF - _FLAGS_OFF - 4}xI")


def _libc_recvmmsg() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


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
        self._recvmmsg: Any = _libc_recvmmsg() if batched else None
        self.batched = self._recvmmsg is not None
        if self.batched:
            n = max_batch
            self._data = ctypes.create_string_buffer(n * snaplen)
            self._iov = (_IOVec * n)()
            self._msgs = (_MMsgHdr * n)()
            base = ctypes.addressof(self._data)
            for i in range(n):
                self._iov[i].iov_base = base + i * snaplen
                self._iov[i].iov_len = snaplen
                self._msgs[i].msg_hdr.msg_iov = ctypes.addressof(self._iov[i])
                self._msgs[i].msg_hdr.msg_iovlen = 1
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
        unpack = _FLAGS_LEN.unpack_from
        i = 0
        try:
            while i < count:
                flags, length = unpack(mmv, i * _MMSG_SIZE + _FLAGS_OFF)
                if flags & _MSG_TRUNC:
                    self.truncated += 1
                    length = snap
                start = i * snap
                i += 1
                handle(dmv[start : start + length])
        finally:
            self._packets += i
            self.lost += count - i  # a handler raised: the rest of the batch is gone
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
        _update_packet_stats(self)
        return super().kernel_stats()


class _MmapRing(Capture):
    """Common part of the two ring kinds: the mapping and its release."""

    def _map(self, req: bytes, ring_bytes: int) -> None:
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.ring_bytes = ring_bytes
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self._mm = mmap.mmap(self.sock.fileno(), ring_bytes, mmap.MAP_SHARED, prot)
        self._mv = memoryview(self._mm)

    def kernel_stats(self) -> dict[str, int]:
        _update_packet_stats(self)
        return super().kernel_stats()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._mv.release()
            self._mm.close()
        except BufferError:
            pass  # a handler kept a packet view: the mapping dies with it
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
        return n


def _update_packet_stats(cap: Capture) -> None:
    # PACKET_STATISTICS resets on read; tp_packets already includes tp_drops
    try:
        raw = cap.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
    except OSError:
        return
    packets, drops = _STATS.unpack(raw)
    cap._kpackets = (cap._kpackets or 0) + packets
    cap._drops += drops


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
            out.append(socket.if_nametoindex(name))
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
    block_timeout_ms: int = 1,
    max_batch: int = 256,
    rcvbuf: int = 16 << 20,
    batched: bool = True,
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
    with large frames).  ``frame_size`` (V2) may be set below what ``snaplen``
    needs, trading counted truncation for memory.  ``ring=False`` or a ring
    that cannot be set up gives socket reads (recvmmsg if ``batched``).
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
            sock.bind((socket.if_indextoname(bind_idx), proto))  # CPython applies htons
        if ring:
            if version is None:
                version = 2 if _NETOFF_DGRAM + snaplen <= 4096 else 3
            try:
                if version == 3:
                    return _ring_v3(
                        sock, snaplen, ring_bytes, block_size, block_timeout_ms, max_batch
                    )
                return _ring_v2(sock, snaplen, ring_bytes, frame_size, block_size, max_batch)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise
                # e.g. ENOMEM for the ring or the mapping: fall back to socket
                # reads, after removing a ring that was set up (a zeroed request)
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(28))
                except OSError:
                    pass
        _set_rcvbuf(sock, rcvbuf)
        return PacketRecvCapture(sock, snaplen, min(max_batch, 64), batched)
    except BaseException:
        sock.close()
        raise


def _ring_v2(
    sock: socket.socket,
    snaplen: int,
    ring_bytes: int | None,
    frame_size: int | None,
    block_size: int | None,
    max_batch: int,
) -> PacketRingCapture:
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    if frame_size is None:
        frame_size = _align(_NETOFF_DGRAM + snaplen, 16)
    frame_size = max(_align(frame_size, 16), _NETOFF_DGRAM + 16)
    page = mmap.PAGESIZE
    if block_size is None:
        # 128 KB blocks for small frames; one page-rounded frame per block for
        # big ones (a 64 KB frame in a 128 KB block would waste half of it)
        block_size = 1 << 17 if frame_size * 4 <= 1 << 17 else _align(frame_size, page)
    block_size = _align(max(block_size, frame_size), page)
    if ring_bytes is None:
        ring_bytes = (64 << 20) if frame_size > 4096 else (16 << 20)
    block_nr = max(1, ring_bytes // block_size)
    return PacketRingCapture(sock, snaplen, frame_size, block_size, block_nr, max_batch)


def _ring_v3(
    sock: socket.socket,
    snaplen: int,
    ring_bytes: int | None,
    block_size: int | None,
    tov_ms: int,
    max_batch: int,
) -> PacketRingV3Capture:
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
    if ring_bytes is None:
        ring_bytes = 32 << 20
    if block_size is None:
        # small blocks, many of them: with the retire timer a block is handed
        # over after tov_ms even when nearly empty, so at moderate rates the
        # ring holds block_nr x tov_ms of traffic, whatever the block size
        block_size = 1 << 17
    # a block must hold the largest packet: its header, sockaddr_ll and the data
    block_size = _align(max(block_size, snaplen + 256), mmap.PAGESIZE)
    block_nr = max(2, ring_bytes // block_size)
    return PacketRingV3Capture(sock, snaplen, block_size, block_nr, max(1, tov_ms), max_batch)
