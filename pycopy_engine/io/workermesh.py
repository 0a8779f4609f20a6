"""The datagram mesh between intercept's worker processes.

Made before the fork: one ``AF_UNIX``/``SOCK_DGRAM`` socket pair per worker,
its inbox.  Worker *i* reads end 0 of pair *i*; everyone writes to end 1 of
the pair of the worker they address (datagrams from several processes to
one socket stay whole and, from one sender, in order).  After the fork each
worker calls :meth:`Mesh.attach`, which closes the inboxes of the others.

Sending never blocks: a datagram the receiver's queue cannot take now waits
in a bounded per-receiver queue and goes out when the socket is writable
again; beyond ``max_queued`` bytes it is dropped and counted
(``drop:worker_queue_full``).  A datagram may carry one file descriptor
(SCM_RIGHTS): the acceptor hands tcpcopy links to the other workers so.
"""

from __future__ import annotations

import array
import errno
import os
import socket
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

from ..core.stats import Stats
from .loop import Loop

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
BUF = 4 << 20
RECV_MAX = 256 * 1024
MERGE_MAX = 192 * 1024  # the largest datagram made of queued ones (below RECV_MAX and BUF)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)
_ANC = socket.CMSG_SPACE(array.array("i", [0]).itemsize)

OnMessage = Callable[[bytes, Optional[socket.socket]], None]


def _bigger(sock: socket.socket, force: int, plain: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, BUF)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUF)
        except OSError:
            pass


class Mesh:
    def __init__(self, n: int) -> None:
        self.n = n
        self.pairs: List[Tuple[socket.socket, socket.socket]] = []
        for _ in range(n):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            _bigger(a, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            _bigger(b, SO_SNDBUFFORCE, socket.SO_SNDBUF)
            a.setblocking(False)
            b.setblocking(False)
            self.pairs.append((a, b))
        self.me = -1
        self.loop: Optional[Loop] = None
        self.stats = Stats()
        self.on_message: Optional[OnMessage] = None
        self.max_queued = 64 << 20
        self._queues: List[Deque[Tuple[bytes, Optional[int]]]] = [deque() for _ in range(n)]
        self._queued = [0] * n

    def attach(self, me: int, loop: Loop, on_message: OnMessage, stats: Stats) -> None:
        """In worker ``me`` after the fork: keep its inbox and every outbox."""
        self.me = me
        self.loop = loop
        self.on_message = on_message
        self.stats = stats
        for i, (a, _b) in enumerate(self.pairs):
            if i != me:
                a.close()
        loop.add_reader(self.pairs[me][0], self._readable)

    def close(self) -> None:
        if self.loop is not None and self.me >= 0:
            try:
                self.loop.remove_reader(self.pairs[self.me][0])
            except (KeyError, ValueError):
                pass
            for w in range(self.n):
                if self._queues[w]:
                    self._queues[w].clear()
                    self.loop.remove_writer(self.pairs[w][1])
        for a, b in self.pairs:
            a.close()
            b.close()

    # ------------------------------------------------------------ sending

    def send(self, worker: int, data: bytes, fd: Optional[int] = None,
             merge: int = 0) -> bool:
        """Send (or queue) one datagram to ``worker``; False when dropped.

        ``merge`` = n > 0: the datagram is an n-byte head and a body that may
        be appended to a queued datagram with the same head (the receiver's
        queue is short: ``net.unix.max_dgram_qlen`` datagrams, 10 by default),
        up to MERGE_MAX bytes."""
        q = self._queues[worker]
        if not q and self._try(worker, data, fd):
            return True
        if self._queued[worker] + len(data) > self.max_queued:
            self.stats.c["drop:worker_queue_full"] += 1
            return False
        if merge and q and fd is None:
            last, last_fd = q[-1]
            if (last_fd is None and last[:merge] == data[:merge]
                    and len(last) + len(data) - merge <= MERGE_MAX):
                q[-1] = (last + data[merge:], None)
                self._queued[worker] += len(data) - merge
                self.stats.c["worker_sends_merged"] += 1
                return True
        if fd is not None:
            fd = os.dup(fd)  # the caller closes its own copy
        if not q:
            assert self.loop is not None
            self.loop.add_writer(self.pairs[worker][1], lambda: self._writable(worker))
        q.append((data, fd))
        self._queued[worker] += len(data)
        self.stats.c["worker_sends_queued"] += 1
        return True

    def _try(self, worker: int, data: bytes, fd: Optional[int]) -> bool:
        sock = self.pairs[worker][1]
        try:
            if fd is None:
                sock.send(data)
            else:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", [fd]).tobytes())])
        except OSError as exc:
            if exc.errno in _AGAIN:
                return False
            # ECONNREFUSED: that worker is gone (the supervisor is stopping us all)
            self.stats.c["drop:worker_gone"] += 1
        return True

    def _writable(self, worker: int) -> None:
        q = self._queues[worker]
        while q:
            data, fd = q[0]
            if not self._try(worker, data, fd):
                return
            q.popleft()
            self._queued[worker] -= len(data)
            if fd is not None:
                os.close(fd)
        assert self.loop is not None
        self.loop.remove_writer(self.pairs[worker][1])

    @property
    def queued_bytes(self) -> int:
        return sum(self._queued)

    # ------------------------------------------------------------ receiving

    def _readable(self) -> None:
        inbox = self.pairs[self.me][0]
        on_message = self.on_message
        assert on_message is not None
        for _ in range(256):
            try:
                data, anc, flags, _addr = inbox.recvmsg(RECV_MAX, _ANC)
            except OSError as exc:
                if exc.errno in _AGAIN:
                    return
                raise
            sock = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    for i, fd in enumerate(fds):
                        if i == 0:
                            sock = socket.socket(fileno=fd)
                        else:  # never sent: do not leak it
                            socket.socket(fileno=fd).close()
            on_message(data, sock)
