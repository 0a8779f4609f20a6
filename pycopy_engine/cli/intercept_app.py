"""intercept's process: AF_PACKET capture of responses, the route table, and
any number of tcpcopy connections, none of which can stall the others."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from .. import accel
from ..core.router import Combiner, Router
from ..core.routeshare import Remote
from ..core.stats import Stats
from ..errors import ProtocolError, WireError
from ..io.capture import FANOUT_DEFAULT_MODE, open_packet_capture
from ..io.channel import Peer, listen
from ..io.loop import Loop
from ..wire.control import (
    MSG_CLIENT_ADD,
    VERSION,
    ClientMsgDecoder,
    check_auth,
    make_record,
)
from .common import (
    install_stop_signals,
    read_secret,
    reasons,
    remove_pid,
    tune_gc,
    version_line,
    write_pid,
)
from .intercept_ext import AnswerPayloads
from .logreopen import install_log_reopen
from .statsout import StatsOutput

SNAPLEN = 128
AUTH_WAIT = 3.0  # seconds a new connection has to prove the shared secret  # a full IPv4 header and a full TCP header (60 + 60) fit


class InterceptApp:
    """One intercept process, or one worker of ``--workers`` (``mesh`` given:
    worker ``index`` of ``mesh.n``, capturing its share of fanout group
    ``fanout_group``; ``listener`` only in worker 0, which accepts)."""

    def __init__(self, args: argparse.Namespace, stats: Stats, log: logging.Logger,
                 index: int = 0, mesh: Any = None, listener: Optional[socket.socket] = None,
                 fanout_group: int = 0) -> None:
        self.args = args
        self.stats = stats
        self.log = log
        self.loop = Loop()
        self.router = Router(stats, route_ttl=float(args.route_ttl), max_routes=args.max_routes)
        self.peers: Dict[Peer, Combiner] = {}
        self.dirty: List[Peer] = []
        self.combined = not args.uncombined
        ifaces = [i for i in (args.iface or "").split(",") if i] or None
        fanout = (fanout_group, FANOUT_DEFAULT_MODE) if mesh is not None else None
        self.capture = open_packet_capture(
            ifaces, args.bpf, snaplen=SNAPLEN, fanout=fanout, ring_bytes=args.bufsize << 20,
            drop_hint="raise -B (the capture ring, now %d MB)" % args.bufsize)
        self.listener = listener if mesh is not None else listen(args.bind, args.port)
        self.allow = args.allow
        self.rewrite = args.rewrite
        self.secret = read_secret(args.secret_file)
        self.nonces: "OrderedDict[bytes, float]" = OrderedDict()
        self.exit_status = 0
        self.expire_ticks = 0
        self.ext = AnswerPayloads(self)  # the pycopy extension (cli/intercept_ext.py)
        self.workers: Any = None
        if mesh is not None:
            from .intercept_workers import WorkerSide

            self.workers = WorkerSide(self, index, mesh.n, mesh)
        stats.add_gauge("tcpcopy_links", lambda: len(self.peers))
        stats.add_gauge("capture_kernel_drops", lambda: self.capture.kernel_stats().get("drops", 0))
        self.out = StatsOutput(self.loop, "intercept", stats, log, self._stat_lines, args)

    # ------------------------------------------------------------ control side

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.error("accept failed: %s", exc.strerror)
                return
            if self.allow is not None and not any(
                    ipaddress.IPv4Address(addr[0]) in n for n in self.allow):
                self.stats.c["control_refused:not_allowed"] += 1
                self.log.warning("refused control connection from %s:%d (not in --allow)", *addr)
                sock.close()
                continue
            self.stats.c["control_accepted"] += 1
            name = "%s:%d" % addr
            if self.workers is not None and self.workers.hand_over(sock, name):
                continue
            self.adopt(sock, name)

    def adopt(self, sock: socket.socket, name: str) -> None:
        """Serve one accepted tcpcopy link (here, or handed over by worker 0)."""
        peer = Peer(self.loop, sock, name, self._data, self._closed, self.stats,
                    max_out=self.args.peer_buffer << 10)
        peer.tag = ClientMsgDecoder()
        self.peers[peer] = Combiner()
        if self.workers is not None:
            self.workers.adopted(peer)
        self.log.info("it adds fd:%d (tcpcopy %s)", peer.fd, peer.name)
        if self.secret is not None:
            self.loop.call_later(AUTH_WAIT, functools.partial(self._auth_deadline, peer))

    def _auth_deadline(self, peer: Peer) -> None:
        if not peer.closed and not peer.authed:
            self.stats.c["control_refused:auth"] += 1
            self.log.error("tcpcopy %s refused: authentication required (start tcpcopy with "
                           "--secret-file)", peer.name)
            peer.close("authentication missing")

    def _data(self, peer: Peer, data: bytes) -> None:
        dec: ClientMsgDecoder = peer.tag  # type: ignore[assignment]
        first = dec.version is None
        try:
            msgs = dec.feed(data)
        except ProtocolError as exc:
            self.stats.c["control_protocol_errors"] += 1
            self.log.error("tcpcopy %s: %s; closing it", peer.name, exc)
            peer.close("protocol error")
            return
        if first and dec.version is not None and dec.version != VERSION:
            self.log.warning("not compatible,client:%d,intercept:%d (%s)", dec.version, VERSION,
                             peer.name)
        if self.secret is not None and not peer.authed:
            if dec.auth is None and dec.count <= 1:
                return  # only the hello so far: the proof may follow
            if dec.auth is None:
                why = "authentication required (start tcpcopy with --secret-file)"
            else:
                why = check_auth(self.secret, dec.auth, int(time.time() * 1000))
                if not why and dec.auth in self.nonces:
                    why = "replayed authentication record"
            if why:
                self.stats.c["control_refused:auth"] += 1
                self.log.error("tcpcopy %s refused: %s", peer.name, why)
                peer.close("authentication failed")
                return
            self.nonces[dec.auth] = time.time()  # type: ignore[index]
            if len(self.nonces) > 10000:
                self.nonces.popitem(last=False)
            peer.authed = True
        if dec.ext and peer not in self.ext.peers:
            self.ext.negotiate(peer, dec.ext)
        now = self.loop.time()
        comb = self.peers.get(peer)
        workers = self.workers
        for m in msgs:
            if m.type == MSG_CLIENT_ADD and not (m.clt_ip == b"\0\0\0\0" and m.clt_port == 0):
                key = (m.clt_ip, m.clt_port, m.target_ip, m.target_port)
                for rec in self.router.add(key, peer, now):
                    self._queue(peer, comb, rec)
                if workers is not None:
                    workers.client_add(peer, key)
        self._flush()

    def _closed(self, peer: Peer, reason: str) -> None:
        self.peers.pop(peer, None)
        self.ext.drop(peer)
        n = self.router.drop_conn(peer)
        if self.workers is not None:
            self.workers.closed(peer)
        self.log.info("release tunnel resources, tcpcopy %s (%s), %d route(s) dropped",
                      peer.name, reason, n)

    # ------------------------------------------------------------ capture side

    def _on_capture(self) -> None:
        now = self.loop.time()
        c = self.stats.c
        route = self.router.route
        peers = self.peers
        queue = self._queue
        rewrite = self.rewrite
        forward = self.workers.forward if self.workers is not None else None

        def handle(pkt) -> None:
            c["all_packets"] += 1
            try:
                ihl = (pkt[0] & 0x0F) << 2
                if pkt[0] >> 4 != 4 or pkt[9] != 6 or ihl < 20:
                    c["drop:not_tcp"] += 1
                    return
                rec = make_record(pkt)
            except (IndexError, WireError) as exc:
                c["drop:" + getattr(exc, "reason", "malformed")] += 1
                return
            c["resp_packets"] += 1
            dst = rec[16:20]
            if rewrite is not None and dst == rewrite[0]:
                dst = rewrite[1]
            t = ihl
            key = (dst, (pkt[t + 2] << 8) | pkt[t + 3], rec[12:16], (pkt[t] << 8) | pkt[t + 1])
            peer: Any = route(key, rec, pkt[t + 13], now)
            if peer is not None:
                comb = peers.get(peer)
                if comb is not None:
                    queue(peer, comb, rec)
                elif forward is not None and peer.__class__ is Remote:
                    forward(peer.worker, rec)  # another worker's link: sent once per turn

        if self.capture.read_batch(handle):
            self._flush()

    def _queue(self, peer: Peer, comb, rec: bytes) -> None:
        if comb is None:
            return
        if not self.combined:
            self._write(peer, rec, 1)
            return
        if not comb.pending:
            self.dirty.append(peer)
        frame = comb.add(rec)
        if frame is not None:
            self._write(peer, frame, 16)

    def _write(self, peer: Peer, data: bytes, n: int) -> None:
        c = self.stats.c
        if peer.write(data):
            c["records_sent"] += n
            c["sock_writes"] += 1
        else:
            c["drop:records_peer_slow"] += n

    def _flush(self) -> None:
        dirty = self.dirty
        if not dirty:
            return
        for peer in dirty:
            comb = self.peers.get(peer)
            if comb is not None and comb.pending:
                n = len(comb.pending)
                frame = comb.flush()
                self._write(peer, frame, n)  # type: ignore[arg-type]
        dirty.clear()

    # ------------------------------------------------------------ running

    def _expire(self) -> None:
        now = self.loop.time()
        self.expire_ticks += 1  # idle routes need a full scan: once a minute
        stale = self.router.expire(now, routes=self.expire_ticks % 60 == 0)
        if stale and self.workers is not None:
            self.workers.expired(stale)
        self.loop.call_later(1.0, self._expire)

    def _stop(self, signum: int) -> None:
        self.log.log(25, "signal %d received, exiting", signum)
        self.loop.stop()

    def _stat_lines(self) -> List[str]:
        c = self.stats.c
        k = self.capture.kernel_stats()
        return [
            "total resp packs:%d, all:%d, route:%d, sock write cnt:%d" % (
                c["resp_packets"], c["all_packets"], c["route_add"], c["sock_writes"]),
            "records sent:%d, delayed:%d, delay sent:%d, routes:%d, tcpcopy links:%d" % (
                c["records_sent"], c["delayed"], c["delay_sent"], len(self.router.routes),
                len(self.peers)),
            "capture kernel packets:%d, kernel drops:%d" % (k.get("packets", 0), k.get("drops", 0)),
            "drops by reason: %s" % reasons(self.stats.by_reason("drop")),
        ]

    def run(self) -> int:
        args = self.args
        self.log.log(25, "%s", version_line("intercept"))
        self.log.info("%s", accel.describe())  # make accel: pycopy_engine/accel.py
        where = args.iface or "all interfaces"
        if self.capture.plan is not None:
            where += " (ring: %s)" % self.capture.plan.describe(SNAPLEN)
        if self.workers is not None:
            self.log.log(25, "worker %d of %d: capture on %s (its fanout share), filter: %s",
                         self.workers.index, self.workers.n, where, args.filter)
        else:
            self.log.log(25, "listening on %s:%d, capture on %s, filter: %s", args.bind,
                         args.port, where, args.filter)
        write_pid(args.pidfile)
        install_stop_signals(self._stop)
        install_log_reopen(self.loop, self.log)
        if self.listener is not None and self.workers is None:
            self.loop.add_reader(self.listener, self._accept)  # workers: once all capture
        self.loop.add_reader(self.capture.fileno(), self._on_capture)
        self.loop.call_later(1.0, self._expire)
        self.out.start()
        tune_gc()
        try:
            self.loop.run()
        finally:
            self.out.final()
            for peer in list(self.peers):
                peer.close("shutdown")
            self.ext.close()
            if self.workers is not None:
                self.workers.close()
            if self.listener is not None:
                self.listener.close()
            self.capture.close()
            remove_pid(args.pidfile)
        return self.exit_status


