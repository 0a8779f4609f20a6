"""tcpcopy's intercept links and the pycopy extension, on real loopback sockets:
without ext_caps a link sends exactly the 1.0 bytes; with it, the request
follows the hello and extension frames from intercept reach ``on_ext``."""

from __future__ import annotations

import socket
import time

from pycopy_engine.core.stats import Stats
from pycopy_engine.io.links import InterceptLinks
from pycopy_engine.io.loop import Loop
from pycopy_engine.wire.control import HELLO, encode_frame
from pycopy_engine.wire.control_ext import (
    CAP_ANSWERS,
    encode_accept,
    encode_ext_request,
    encode_item,
    payload_frames,
)

IP1, IP2 = bytes([10, 1, 0, 10]), bytes([10, 1, 0, 12])


def _links(ext_caps: int, got: dict):
    loop = Loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    links = InterceptLinks(loop, [("127.0.0.1", lsock.getsockname()[1])], 1, Stats(),
                           lambda recs: got.setdefault("recs", []).extend(recs),
                           ext_caps=ext_caps,
                           on_ext=lambda items: got.setdefault("items", []).extend(items))
    links.start()
    conn, _ = lsock.accept()
    conn.settimeout(0.2)
    return loop, lsock, links, conn


def _read_all(loop: Loop, conn: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        loop.run_once(0)
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            if data:
                break
            continue
        data += chunk
    return data


def test_without_ext_the_link_sends_exactly_the_hello():
    got: dict = {}
    loop, lsock, links, conn = _links(0, got)
    try:
        assert _read_all(loop, conn) == HELLO
        links.broadcast([b"x" * 14])
        assert _read_all(loop, conn) == b"x" * 14
    finally:
        links.close()
        conn.close()
        lsock.close()


def test_with_ext_the_request_follows_and_frames_are_decoded():
    got: dict = {}
    loop, lsock, links, conn = _links(CAP_ANSWERS, got)
    try:
        assert _read_all(loop, conn) == HELLO + encode_ext_request(CAP_ANSWERS)
        rec = bytes([0x45]) + bytes(63)
        item = encode_item(IP1, 4000, IP2, 80, 12345, 678, 0x18, b"HTTP/1.1 200 OK\r\n")
        conn.sendall(encode_accept(CAP_ANSWERS) + encode_frame([rec]) + payload_frames([item])[0])
        deadline = time.monotonic() + 2
        while "items" not in got and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert got["recs"] == [rec]
        (it,) = got["items"]
        assert it[:7] == (IP1, 4000, IP2, 80, 12345, 678, 0x18)
        assert bytes(it[7]) == b"HTTP/1.1 200 OK\r\n"
        assert links.ext_granted == 1
    finally:
        links.close()
        conn.close()
        lsock.close()
