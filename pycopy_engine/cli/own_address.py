"""``tcpcopy --no-assistant``: the parts of own-address mode that replace intercept.

* the port pool (core/portpool.py) built from this host's port facts
  (io/hostports.py) and handed to the engine;
* the capture of the target's answers to the pool's ports (AF_PACKET, a
  kernel filter on the targets' addresses and this host's own addresses),
  each answer turned into the same 64-byte record intercept would send and
  fed to the engine directly;
* the drop rule (io/droprule.py) that keeps those answers from this host's
  stack, installed at start and removed at exit (``--drop-rule auto``), or
  managed by a privileged step (``--drop-rule install`` / ``remove``, e.g. a
  systemd unit's ``ExecStartPre=+`` / ``ExecStopPost=+``) so that the replaying
  process keeps only CAP_NET_RAW (``--drop-rule external``): the install step
  writes the rule's ports to a state file and the replaying process takes its
  pool only from those ports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Callable, List, Sequence, Set, Tuple

from ..core.engine import Engine
from ..core.portpool import PortPool, pool_ports, port_intervals
from ..core.stats import Stats
from ..errors import ConfigError, WireError
from ..io import bpf, droprule, hostports
from ..io.capture import open_packet_capture
from ..io.loop import Loop
from ..wire.control import make_record

CAP_NET_ADMIN = 12
ANSWER_SNAPLEN = 128  # IP + TCP headers with options: all a record needs


def answer_filter(targets: Sequence[Tuple[str, int]], own: Sequence[str],
                  local_range: Tuple[int, int] | None = None) -> str:
    """The target's answers to this host; not those to the kernel's ephemeral ports
    (the host's own connections to the target), which the pool never uses."""
    src = " or ".join(f"(src host {t} and src port {p})" for t, p in targets)
    dst = " or ".join(f"dst host {o}" for o in own)
    expr = f"tcp and ({src}) and ({dst})"
    if local_range is not None:
        expr += " and not dst portrange %d-%d" % local_range
    return expr


def host_pool(maps: Sequence[Any]) -> Tuple[Tuple[int, int], Set[int], List[int]]:
    """(ip_local_port_range, ports left out, pool ports) from this host's facts now."""
    lrange = hostports.local_port_range()
    excluded = hostports.listening_ports() | hostports.live_ports()
    excluded |= {m.online_port for m in maps}
    return lrange, excluded, pool_ports(lrange, excluded)


def _targets(maps: Sequence[Any]) -> List[Tuple[str, int]]:
    return sorted({(socket.inet_ntoa(m.target_ip), m.target_port) for m in maps})


def rule_step(step: str, maps: Sequence[Any], own: Sequence[bytes], state: str) -> str:
    """``--drop-rule install|remove``: do only that (a privileged step); returns a line."""
    if step == "remove":
        removed = droprule.remove()
        try:
            os.unlink(state)
        except FileNotFoundError:
            pass
        return "drop rule removed" if removed else "no drop rule was installed"
    _lr, _ex, ports = host_pool(maps)
    intervals = port_intervals(ports)
    targets = _targets(maps)
    own_s = [socket.inet_ntoa(ip) for ip in own]
    which, stale = droprule.install(targets, own_s, intervals)
    os.makedirs(os.path.dirname(state) or ".", exist_ok=True)
    tmp = state + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"targets": targets, "own": own_s, "intervals": intervals}, f)
    os.replace(tmp, state)
    return "drop rule installed (%s, %d pool ports%s); state in %s" % (
        which, len(ports), ", a stale rule replaced" if stale else "", state)


def read_state(state: str) -> List[Tuple[int, int]]:
    try:
        with open(state) as f:
            data = json.load(f)
        return [(int(a), int(b)) for a, b in data["intervals"]]
    except FileNotFoundError:
        raise ConfigError("--drop-rule external: no state file %s; run tcpcopy -x ..."
                          " --no-assistant --drop-rule install as root first" % state) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("--drop-rule external: bad state file %s: %s" % (state, exc)) from None


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
                 maps: Sequence[Any], own: Sequence[bytes], flush: Callable[[], None],
                 rule_mode: str = "auto", state: str = "") -> None:
        self.loop = loop
        self.engine = engine
        self.stats = stats
        self.log = log
        self.flush = flush
        self.rule_mode = rule_mode
        self.targets = _targets(maps)
        self.own = [socket.inet_ntoa(ip) for ip in own]
        lrange, excluded, ports = host_pool(maps)
        if rule_mode == "external":  # only ports the privileged step's rule drops
            allowed: Set[int] = set()
            for a, b in read_state(state):
                allowed.update(range(a, b + 1))
            ports = [p for p in ports if p in allowed]
            if not ports:
                raise ConfigError("--drop-rule external: no port of %s is free here" % state)
        self.intervals = port_intervals(ports)
        self.pool = PortPool(list(own), ports, epoch=time.time())  # salted across restarts
        engine.use_port_pool(self.pool, hostports.LivePorts())
        stats.add_gauge("port_pool_size", lambda: self.pool.size)
        log.log(25, "own-address mode: source %s, %d pool ports (each once per address) outside"
                " ip_local_port_range %d-%d (%d listening/live ports left out)",
                ",".join(self.own), len(ports), lrange[0], lrange[1], len(excluded))
        expr = answer_filter(self.targets, self.own, lrange)
        prog = bpf.compile_filter(expr, bpf.DLT_RAW)
        self.capture = open_packet_capture(None, prog, ignore_outgoing=True,
                                           snaplen=ANSWER_SNAPLEN)
        stats.add_gauge("answer_capture_drops",
                        lambda: self.capture.kernel_stats().get("drops", 0))
        log.log(25, "own-address mode: answers captured with filter: %s", expr)
        self.rule_backend = ""
        self.lock = droprule.InstanceLock()

    def start(self) -> None:
        self.lock.acquire()
        self.loop.add_reader(self.capture.fileno(), self._on_answers)
        if self.rule_mode == "external":
            self.log.log(25, "own-address mode: the drop rule is managed outside this process")
            return
        from ..io.sysinfo import has_cap

        if not has_cap(CAP_NET_ADMIN):
            raise droprule.DropRuleError(
                "--no-assistant needs CAP_NET_ADMIN to install its drop rule; or run"
                " 'tcpcopy -x ... --no-assistant --drop-rule install' as root first and this"
                " process with --drop-rule external (CAP_NET_RAW is then enough)")
        which, stale = droprule.install(self.targets, self.own, self.intervals)
        self.rule_backend = which
        if stale:
            self.log.warning("own-address mode: removed a stale drop rule left by an earlier run")
        self.log.log(25, "own-address mode: drop rule installed (%s, table/chain %s)", which,
                     droprule.TABLE if which == "nft" else droprule.CHAIN)

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
            if self.lock.fd is not None and self.rule_mode != "external" and droprule.remove():
                self.log.log(25, "own-address mode: drop rule removed")
        finally:
            self.lock.release()
            self.capture.close()

    def stat_line(self) -> str:
        p = self.pool
        return "port pool: size:%d, held:%d, free:%d, exhausted:%d, busy skipped:%d" % (
            p.size, p.held_count, p.free_count, self.stats.c["port_pool_exhausted"],
            p.busy_skipped)
