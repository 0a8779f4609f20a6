"""Send whole IPv4 packets with a raw socket (IP_HDRINCL).

``socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`` implies IP_HDRINCL: the kernel takes
our IP header as it is (it fills in the IP id when it is 0 and the header
checksum always) and routes the packet by its destination.  Every send error
is a per-packet failure: counted as ``send_error:<ERRNO NAME>`` in the given
:class:`Stats` and reported by a False return, never raised (the C tool died
on EPERM from a full conntrack table, tcpcopy#391).
"""

from __future__ import annotations

import errno
import socket

from pycopy_engine.core.stats import Stats
from pycopy_engine.io.capture import CAP_NET_RAW_MSG, CapturePermissionError

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # not exported by CPython
_ERRNAMES: dict[int, str] = {}


def _errname(code: int) -> str:
    name = _ERRNAMES.get(code)
    if name is None:
        name = errno.errorcode.get(code, f"E{code}")
        _ERRNAMES[code] = name
    return name


class RawSender:
    """One raw IPv4 socket; ``send(pkt, dst_ip)`` costs one sendto()."""

    __slots__ = ("sock", "stats", "_sendto", "_dst", "sent", "failed")

    def __init__(self, stats: Stats | None = None, sndbuf: int = 16 << 20) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError as exc:
            raise CapturePermissionError(
                exc.errno, CAP_NET_RAW_MSG.replace("capturing", "sending raw packets")
            ) from None
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            try:  # root may exceed net.core.wmem_max
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.stats = stats if stats is not None else Stats()
        self._sendto = sock.sendto
        self._dst: dict[bytes, tuple[str, int]] = {}  # 4-byte address -> sockaddr
        self.sent = 0
        self.failed = 0

    def send(self, pkt: bytes | bytearray | memoryview, dst_ip: bytes) -> bool:
        """Send one complete IPv4 packet to ``dst_ip`` (4 bytes, network order;
        a dotted string is accepted too).  Returns False on any OS error."""
        addr = self._dst.get(dst_ip)
        if addr is None:
            addr = (socket.inet_ntoa(dst_ip) if isinstance(dst_ip, bytes) else str(dst_ip), 0)
            if len(self._dst) > 4096:
                self._dst.clear()
            self._dst[dst_ip] = addr
        try:
            self._sendto(pkt, addr)
        except OSError as exc:
            self.failed += 1
            self.stats.c["send_error:" + _errname(exc.errno or 0)] += 1
            return False
        self.sent += 1
        return True

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
