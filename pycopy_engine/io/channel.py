"""Control-channel sockets: non-blocking, bounded, never stalling the loop.

``Peer`` wraps one connected TCP socket: reads go to a callback, writes go
through a bounded output buffer; when a peer is too slow and the buffer is
full, whole messages are dropped and counted (``drop:peer_slow``) instead of
blocking the process (the C intercept blocked on a slow tcpcopy, and the C
tcpcopy gave up after spinning on EAGAIN).
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable, Optional

from ..core.stats import Stats
from .loop import Loop

log = logging.getLogger("pycopy.channel")

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class Peer:
    __slots__ = ("loop", "sock", "name", "on_data", "on_close", "max_out", "stats", "out",
                 "closed", "_writing", "fd", "tag", "authed")

    def __init__(self, loop: Loop, sock: socket.socket, name: str,
                 on_data: Callable[["Peer", bytes], None],
                 on_close: Callable[["Peer", str], None],
                 stats: Stats, max_out: int = 8 << 20) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.on_data = on_data
        self.on_close = on_close
        self.max_out = max_out
        self.stats = stats
        self.out = bytearray()
        self.closed = False
        self._writing = False
        self.tag: object = None
        self.authed = False
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        loop.add_reader(sock, self._readable)

    def write(self, data: bytes) -> bool:
        """Queue ``data`` (one whole message); False if dropped or closed."""
        if self.closed:
            return False
        out = self.out
        if not out:
            try:
                n = self.sock.send(data)
            except OSError as exc:
                if exc.errno in _AGAIN:
                    n = 0
                else:
                    self.close("send error: %s" % (exc.strerror or exc))
                    return False
            if n == len(data):
                return True
            data = data[n:]
        if len(out) + len(data) > self.max_out:
            self.stats.c["drop:peer_slow"] += 1
            return False
        out += data
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self.sock, self._writable)
        return True

    @property
    def queued(self) -> int:
        return len(self.out)

    def _writable(self) -> None:
        out = self.out
        try:
            n = self.sock.send(out)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return
            self.close("send error: %s" % (exc.strerror or exc))
            return
        del out[:n]
        if not out and self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(262144)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return
            self.close("receive error: %s" % (exc.strerror or exc))
            return
        if not data:
            self.close("closed by peer")
            return
        self.on_data(self, data)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.sock)
            if self._writing:
                self.loop.remove_writer(self.sock)
        except (KeyError, ValueError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close(self, reason)


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def connect(host: str, port: int, timeout: float = 3.0) -> socket.socket:
    """A blocking connect with a deadline; raises OSError."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    return sock


def start_connect(host: str, port: int) -> socket.socket:
    """Begin a non-blocking connect; completion shows as writability."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
        sock.close()
        raise OSError(err, errno.errorcode.get(err, str(err)))
    return sock


def connect_error(sock: socket.socket) -> Optional[int]:
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return err or None
