"""Which PACKET_FANOUT group ids are in use in this network namespace, so
``--workers`` never joins somebody else's group.

A fanout group is named by a 16-bit id per network namespace.  A socket that
asks for an id already in use with the same mode, protocol and device joins
that group: it then takes a share of the other program's packets (an IDS with
``cluster-id 99``, flow hashing and defragmentation uses exactly
``tcpcopy --workers``' mode), and both lose traffic without an error.  The
supervisor's PID modulo 65536 alone is no guarantee: PIDs above 65535 exist
wherever ``kernel.pid_max`` allows them, and other programs pick small fixed
ids.

The kernel lists its packet sockets with their fanout membership through
netlink sock_diag (``ss -0``'s source; PACKET_SHOW_FANOUT, Linux 3.10+):
:func:`ids_in_use` reads that, :func:`choose_group` takes the first free id
from a preferred one.  PACKET_FANOUT_FLAG_UNIQUEID would have the kernel pick,
but only from Linux 4.20 (RHEL 8 runs 4.18) and only for the first socket,
which the supervisor does not open.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Container

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
PACKET_SHOW_FANOUT = 0x8
PACKET_DIAG_FANOUT = 4  # attribute type (the enum starts at PACKET_DIAG_INFO = 0)

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ = struct.Struct("=BBHII8x")  # packet_diag_req: family, protocol, pad, ino, show, cookie
_MSG = struct.Struct("=BBHI8x")  # packet_diag_msg: family, type, num, ino, cookie
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")


def request(seq: int = 1) -> bytes:
    """The dump request for every packet socket's fanout membership."""
    body = _REQ.pack(socket.AF_PACKET, 0, 0, 0, PACKET_SHOW_FANOUT)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse(data: bytes, ids: set[int]) -> bool:
    """Add the fanout group ids named in one netlink read to ``ids``; True
    when the dump is complete.  Raises OSError on a netlink error message,
    ValueError on a malformed one."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            raise ValueError(f"netlink message of length {length} at {pos} of {len(data)}")
        body = pos + _NLMSGHDR.size
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            err = -_ERR.unpack_from(data, body)[0] if length >= _NLMSGHDR.size + 4 else 0
            if err:
                raise OSError(err, "sock_diag of packet sockets: " + os.strerror(err))
        elif mtype == SOCK_DIAG_BY_FAMILY:
            attr = body + _MSG.size
            end = pos + length
            while attr + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, attr)
                if alen < _RTA.size or attr + alen > end:
                    raise ValueError(f"netlink attribute of length {alen} at {attr}")
                if atype == PACKET_DIAG_FANOUT and alen >= _RTA.size + 4:
                    ids.add(_U32.unpack_from(data, attr + _RTA.size)[0] & 0xFFFF)
                attr += (alen + 3) & ~3
        pos += (length + 3) & ~3
    return False


def ids_in_use(timeout: float = 2.0) -> set[int]:
    """The fanout group ids of every packet socket in this network namespace.
    Raises OSError when the kernel cannot tell (no packet_diag)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(timeout)
        sock.sendto(request(), (0, 0))
        ids: set[int] = set()
        while not parse(sock.recv(1 << 16), ids):
            pass
        return ids
    finally:
        sock.close()


def choose_group(preferred: int, in_use: Container[int]) -> int:
    """The first id from ``preferred`` on (wrapping at 65536) not in use."""
    for step in range(0x10000):
        group = (preferred + step) & 0xFFFF
        if group not in in_use:
            return group
    raise OSError("every PACKET_FANOUT group id is in use")


def pick_group(preferred: int) -> tuple[int, str]:
    """A free group id (``preferred`` when it is free) and a few words on how
    it was chosen, for the log."""
    try:
        used = ids_in_use()
    except (OSError, ValueError) as exc:
        return preferred, f"unchecked: the groups in use could not be listed ({exc})"
    group = choose_group(preferred, used)
    if group == preferred:
        return group, f"free; {len(used)} group(s) of other programs in this network namespace"
    return group, f"group {preferred} is another program's"
