"""tcpcopy's connections to its intercepts (-s, -C, -p, -L).

``-C`` connections to every intercept; each starts with the version-6 hello.
CLIENT_ADD goes to every intercept, round-robin over that intercept's live
connections.  Response frames from any connection go to one callback.  A lost
connection is logged; with ``lonely`` (-L) it is reconnected with backoff and
the caller is told so it can re-register its live sessions, otherwise losing
the last connection is fatal, as in C.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..core.stats import Stats
from ..errors import ProtocolError, PycopyError
from ..wire.control import HELLO, RECORD_SIZE, FrameDecoder, encode_auth
from .channel import Peer, connect, connect_error, start_connect
from .loop import Loop

log = logging.getLogger("pycopy.tcpcopy")


class LinkError(PycopyError):
    pass


class Server:
    __slots__ = ("host", "port", "peers", "rr", "label")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.peers: List[Optional[Peer]] = []
        self.rr = 0
        self.label = "%s:%d" % (host, port)


class InterceptLinks:
    def __init__(self, loop: Loop, servers: Sequence[Tuple[str, int]], per_server: int,
                 stats: Stats, on_records: Callable[[List[bytes]], None], *,
                 combined: bool = True, lonely: bool = False,
                 on_reconnect: Optional[Callable[[Peer], None]] = None,
                 on_all_lost: Optional[Callable[[], None]] = None,
                 connect_timeout: float = 3.0, max_backoff: float = 12.0,
                 secret: Optional[bytes] = None) -> None:
        self.loop = loop
        self.servers = [Server(h, p) for h, p in servers]
        self.per_server = max(1, per_server)
        self.stats = stats
        self.on_records = on_records
        self.combined = combined
        self.lonely = lonely
        self.on_reconnect = on_reconnect
        self.on_all_lost = on_all_lost
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.closing = False
        self.secret = secret
        stats.add_gauge("control_queue_bytes", self.queued)
        stats.add_gauge("control_links_up", self.live_count)

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        """Connect every link; unreachable intercept -> LinkError (unless lonely)."""
        for srv in self.servers:
            for i in range(self.per_server):
                srv.peers.append(None)
                try:
                    sock = connect(srv.host, srv.port, self.connect_timeout)
                except OSError as exc:
                    if not self.lonely:
                        raise LinkError("cannot connect to intercept %s (%s)"
                                        % (srv.label, exc.strerror or exc)) from None
                    log.warning("cannot connect to intercept %s (%s), retrying",
                                srv.label, exc.strerror or exc)
                    self._retry(srv, i, 0.5)
                    continue
                self._attach(srv, i, sock, first=True)

    def _attach(self, srv: Server, i: int, sock: socket.socket, first: bool) -> None:
        dec = FrameDecoder(self.combined, RECORD_SIZE)
        peer = Peer(self.loop, sock, srv.label, self._data, self._closed, self.stats)
        peer.tag = (srv, i, dec)
        srv.peers[i] = peer
        peer.write(HELLO)
        if self.secret is not None:
            import os
            import time

            peer.write(encode_auth(self.secret, int(time.time() * 1000), os.urandom(8)))
        log.info("connected to intercept %s (link %d)", srv.label, i)
        if not first:
            self.stats.c["control_reconnects"] += 1
            if self.on_reconnect is not None:
                self.on_reconnect(peer)

    def _retry(self, srv: Server, i: int, delay: float) -> None:
        if self.closing:
            return

        def attempt() -> None:
            if self.closing:
                return
            try:
                sock = start_connect(srv.host, srv.port)
            except OSError:
                self._retry(srv, i, min(delay * 2, self.max_backoff))
                return
            deadline = self.loop.call_later(self.connect_timeout, lambda: done(timed_out=True))

            def done(timed_out: bool = False) -> None:
                self.loop.remove_writer(sock)
                deadline.cancel()
                err = None if not timed_out else 110
                if err is None:
                    err = connect_error(sock)
                if err:
                    sock.close()
                    self._retry(srv, i, min(delay * 2, self.max_backoff))
                    return
                self._attach(srv, i, sock, first=False)

            self.loop.add_writer(sock, done)

        self.loop.call_later(delay, attempt)

    # ------------------------------------------------------------ traffic

    def _data(self, peer: Peer, data: bytes) -> None:
        dec: FrameDecoder = peer.tag[2]  # type: ignore[index]
        try:
            recs = dec.feed(data)
        except ProtocolError as exc:
            self.stats.c["control_protocol_errors"] += 1
            log.error("intercept %s: %s; closing this link", peer.name, exc)
            peer.close("protocol error")
            return
        if recs:
            self.on_records(recs)

    def _closed(self, peer: Peer, reason: str) -> None:
        srv: Server = peer.tag[0]  # type: ignore[index]
        i: int = peer.tag[1]  # type: ignore[index]
        if srv.peers[i] is peer:
            srv.peers[i] = None
        if self.closing:
            return
        self.stats.c["control_lost"] += 1
        log.error("connection to intercept %s lost (%s)", peer.name, reason)
        if self.lonely:
            self._retry(srv, i, 0.5)
        elif self.live_count() == 0 and self.on_all_lost is not None:
            self.on_all_lost()

    def broadcast(self, msgs: List[bytes]) -> None:
        """Send each message to every intercept, round-robin over that intercept's
        live links, with one write per link for the whole batch."""
        for srv in self.servers:
            peers = srv.peers
            k = len(peers)
            parts: Dict[int, List[bytes]] = {}
            for msg in msgs:
                for _ in range(k):
                    srv.rr = (srv.rr + 1) % k
                    p = peers[srv.rr]
                    if p is not None and not p.closed:
                        parts.setdefault(srv.rr, []).append(msg)
                        break
                else:
                    self.stats.c["drop:client_add_no_link"] += 1
            for i, chunk in parts.items():
                p = peers[i]
                if p is not None:
                    p.write(chunk[0] if len(chunk) == 1 else b"".join(chunk))

    def live_count(self) -> int:
        return sum(1 for s in self.servers for p in s.peers if p is not None and not p.closed)

    def queued(self) -> int:
        return sum(p.queued for s in self.servers for p in s.peers if p is not None)

    def close(self) -> None:
        self.closing = True
        for srv in self.servers:
            for p in srv.peers:
                if p is not None:
                    # flush what is queued, best effort, then FIN
                    if p.out:
                        try:
                            p.sock.setblocking(True)
                            p.sock.settimeout(1.0)
                            p.sock.sendall(bytes(p.out))
                        except OSError:
                            pass
                    p.close("shutdown")
