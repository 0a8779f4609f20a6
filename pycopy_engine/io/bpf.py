"""Compile pcap filter expressions with libpcap and attach them to sockets.

Compilation goes through ``scapy.arch.common.compile_filter``, which opens a
"dead" libpcap handle for the link type: no root and no interface needed, and
libpcap's own error message comes back when the expression is bad.  scapy is
imported only here, only when a filter is compiled (it takes ~1 s to import).

Link types.  The kernel runs a socket filter on the packet as the socket sees
it: from the IP header for ``AF_PACKET``/``SOCK_DGRAM`` and for raw IP sockets,
from the Ethernet header for ``AF_PACKET``/``SOCK_RAW`` on Ethernet.  The pcap
link type for "starts at the IP header" is ``DLT_RAW``, whose *DLT* value on
Linux is 12; 101 is the *LINKTYPE* (file format) value of the same thing.
libpcap rejects neither in a dead handle, and scapy maps 101 to 12, but we pass
12 so the code does not rely on that alias.  The program starts with
``ldb [0]; and #0xf0; jeq #0x40`` (the IP version nibble): tests check it with
real packets.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pycopy_engine.errors import ConfigError

DLT_EN10MB = 1
DLT_RAW = 12  # Linux DLT value for "packet starts at the IP header"
LINKTYPE_RAW = 101  # pcap file-format value of the same link type

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
SO_LOCK_FILTER = 44

# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
_INSN = struct.Struct("=HBBI")
INSN_SIZE = _INSN.size  # 8

# Classic BPF opcodes used to build small programs by hand.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
SKF_AD_PKTTYPE = 4

_MAX_INSNS = 4096  # BPF_MAXINSNS


def pack_insns(insns: Iterable[tuple[int, int, int, int]]) -> bytes:
    """Pack (code, jt, jf, k) tuples into sock_filter records."""
    return b"".join(_INSN.pack(code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in insns)


def unpack_insns(program: bytes) -> list[tuple[int, int, int, int]]:
    if len(program) % INSN_SIZE:
        raise ConfigError(f"BPF program length {len(program)} is not a multiple of 8")
    return [_INSN.unpack_from(program, i) for i in range(0, len(program), INSN_SIZE)]


def compile_filter(expr: str, linktype: int = DLT_RAW) -> bytes:
    """Compile a pcap filter expression into packed sock_filter records."""
    try:
        from scapy.arch.common import compile_filter as _scapy_compile
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            f"cannot compile filter {expr!r}: scapy is not available ({exc})"
        ) from None
    if linktype == LINKTYPE_RAW:
        linktype = DLT_RAW
    try:
        prog = _scapy_compile(expr, linktype=linktype)
    except Scapy_Exception as exc:
        msg = str(exc)
        # scapy: "Failed to compile filter expression 'x' (libpcap message)"
        if msg.endswith(")") and " (" in msg:
            msg = msg[msg.index(" (") + 2 : -1]
        raise ConfigError(f"bad filter expression {expr!r}: {msg}") from None
    except (ImportError, OSError) as exc:
        raise ConfigError(f"cannot compile filter {expr!r}: {exc}") from None
    n = int(prog.bf_len)
    raw = ctypes.string_at(ctypes.cast(prog.bf_insns, ctypes.c_void_p), n * INSN_SIZE)
    return bytes(raw)


def restrict_to_ifindexes(program: bytes | None, ifindexes: Sequence[int]) -> bytes:
    """Prefix a program so it accepts only packets that arrived on (or left
    through) one of ``ifindexes``: lets one unbound AF_PACKET socket capture on
    several chosen interfaces, with the kernel doing the selection."""
    if program is None:
        program = pack_insns([(BPF_RET_K, 0, 0, 0x40000)])
    n = len(ifindexes)
    if n == 0:
        return program
    if n > 250:
        raise ConfigError(f"too many interfaces for one capture filter ({n})")
    prefix = [(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX)]
    # instruction p (1..n) jumps to the original program at n + 2 on a match;
    # the last one falls through to "ret #0" at n + 1 otherwise
    for p, idx in enumerate(ifindexes, start=1):
        prefix.append((BPF_JEQ_K, n + 1 - p, 0, idx))
    prefix.append((BPF_RET_K, 0, 0, 0))
    out = pack_insns(prefix) + program
    if len(out) // INSN_SIZE > _MAX_INSNS:
        raise ConfigError(f"capture filter too long ({len(out) // INSN_SIZE} instructions)")
    return out


class _Attached:
    """Keeps the ctypes buffer a sock_fprog points at alive."""

    __slots__ = ("buf", "fprog")

    def __init__(self, program: bytes) -> None:
        self.buf = ctypes.create_string_buffer(program, len(program))
        addr = ctypes.addressof(self.buf)
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        self.fprog = struct.pack("HL", len(program) // INSN_SIZE, addr)


_KEEP: dict[int, _Attached] = {}


def attach_filter(sock: Any, program: bytes) -> None:
    """Attach a classic BPF program (packed sock_filter records) with
    SO_ATTACH_FILTER.  The kernel copies the program, but the buffer is kept
    alive for the socket's life anyway (cheap, and safe on every kernel)."""
    if not program or len(program) % INSN_SIZE:
        raise ConfigError(f"empty or malformed BPF program ({len(program)} bytes)")
    att = _Attached(program)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, att.fprog)
    except OSError as exc:
        raise ConfigError(f"kernel refused the capture filter: {exc}") from None
    _KEEP[sock.fileno()] = att


def detach_filter(sock: Any) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # no filter attached
    _KEEP.pop(sock.fileno(), None)


def _map_fields(m: Any) -> tuple[str | None, int]:
    if isinstance(m, (tuple, list)):
        ip, port = m[0], m[1]
    else:
        ip = None
        for name in ("online_ip", "src_ip", "ip"):
            if hasattr(m, name):
                ip = getattr(m, name)
                break
        port = None
        for name in ("online_port", "src_port", "port"):
            if hasattr(m, name):
                port = getattr(m, name)
                break
        if port is None:
            raise ConfigError(f"cannot read the online port of map {m!r}")
    if isinstance(ip, (bytes, bytearray)) and len(ip) == 4:
        ip = socket.inet_ntoa(bytes(ip))
    elif isinstance(ip, int):
        ip = socket.inet_ntoa(struct.pack("!I", ip)) if ip else None
    if ip in ("", "0.0.0.0"):
        ip = None
    return ip, int(port)


def tcpcopy_filter_from_maps(maps: Iterable[Any]) -> str:
    """The C tool's automatic filter from ``-x``:
    ``tcp and ((dst port P [and dst host H]) or ...)``.

    A map is a ``(online_ip, online_port)`` pair or an object with
    ``online_ip``/``online_port`` attributes; a missing/empty/0 IP means "any".
    Duplicate terms are merged; the C tool allows at most 32 terms.
    """
    terms: list[str] = []
    for m in maps:
        ip, port = _map_fields(m)
        term = f"dst port {port}" if ip is None else f"dst port {port} and dst host {ip}"
        if term not in terms:
            terms.append(term)
    if not terms:
        raise ConfigError("no -x map to build a capture filter from")
    return "tcp and (" + " or ".join(f"({t})" for t in terms) + ")"
