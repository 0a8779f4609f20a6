"""recvmmsg(2) through ctypes: a batch of datagrams in one syscall.

CPython's socket module has no recvmmsg.  :func:`libc_recvmmsg` finds it in
libc (None where libc lacks it); :func:`batch_buffers` lays out the receive
buffers and the ``struct mmsghdr`` array that points at them.  After a call,
``FLAGS_LEN.unpack_from(msgs, i * MMSG_SIZE + FLAGS_OFF)`` gives the
``msg_flags`` and ``msg_len`` of message ``i`` in one unpack.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any


class IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


FLAGS_OFF = MsgHdr.msg_flags.offset
_LEN_OFF = MMsgHdr.msg_len.offset
MMSG_SIZE = ctypes.sizeof(MMsgHdr)
# msg_flags and msg_len of one struct mmsghdr, read in one unpack
FLAGS_LEN = struct.Struct(f"=i{_LEN_OFF - FLAGS_OFF - 4}xI")


def libc_recvmmsg() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def batch_buffers(n: int, snaplen: int) -> tuple[Any, Any, Any]:
    """``(data, iov, msgs)``: ``n`` buffers of ``snaplen`` bytes in one block,
    one iovec per buffer and one mmsghdr per iovec.  Keep all three alive
    while recvmmsg may write through them."""
    data = ctypes.create_string_buffer(n * snaplen)
    iov = (IOVec * n)()
    msgs = (MMsgHdr * n)()
    base = ctypes.addressof(data)
    for i in range(n):
        iov[i].iov_base = base + i * snaplen
        iov[i].iov_len = snaplen
        msgs[i].msg_hdr.msg_iov = ctypes.addressof(iov[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    return data, iov, msgs
