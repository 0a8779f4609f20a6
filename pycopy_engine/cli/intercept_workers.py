"""intercept ``--workers N``: one worker's side of the sharing (the wiring of
core/routeshare.py and io/workermesh.py into :class:`InterceptApp`).

Worker 0 accepts every tcpcopy link and hands each to the worker with the
fewest (the socket travels over the mesh), so the ``-C`` links of one tcpcopy
spread over the workers.  Each worker captures the answers the fanout hash
gives it, writes those of its own links' routes itself and forwards the
others' records to their owner, batched once per loop turn.
"""

from __future__ import annotations

import argparse
import copy
import logging
import signal
import socket
from typing import TYPE_CHECKING, Dict, Hashable, List, Optional, Tuple

from ..core.router import Key
from ..core.routeshare import (
    HEAD,
    T_LINK,
    LinkBalancer,
    Remote,
    RouteShare,
    decode_head,
    encode_link,
)
from ..core.stats import Stats
from ..errors import ProtocolError
from ..io.channel import Peer, listen
from ..io.workermesh import Mesh
from .common import remove_pid, write_pid

if TYPE_CHECKING:
    from .intercept_app import InterceptApp


class WorkerSide:
    def __init__(self, app: "InterceptApp", index: int, n: int, mesh: Mesh) -> None:
        self.app = app
        self.index = index
        self.n = n
        self.mesh = mesh
        self.share = RouteShare(index, n, app.router, app.stats, app.rewrite)
        self.balancer: Optional[LinkBalancer] = LinkBalancer(n) if index == 0 else None
        self.share.balancer = self.balancer
        self.link_of: Dict[Peer, int] = {}
        self._links = 0
        self._scheduled = False
        mesh.attach(index, app.loop, self._message, app.stats)
        routes = app.router.routes
        # merged over the workers, each counts the routes of its own links only
        app.stats.add_gauge("routes", lambda: sum(
            1 for v in routes.values() if v[0].__class__ is not Remote))
        app.stats.add_gauge("worker_queue_bytes", lambda: mesh.queued_bytes)

    # ------------------------------------------------------------ links

    def hand_over(self, sock: socket.socket, name: str) -> bool:
        """The acceptor's choice for a new link: True when another worker took it."""
        assert self.balancer is not None
        w = self.balancer.pick()
        if w == self.index:
            return False
        ok = self.mesh.send(w, encode_link(self.index, name), sock.fileno())
        sock.close()
        c = self.app.stats.c
        if ok:
            c["links_handed_over"] += 1
        else:
            self.balancer.closed(w)
            c["drop:link_handover"] += 1
            self.app.log.error("cannot hand tcpcopy %s to worker %d: its queue is full", name, w)
        return True

    def adopted(self, peer: Peer) -> None:
        self._links += 1
        self.link_of[peer] = self._links

    def client_add(self, peer: Peer, key: Key) -> None:
        link = self.link_of.get(peer)
        if link is not None:
            self.share.local_add(key, link, self.app.loop.time())
            self.schedule()

    def closed(self, peer: Peer) -> None:
        link = self.link_of.pop(peer, None)
        if link is not None:
            self.share.link_down(link)
            self.schedule()

    def expired(self, stale: List[Tuple[Key, Hashable]]) -> None:
        link_of = self.link_of
        for key, conn in stale:
            link = link_of.get(conn)  # type: ignore[call-overload]
            if link is not None:
                self.share.local_del(key, link)
        self.schedule()

    # ------------------------------------------------------------ records

    def forward(self, worker: int, rec: bytes) -> None:
        self.share.forward(worker, rec)
        if not self._scheduled:
            self._scheduled = True
            self.app.loop.call_soon(self.flush)

    def schedule(self) -> None:
        if not self._scheduled and self.share.pending:
            self._scheduled = True
            self.app.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Once per loop turn: everything queued for the others, one datagram each."""
        self._scheduled = False
        send = self.mesh.send
        for w, dg in self.share.datagrams():
            send(w, dg, None, HEAD.size)  # route and record datagrams may be merged

    def _message(self, data: bytes, sock: Optional[socket.socket]) -> None:
        app = self.app
        try:
            if sock is not None:
                kind, sender = decode_head(data)
                if kind != T_LINK:
                    raise ProtocolError("a socket came with a datagram of type %d" % kind)
                app.adopt(sock, data[2:].decode("utf-8", "replace") + " via worker %d" % sender)
                return
            deliveries = self.share.receive(data, app.loop.time())
        except ProtocolError as exc:
            if sock is not None:
                sock.close()
            app.stats.c["worker_protocol_errors"] += 1
            app.log.error("worker %d: %s", self.index, exc)
            return
        if deliveries:
            peers = app.peers
            queue = app._queue
            for conn, rec in deliveries:
                queue(conn, peers.get(conn), rec)  # type: ignore[arg-type,call-overload]
            app._flush()
        self.schedule()  # records held here for a route just learned go to its owner

    def start_accepting(self) -> None:
        """Worker 0, once every worker's capture is in the fanout group (so no
        flow moves to another worker while sessions run)."""
        app = self.app
        if app.listener is not None:
            app.loop.add_reader(app.listener, app._accept)
            app.log.log(25, "all %d workers capture: accepting tcpcopy links", self.n)

    def close(self) -> None:
        self.flush()
        self.mesh.close()


def serve(args: argparse.Namespace, log: logging.Logger) -> int:
    """``intercept --workers N`` (N > 1): the listening socket and the mesh are
    made here, then io/workers.py forks and supervises the workers and
    serves the merged ``--metrics`` and ``--stats-json``."""
    from ..io import workers
    from .logreopen import reopen_logs
    from .statsout import GAUGES, HELP

    n = args.workers
    listener = listen(args.bind, args.port)
    mesh = Mesh(n)
    wargs = copy.copy(args)  # the parent serves the statistics and owns the PID file
    wargs.metrics = wargs.stats_json = wargs.pidfile = None

    def child(index: int) -> int:
        from .intercept_app import InterceptApp

        w = workers.current()
        assert w is not None
        stats = Stats()
        app = InterceptApp(wargs, stats, log, index=index, mesh=mesh,
                           listener=listener if index == 0 else None,
                           fanout_group=w.fanout_group)
        if index:
            listener.close()
        if not w.ready():  # every worker's capture is in the group, or stop
            return 1
        w.attach(app.loop, stats.snapshot)
        app.workers.start_accepting()
        return app.run()

    sup = workers.Supervisor(
        n, name="intercept", log=log, metrics_addr=args.metrics, stats_json=args.stats_json,
        stats_interval=float(args.stats_interval), gauges=GAUGES + ("worker_queue_bytes",),
        help_text=HELP, merge_rules=None, ready_timeout=60.0, stop_grace=10.0, finish_ok=False,
        stop_signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
        on_reopen=lambda: reopen_logs() and None)
    sup.start(child)
    listener.close()  # the workers have theirs
    mesh.close()
    write_pid(args.pidfile)
    try:
        return sup.run()
    finally:
        remove_pid(args.pidfile)
