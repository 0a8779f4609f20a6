"""Interface names and indexes (``socket.if_nametoindex`` / ``if_indextoname``),
also where the socket module lacks them (PyPy): the SIOCGIFINDEX and
SIOCGIFNAME ioctls, which answer for the caller's network namespace."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFNAME = 0x8910
SIOCGIFINDEX = 0x8933
_IFREQ = struct.Struct("16si12x")  # ifr_name, ifr_ifindex (struct ifreq is 40 bytes)


def _ioctl(req: int, arg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), req, arg)


def if_nametoindex(name: str) -> int:
    """The index of interface ``name``; OSError when there is none."""
    native = getattr(socket, "if_nametoindex", None)
    if native is not None:
        return int(native(name))
    raw = name.encode()
    if not raw or len(raw) > 15 or b"\0" in raw:
        raise OSError(f"no interface {name!r}")
    return int(_IFREQ.unpack(_ioctl(SIOCGIFINDEX, _IFREQ.pack(raw, 0)))[1])


def if_indextoname(index: int) -> str:
    """The name of interface ``index``; OSError when there is none."""
    native = getattr(socket, "if_indextoname", None)
    if native is not None:
        return str(native(index))
    name = _IFREQ.unpack(_ioctl(SIOCGIFNAME, _IFREQ.pack(b"", index)))[0]
    return name.split(b"\0", 1)[0].decode()
