"""io/ifaces.py: interface index and name by ioctl where the socket module
lacks them (PyPy), the same answers as CPython's."""

from __future__ import annotations

import socket

import pytest

from pycopy_engine.io import ifaces


def test_the_ioctls_answer_as_the_socket_module(monkeypatch):
    idx, name = socket.if_nametoindex("lo"), "lo"
    monkeypatch.delattr(socket, "if_nametoindex")
    monkeypatch.delattr(socket, "if_indextoname")
    assert ifaces.if_nametoindex(name) == idx
    assert ifaces.if_indextoname(idx) == name
    for bad in ("pycopy-none0", "", "x" * 16):
        with pytest.raises(OSError):
            ifaces.if_nametoindex(bad)
    with pytest.raises(OSError):
        ifaces.if_indextoname(0x7FFFFFF0)
