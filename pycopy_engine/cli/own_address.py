"""``tcpcopy --no-assistant``: the parts of own-address mode that replace intercept.

* the port pool (core/portpool.py) built from this host's port facts
  (io/hostports.py) and handed to the engine;
* the capture of the target's answers to the pool's ports (AF_PACKET, a
  kernel filter on the targets' addresses and this host's own addresses),
  each answer turned into the same 64-byte record intercept would send and
  fed to the engine directly;
* the drop rule (io/droprule.py) that keeps those answers from this host's
  stack, installed at start and removed at exit.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, List, Sequence, Tuple

from ..core.engine import Engine
from ..core.portpool import PortPool, pool_ports, port_intervals
from ..core.stats import Stats
from ..errors import WireError
from ..io import bpf, droprule, hostports
from ..io.capture import open_packet_capture
from ..io.loop import Loop
from ..wire.control import make_record

ANSWER_SNAPLEN = 128  # IP + TCP headers with options: all a record needs


def answer_filter(targets: Sequence[Tuple[str, int]], own: Sequence[str]) -> str:
    src = " or ".join(f"(src host {t} and src port {p})" for t, p in targets)
    dst = " or ".join(f"dst host {o}" for o in own)
    return f"tcp and ({src}) and ({dst})"


class NoLinks:
    """Stands in for InterceptLinks: there is no intercept to talk to."""

    def start(self) -> None:
        pass

    def broadcast(self, msgs: List[bytes]) -> None:
        pass

    def live_count(self) -> int:
        return 0

    def close(self) -> None:
        pass


class OwnAddress:
    def __init__(self, loop: Loop, engine: Engine, stats: Stats, log: logging.Logger,
                 maps: Sequence[Any], own: Sequence[bytes], flush: Callable[[], None]) -> None:
        self.loop = loop
        self.engine = engine
        self.stats = stats
        self.log = log
        self.flush = flush
        self.targets = sorted({(socket.inet_ntoa(m.target_ip), m.target_port) for m in maps})
        self.own = [socket.inet_ntoa(ip) for ip in own]
        lrange = hostports.local_port_range()
        excluded = hostports.listening_ports() | hostports.live_ports()
        excluded |= {m.online_port for m in maps}
        ports = pool_ports(lrange, excluded)
        self.intervals = port_intervals(ports)
        self.pool = PortPool(ports)
        engine.use_port_pool(self.pool, hostports.LivePorts())
        stats.add_gauge("port_pool_size", lambda: self.pool.size)
        log.log(25, "own-address mode: source %s, %d pool ports outside ip_local_port_range"
                " %d-%d (%d listening/live ports left out)", ",".join(self.own), len(ports),
                lrange[0], lrange[1], len(excluded))
        expr = answer_filter(self.targets, self.own)
        prog = bpf.compile_filter(expr, bpf.DLT_RAW)
        self.capture = open_packet_capture(None, prog, ignore_outgoing=True,
                                           snaplen=ANSWER_SNAPLEN)
        stats.add_gauge("answer_capture_drops",
                        lambda: self.capture.kernel_stats().get("drops", 0))
        log.log(25, "own-address mode: answers captured with filter: %s", expr)
        self.rule_backend = ""

    def start(self) -> None:
        which, stale = droprule.install(self.targets, self.own, self.intervals)
        self.rule_backend = which
        if stale:
            self.log.warning("own-address mode: removed a stale drop rule left by an earlier run")
        self.log.log(25, "own-address mode: drop rule installed (%s, table/chain %s)", which,
                     droprule.TABLE if which == "nft" else droprule.CHAIN)
        self.loop.add_reader(self.capture.fileno(), self._on_answers)

    def _on_answers(self) -> None:
        now = self.loop.time()
        c = self.stats.c
        on_record = self.engine.on_record

        def handle(pkt: Any) -> None:
            try:
                rec = make_record(pkt)
            except WireError as exc:
                c["drop:answer_" + exc.reason] += 1
                return
            on_record(rec, now)

        if self.capture.read_batch(handle):
            self.flush()

    def close(self) -> None:
        try:
            if droprule.remove():
                self.log.log(25, "own-address mode: drop rule removed")
        finally:
            self.capture.close()

    def stat_line(self) -> str:
        p = self.pool
        return "port pool: size:%d, held:%d, free:%d, exhausted:%d, busy skipped:%d" % (
            p.size, p.held_count, p.free_count, self.stats.c["port_pool_exhausted"],
            p.busy_skipped)
