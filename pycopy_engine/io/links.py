"""tcpcopy's connections to its intercepts (-s, -C, -p, -L).

``-C`` connections to every intercept; each starts with the version-6 hello.
CLIENT_ADD goes to every intercept, round-robin over that intercept's live
connections.  Response frames from any connection go to one callback.  A lost
connection is logged; with ``lonely`` (-L) it is reconnected with backoff and
the caller is told so it can re-register its live sessions, otherwise losing
the last connection is fatal, as in C.

Backoff (-L): each link waits ``BACKOFF_MIN`` before its first retry and twice
as long after every failed attempt, up to ``max_backoff``.  A connection that
is accepted and then closed before it was usable (intercept's ``--allow`` or
``--secret-file`` refused it) counts as a failed attempt: the backoff resets
only once a link has carried records or stayed up ``stable_after`` seconds.
The reason is logged when it changes, not at every attempt.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..core.stats import Stats
from ..errors import ProtocolError, PycopyError
from ..wire.control import HELLO, RECORD_SIZE, FrameDecoder, encode_auth
from ..wire.control_ext import EXT_ACCEPT, EXT_PAYLOAD, decode_body, encode_ext_request
from .channel import Peer, connect, connect_error, start_connect
from .loop import Loop

log = logging.getLogger("pycopy.tcpcopy")


class LinkError(PycopyError):
    pass


BACKOFF_MIN = 0.5
# a refused attempt costs nothing; every second intercept is back but unused is lost replay
MAX_BACKOFF = 5.0


class Server:
    __slots__ = ("host", "port", "peers", "rr", "label", "backoff", "up_at", "usable", "reason")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.peers: List[Optional[Peer]] = []
        self.rr = 0
        self.label = "%s:%d" % (host, port)
        # per link: the next retry delay, when it came up, whether it proved usable,
        # and the last failure reason logged
        self.backoff: List[float] = []
        self.up_at: List[float] = []
        self.usable: List[bool] = []
        self.reason: List[Optional[str]] = []


class InterceptLinks:
    def __init__(self, loop: Loop, servers: Sequence[Tuple[str, int]], per_server: int,
                 stats: Stats, on_records: Callable[[List[bytes]], None], *,
                 combined: bool = True, lonely: bool = False,
                 on_reconnect: Optional[Callable[[Peer], None]] = None,
                 on_all_lost: Optional[Callable[[], None]] = None,
                 connect_timeout: float = 3.0, max_backoff: float = MAX_BACKOFF,
                 stable_after: float = 5.0, min_backoff: float = BACKOFF_MIN,
                 secret: Optional[bytes] = None, ext_caps: int = 0,
                 on_ext: Optional[Callable[[list], None]] = None) -> None:
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
        self.min_backoff = min_backoff
        self.stable_after = stable_after
        self.closing = False
        self.secret = secret
        # pycopy extension (wire/control_ext.py): asked for on every link when
        # ext_caps is set; payload items go to on_ext.  0 = the 1.0 protocol exactly.
        self.ext_caps = ext_caps
        self.on_ext = on_ext
        self.ext_links: set = set()
        stats.add_gauge("control_queue_bytes", self.queued)
        stats.add_gauge("control_links_up", self.live_count)

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        """Connect every link; unreachable intercept -> LinkError (unless lonely)."""
        for srv in self.servers:
            for i in range(self.per_server):
                srv.peers.append(None)
                srv.backoff.append(self.min_backoff)
                srv.up_at.append(0.0)
                srv.usable.append(False)
                srv.reason.append(None)
                try:
                    sock = connect(srv.host, srv.port, self.connect_timeout)
                except OSError as exc:
                    if not self.lonely:
                        raise LinkError("cannot connect to intercept %s (%s)"
                                        % (srv.label, exc.strerror or exc)) from None
                    self._failed(srv, i, "cannot connect: %s" % (exc.strerror or exc))
                    continue
                self._attach(srv, i, sock, first=True)

    def _attach(self, srv: Server, i: int, sock: socket.socket, first: bool) -> None:
        dec = FrameDecoder(self.combined, RECORD_SIZE, ext=bool(self.ext_caps))
        peer = Peer(self.loop, sock, srv.label, self._data, self._closed, self.stats)
        peer.tag = (srv, i, dec)
        srv.peers[i] = peer
        srv.up_at[i] = self.loop.time()
        srv.usable[i] = False
        peer.write(HELLO)
        if self.secret is not None:
            import time

            peer.write(encode_auth(self.secret, int(time.time() * 1000), os.urandom(8)))
        if self.ext_caps:
            peer.write(encode_ext_request(self.ext_caps))
        log.info("connected to intercept %s (link %d)", srv.label, i)
        if not first:
            self.stats.c["control_reconnects"] += 1
            if self.on_reconnect is not None:
                self.on_reconnect(peer)

    def _failed(self, srv: Server, i: int, reason: str) -> None:
        """An attempt failed or a link closed: log the reason if it changed, retry later."""
        delay = srv.backoff[i]
        srv.backoff[i] = min(delay * 2, self.max_backoff)
        self.stats.c["control_retries"] += 1
        if reason != srv.reason[i]:
            srv.reason[i] = reason
            log.error("intercept %s (link %d): %s; retrying in %gs, backing off up to %gs",
                      srv.label, i, reason, delay, self.max_backoff)
        else:
            log.debug("intercept %s (link %d): %s again; retrying in %gs", srv.label, i,
                      reason, delay)
        self._retry(srv, i, delay)

    def _mark_usable(self, srv: Server, i: int) -> None:
        if not srv.usable[i]:
            srv.usable[i] = True
            srv.backoff[i] = self.min_backoff
            if srv.reason[i] is not None:
                log.log(25, "link %d to intercept %s is usable again", i, srv.label)
            srv.reason[i] = None

    def _retry(self, srv: Server, i: int, delay: float) -> None:
        if self.closing:
            return

        def attempt() -> None:
            if self.closing:
                return
            try:
                sock = start_connect(srv.host, srv.port)
            except OSError as exc:
                self._failed(srv, i, "cannot connect: %s" % (exc.strerror or exc))
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
                    self._failed(srv, i, "cannot connect: %s" % os.strerror(err))
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
        if dec.ext_frames and not self._ext(peer, dec):
            return
        if recs:
            srv: Server = peer.tag[0]  # type: ignore[index]
            i: int = peer.tag[1]  # type: ignore[index]
            if not srv.usable[i] and srv.peers[i] is peer:
                self._mark_usable(srv, i)  # intercept reports to us: it accepted this link
            self.on_records(recs)

    def _ext(self, peer: Peer, dec: FrameDecoder) -> bool:
        frames, dec.ext_frames = dec.ext_frames, []
        c = self.stats.c
        for body in frames:
            try:
                kind, val = decode_body(body)
            except ProtocolError as exc:
                c["control_protocol_errors"] += 1
                log.error("intercept %s: %s; closing this link", peer.name, exc)
                peer.close("protocol error")
                return False
            if kind == EXT_PAYLOAD:
                c["ext_items"] += len(val)  # type: ignore[arg-type]
                if self.on_ext is not None:
                    self.on_ext(val)  # type: ignore[arg-type]
            elif kind == EXT_ACCEPT:
                self.ext_links.add(peer)
                log.info("intercept %s accepted the pycopy extension (capabilities 0x%x)",
                         peer.name, val)
            else:
                c["ext_unknown_frames"] += 1
        return True

    @property
    def ext_granted(self) -> int:
        return sum(1 for p in self.ext_links if not p.closed)

    def _closed(self, peer: Peer, reason: str) -> None:
        self.ext_links.discard(peer)
        srv: Server = peer.tag[0]  # type: ignore[index]
        i: int = peer.tag[1]  # type: ignore[index]
        if srv.peers[i] is peer:
            srv.peers[i] = None
        if self.closing:
            return
        self.stats.c["control_lost"] += 1
        up_for = self.loop.time() - srv.up_at[i]
        if not srv.usable[i] and up_for >= self.stable_after:
            self._mark_usable(srv, i)
        if not self.lonely:
            log.error("connection to intercept %s lost (%s)", peer.name, reason)
            if self.live_count() == 0 and self.on_all_lost is not None:
                self.on_all_lost()
            return
        if srv.usable[i]:
            log.error("connection to intercept %s lost (%s); retrying in %gs", peer.name, reason,
                      self.min_backoff)
            srv.usable[i] = False
            srv.backoff[i] = min(self.min_backoff * 2, self.max_backoff)
            self._retry(srv, i, self.min_backoff)
            return
        self.stats.c["control_refused"] += 1
        log.debug("intercept %s (link %d): %s", srv.label, i, reason)
        self._failed(srv, i, "refused: closed before the link was usable (intercept's --allow or"
                             " --secret-file?)")

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
