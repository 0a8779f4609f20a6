"""tcpcopy's process: one event loop wiring capture (or a capture file),
the session engine, the raw sender and the intercept links."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, List, Optional, Tuple

from .. import accel
from ..core.engine import Engine, EngineConfig
from ..core.flowhash import flow_slot, own_flows
from ..core.stats import Stats
from ..errors import PycopyError
from ..io import bpf, workers
from ..io.capture import FANOUT_DEFAULT_MODE, open_packet_capture, open_raw_ip_capture
from ..io.links import InterceptLinks, LinkError
from ..io.loop import Loop
from ..io.procmem import rss_bytes
from ..io.rawsend import RawSender
from ..io.stamped import CaptureClock, has_stamps, read_stamped
from .common import (
    install_stop_signals,
    read_secret,
    reasons,
    remove_pid,
    tune_gc,
    version_line,
    write_pid,
)
from .logreopen import install_log_reopen
from .statsout import StatsOutput
from .unattended import Unattended

OFFLINE_TAIL = 10.0  # at most this long waiting for responses after the file ends
ROUND_PORT_STRIDE = 7919  # each -T round moves client ports by this much (prime)
RSS_INTERVAL = 0.25  # -m: the RSS is measured this often, and after every batch of new sessions


class TcpCopyApp:
    def __init__(self, args: argparse.Namespace, cfg: EngineConfig, stats: Stats,
                 log: logging.Logger) -> None:
        self.args = args
        self.log = log
        self.stats = stats
        self.loop = Loop()
        self.engine = Engine(cfg, stats)
        self.exit_status = 0
        self.started = time.time()
        self.first_packet = False
        self._timer: Any = None
        self._timer_at: Optional[float] = None
        self.capture: Any = None
        self.replay: Any = None
        self.sender = RawSender(stats)
        # --workers (cli/tcpcopy_workers.py): (index, count) of this worker
        self.worker: Tuple[int, int] = getattr(args, "worker", None) or (0, 1)
        if args.offline_file:
            self._open_replay()
        else:
            self._open_capture()
        if self.capture is not None:
            stats.add_gauge("capture_kernel_drops",
                            lambda: self.capture.kernel_stats().get("drops", 0))
        self.compare: Any = None
        if getattr(args, "compare", None):  # --compare (cli/compare_out.py)
            from .compare_out import CompareOut

            self.compare = CompareOut(self)
        self.own: Any = None
        self.links: Any
        if getattr(args, "no_assistant", False):  # own-address mode (cli/own_address.py)
            from .own_address import NoLinks, OwnAddress

            self.links = NoLinks()
            self.own = OwnAddress(self.loop, self.engine, stats, log, args.maps, cfg.clt_ips,
                                  self._flush, args.drop_rule, args.rule_state)
        else:
            self.links = InterceptLinks(
                self.loop, args.server_list, args.conns, stats, self._on_records,
                combined=not args.uncombined, lonely=args.lonely,
                on_reconnect=self._reregister, on_all_lost=self._all_lost,
                secret=read_secret(args.secret_file),
                ext_caps=self.compare.caps if self.compare is not None else 0,
                on_ext=self.compare.items if self.compare is not None else None)
        self.out = StatsOutput(self.loop, "tcpcopy", stats, log, self._stat_lines, args)
        self.unattended = Unattended(self)  # brake, health, --delay (issue 12)
        self.delay = self.unattended.delay
        # --delay on a ring: packets held from the kernel's capture stamps
        self.stamps: Optional[CaptureClock] = None
        if self.delay is not None and has_stamps(self.capture):
            self.stamps = CaptureClock(self.loop.time)

    # ------------------------------------------------------------ set-up

    def _open_capture(self) -> None:
        args = self.args
        expr = args.filter or bpf.tcpcopy_filter_from_maps(args.maps)
        prog = bpf.compile_filter(expr, bpf.DLT_RAW)
        if args.iface:
            ifaces = [i for i in args.iface.split(",") if i]
            fanout = None
            if self.worker[1] > 1:  # --workers: one fanout group shares the flows out
                fanout = (args.fanout_group, FANOUT_DEFAULT_MODE)
            self.capture = open_packet_capture(
                ifaces, prog, ignore_outgoing=True, snaplen=args.snaplen,
                ring_bytes=args.bufsize << 20,
                drop_hint="raise -B (the -i capture ring, now %d MB)" % args.bufsize,
                fanout=fanout)
            where = "interfaces " + args.iface
            if fanout is not None:
                where += " (fanout group %d)" % fanout[0]
            if self.capture.plan is not None:
                where += " (ring: %s)" % self.capture.plan.describe()
        else:
            self.capture = open_raw_ip_capture(prog)
            self.capture.drop_hint = "capture with -i and a larger -B (this socket buffer is 64 MB)"
            where = "raw IP socket"
        self.log.log(25, "capture: %s, filter: %s", where, expr)

    def _open_replay(self) -> None:
        from ..core.offline import Replay
        from ..io.pcapfile import PcapReader

        path = self.args.offline_file
        PcapReader(path).close()  # fail early on an unreadable file or an unknown link type
        self.readers: List[PcapReader] = []

        index, count = self.worker
        # --workers: without -I, the other slots' packets are left out before
        # the pacer (own_flows keeps the file's schedule); with -I the gaps
        # are the whole file's, so every packet is paced and filtered after
        self._slot_filter = count > 1 and bool(self.args.idle_skip)

        def open_packets():
            r = PcapReader(path)
            self.readers.append(r)
            if count > 1 and not self.args.idle_skip:
                return own_flows(r, index, count)
            return r

        self.replay = Replay(open_packets, self.args.rounds, self.args.speed, self.args.idle_skip)
        self.log.log(25, "offline replay of %s: speed x%g, idle skip %d ms, %d round(s)",
                     path, self.args.speed, self.args.idle_skip, self.args.rounds)

    # ------------------------------------------------------------ events

    def _on_capture(self) -> None:
        now = self.loop.time()
        on_capture = self.engine.on_capture
        if self.delay is not None:  # --delay on a socket capture (a ring's: below)
            # each packet's own clock reading, taken after the read: ``now`` comes
            # before the recvmmsg, and a packet that arrived in between (a softirq
            # or preemption can make that a fraction of a millisecond) would be
            # held that much less than the delay
            push = self.delay.push
            clock = self.loop.time
            n = self.capture.read_batch(lambda pkt: push(bytes(pkt), clock()))
        else:
            n = self.capture.read_batch(lambda pkt: on_capture(pkt, now))
        if n:
            self.first_packet = True
            self._flush()

    def _on_capture_stamped(self) -> None:
        """--delay on a ring: each packet is held from its kernel capture time,
        not from when the loop got to it (a V3 block may wait for its timer,
        16 ms with the default -B, before it is handed over: ~8 ms more on
        the median delay)."""
        got: List[Tuple[bytes, Optional[float]]] = []
        add = got.append
        n = read_stamped(self.capture, lambda pkt, ts: add((bytes(pkt), ts)))
        if n:
            self.stamps.push_batch(got, self.delay.push)  # type: ignore[union-attr]
            self.first_packet = True
            self._flush()

    def _on_records(self, recs: List[bytes]) -> None:
        now = self.loop.time()
        on_record = self.engine.on_record
        for rec in recs:
            on_record(rec, now)
        if self.compare is not None:
            self.compare.records(recs, now)
        self._flush()

    def _flush(self) -> None:
        if self.engine.memory_due():
            self._check_memory()
        self.unattended.log_events()
        ctl, tx = self.engine.take_output()
        self._send(ctl, tx)
        self._arm()

    def _send(self, ctl: List[bytes], tx: List[Tuple[bytes, bytes]]) -> None:
        if ctl:
            self.links.broadcast(ctl)
        if tx:
            if self.compare is not None:
                self.compare.sent(tx, self.loop.time())
            send = self.sender.send
            for pkt, dst in tx:
                send(pkt, dst)

    def _arm(self) -> None:
        d = self.engine.next_deadline()
        if self.replay is not None:
            rd = self.replay.next_deadline()
            if rd is not None and rd < d:
                d = rd
        if self.delay is not None:
            dd = self.delay.next_deadline()
            if dd is not None and dd < d:
                d = dd
        if self._timer_at is not None and self._timer_at <= d:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = d
        self._timer = self.loop.call_at(d, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        if self.replay is not None:
            self._replay_due(now)
        if self.delay is not None:
            self._delay_due(now)
        self.engine.on_timer(now)
        self._flush()

    def _replay_due(self, now: float) -> None:
        eng = self.engine
        rp = self.replay
        delay = self.delay
        index, count = self.worker
        slot_filter = self._slot_filter
        for rnd, _ts, pkt in rp.due(now, 4096):
            if pkt is None or (slot_filter and flow_slot(pkt, count) != index):
                continue  # --workers: another worker replays this flow
            self.first_packet = True
            if delay is not None:
                delay.push(bytes(pkt), now, rnd)
                continue
            eng.begin_round(rnd, (rnd - 1) * ROUND_PORT_STRIDE)
            eng.on_capture(pkt, now)
        if rp.done and self._tail_deadline is None:
            self._tail_deadline = now + OFFLINE_TAIL
            self.log.log(25, "end of capture file: waiting up to %gs for %d session(s)",
                         OFFLINE_TAIL, eng.active_sessions)
            self._check_tail()

    def _delay_due(self, now: float) -> None:
        eng = self.engine
        for rnd, pkt in self.delay.due(now):  # type: ignore[union-attr]
            if rnd is not None:
                eng.begin_round(rnd, (rnd - 1) * ROUND_PORT_STRIDE)
            eng.on_capture(pkt, now)

    _tail_deadline: Optional[float] = None
    _slot_filter = False
    _progress_last: Tuple[float, int] = (0.0, 0)

    def _check_tail(self) -> None:
        held = self.delay.held if self.delay is not None else 0
        if (not self.engine.active_sessions and not held) or self.loop.time() >= self._tail_deadline:  # type: ignore[operator]
            self.loop.stop()
            return
        self.loop.call_later(0.05, self._check_tail)

    def _progress_text(self) -> str:
        pos = self.replay.position()
        off = pos.file_offset_s
        return "round %d/%d, packet %d, file +%.1fs, sessions %d, requests %d" % (
            pos.round, pos.rounds, pos.index, off, self.engine.active_sessions,
            self.stats.c["requests_sent"])

    def _progress(self) -> None:
        """On a terminal: one line rewritten in place every half second."""
        now = self.loop.time()
        t0, r0 = self._progress_last
        reqs = self.stats.c["requests_sent"]
        rate = (reqs - r0) / max(now - t0, 1e-6)
        self._progress_last = (now, reqs)
        sys.stderr.write("\r\x1b[K[replay] %s, %.0f requests/s" % (self._progress_text(), rate))
        sys.stderr.flush()
        if not self.replay.done or self.engine.active_sessions:
            self.loop.call_later(0.5, self._progress)
        else:
            sys.stderr.write("\n")

    _mem_logged = 0.0

    def _check_memory(self) -> None:
        """-m: measure the RSS and let the engine evict when it nears the bound."""
        eng = self.engine
        now = self.loop.time()
        n = eng.observe_rss(rss_bytes(), now)
        mem = eng.memory
        if n and now - self._mem_logged >= 10.0:
            self._mem_logged = now
            self.log.warning("memory: RSS %.1f MB near the -m bound of %d MB: evicted %d "
                             "session(s), at most %s live now", mem.rss / 1048576.0,
                             mem.limit >> 20, n, mem.cap)
        if mem.rss > mem.limit and not eng.active_sessions and not mem.over_warned:
            mem.over_warned = True
            self.log.warning("memory: RSS %.1f MB is above the -m bound of %d MB with no "
                             "session left to evict", mem.rss / 1048576.0, mem.limit >> 20)

    def _memory_tick(self) -> None:
        self._check_memory()
        ctl, tx = self.engine.take_output()
        if ctl or tx:
            self._send(ctl, tx)
        self.loop.call_later(RSS_INTERVAL, self._memory_tick)

    def _reregister(self, peer) -> None:
        """A link came back (-L): tell intercept about every live session again, once."""
        msgs = list(self.engine.registrations())
        for k in range(0, len(msgs), 4096):  # whole messages, well under the link's buffer
            peer.write(b"".join(msgs[k:k + 4096]))
        self.stats.c["control_reregistered"] += len(msgs)
        if self.engine.brake is not None:  # a probe rides the new link at once
            self.engine.brake.brake.probe_now(self.loop.time())
        self.log.info("link to intercept %s connected again; %d live session(s) re-registered",
                      peer.name, len(msgs))

    def _all_lost(self) -> None:
        self.log.error("all intercept connections lost; exiting (use -L to keep running)")
        self.exit_status = 1
        self.loop.stop()

    def _stop(self, signum: int) -> None:
        self.log.log(25, "signal %d received, exiting", signum)
        self.loop.stop()

    # ------------------------------------------------------------ run

    def run(self) -> int:
        args = self.args
        log = self.log
        log.log(25, "%s", version_line("tcpcopy"))
        log.info("%s", accel.describe())  # make accel: pycopy_engine/accel.py
        log.log(25, "target: %s", ",".join(
            "%s%d->%s:%d" % ((bpf.socket.inet_ntoa(m.online_ip) + ":") if m.online_ip else "",
                             m.online_port, bpf.socket.inet_ntoa(m.target_ip), m.target_port)
            for m in args.maps))
        if getattr(args, "tee", False):
            log.log(25, "--tee: each session is copied to every target whose map matches")
        log.log(25, "session timeout:%d, keepalive timeout:%d, repl num:%d, parallel "
                "connections per target:%d, mode:%s", self.engine.cfg.session_timeout,
                self.engine.cfg.keepalive_timeout, args.replicas, args.conns,
                "uncombined" if args.uncombined else "TC_COMBINED")
        try:
            self.links.start()
            if self.own is not None:
                self.own.start()
        except (LinkError, PycopyError) as exc:
            log.error("%s", exc)
            sys.stderr.write("tcpcopy: %s\n" % exc)
            if self.own is not None:
                self.own.close()
            return 1
        write_pid(args.pidfile)
        install_stop_signals(self._stop)
        install_log_reopen(self.loop, log)
        wk = workers.current()
        if wk is not None:  # --workers: wait until every worker has its capture
            if not wk.ready():
                self._finish()
                return 0
            if self.capture is not None:  # shared out among fewer members until now
                n = self.capture.discard_pending()
                tov = getattr(self.capture, "tov_ms", 0)
                if tov:  # a TPACKET_V3 block still open holds some: wait for its retirement
                    time.sleep(2 * tov / 1000.0)
                    n += self.capture.discard_pending()
                if n:
                    log.info("discarded %d packet(s) captured before all workers joined", n)
            wk.attach(self.loop, self.stats.snapshot)
        if self.capture is not None:
            self.loop.add_reader(self.capture.fileno(), self._on_capture
                                 if self.stamps is None else self._on_capture_stamped)
        if self.compare is not None:
            self.compare.start()
        tune_gc()  # before the replay's clock starts: a full collection takes a while
        if self.replay is not None:
            self.replay.start(self.loop.time())
        self.out.start()
        self._memory_tick()
        if self.replay is not None and sys.stderr.isatty():
            self._progress_last = (self.loop.time(), 0)
            self.loop.call_later(0.5, self._progress)
        self._arm()
        try:
            self.loop.run()
        except PycopyError as exc:
            log.error("fatal: %s", exc)
            self.exit_status = 1
        finally:
            self._finish()
        return self.exit_status

    def _finish(self) -> None:
        now = self.loop.time()
        n = self.engine.shutdown(now)
        if n:
            self.log.log(25, "reset %d live session(s) at exit", n)
        ctl, tx = self.engine.take_output()
        for pkt, dst in tx:
            self.sender.send(pkt, dst)
        if self.compare is not None:
            self.compare.close()
        self.out.final()
        wk = workers.current()
        if wk is not None and wk.snapshot is not None:
            wk.publish(final=True)  # before the capture (a gauge) is closed
        if self.replay is not None:
            self._offline_summary()
        self.links.close()
        if self.own is not None:
            self.own.close()
        if self.capture is not None:
            self.capture.close()
        self.sender.close()
        remove_pid(self.args.pidfile)

    def _offline_summary(self) -> None:
        c = self.stats.c
        stopped = [r.stopped_at for r in getattr(self, "readers", []) if getattr(r, "stopped_at", None)]
        line = ("offline replay done: sessions:%d, requests sent:%d, responses:%d, "
                "failures:%s" % (c["sessions_opened"], c["requests_sent"], c["conns"],
                                 reasons(self.stats.by_reason("sessions_failed"))))
        self.log.log(25, "%s", line)
        if stopped:
            self.log.warning("capture file ended early: %s", stopped[0])

    def _stat_lines(self) -> List[str]:
        if not self.first_packet:
            return []
        c = self.stats.c
        e = self.engine
        head = ["offline: " + self._progress_text()] if self.replay is not None else []
        return head + self.unattended.health_lines() + [
            "active:%d,rel:%d,obs del:%d,tw:%d" % (
                e.active_sessions, c["sessions_closed"],
                sum(self.stats.by_reason("sessions_failed").values()), e.time_wait_count),
            "conns:%d,resp:%d,c-resp:%d" % (c["conns"], c["resp"], c["resp_content"]),
            "resp fin:%d,resp rst:%d" % (c["resp_fin"], c["resp_rst"]),
            "send:%d,send content:%d" % (c["send_packets"], c["send_content"]),
            "send syn:%d, fin:%d,reset:%d" % (c["send_syn"], c["send_fin"],
                                             sum(self.stats.by_reason("rst_sent").values())),
            "reconnect:%d,for no syn:%d" % (c["reconnect"], c["sessions_fake_syn"]),
            "retransmit:%d" % c["retransmit"],
            "rss:%.1fMB,session cap:%s,evicted:%d,evicted drops:%d,port exhausted:%d" % (
                e.memory.rss / 1048576.0, e.memory.cap, c["evicted:memory_limit"],
                c["drop:evicted"], c["port_exhausted"]),
            "syn cnt:%d,all clt:%d,clt cont:%d" % (c["syn_cnt"], c["clt_packets"], c["clt_content"]),
            "requests:%d, rst by reason: %s" % (c["requests_sent"],
                                                reasons(self.stats.by_reason("rst_sent"))),
            "drops by reason: %s" % reasons(self.stats.by_reason("drop")),
            "capture: %s" % ", ".join("%s:%d" % kv for kv in sorted(
                (self.capture.kernel_stats() if self.capture is not None else {}).items())),
            "send errors: %s, control links up:%d, reconnects:%d" % (
                reasons(self.stats.by_reason("send_error")), self.links.live_count(),
                c["control_reconnects"]),
        ] + ([self.own.stat_line()] if self.own is not None else []) + (
            [self.compare.stat_line()] if self.compare is not None else [])
