"""Running for days (issue 12): the safety brake, replication health, added
latency (``--delay``) and reopening the log file on SIGUSR1.

``add_unattended_options``/``check_unattended_options`` extend tcpcopy's
parser; ``Unattended`` wires the sans-IO parts (core.brake, core.health,
core.delay) into a running ``TcpCopyApp``.  SIGUSR1 (log reopen) is in
cli/logreopen.py.  See docs/unattended.md.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from ..core.brake import BrakeConfig, EngineBrake
from ..core.delay import DelayLine, parse_delay
from ..core.health import Health

if TYPE_CHECKING:  # pragma: no cover
    from .tcpcopy_app import TcpCopyApp


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise ValueError("must be more than 0")
    return v


def add_unattended_options(a: Callable[..., Any]) -> None:
    from .common import int_range, opt_type

    d = BrakeConfig()
    a("--no-brake", action="store_true",
      help="never stop opening sessions to a target whose SYN-ACKs stop being reported")
    a("--brake-window", type=opt_type("--brake-window", _positive, "bad duration"),
      default=d.window, metavar="S",
      help="brake: seconds of handshakes looked at (%g)" % d.window)
    a("--brake-failures", type=opt_type("--brake-failures", int_range(1), "bad count"),
      default=d.min_failures, metavar="N",
      help="brake: failed handshakes in the window that engage it (%d)" % d.min_failures)
    a("--brake-ratio", type=opt_type("--brake-ratio", float, "bad ratio"), default=d.ratio,
      metavar="F", help="brake: and their least share of the window's handshakes (%g)" % d.ratio)
    a("--brake-synack-wait", type=opt_type("--brake-synack-wait", _positive, "bad duration"),
      default=d.synack_wait, metavar="S",
      help="brake: a SYN-ACK not reported within S seconds is a failure (%g)" % d.synack_wait)
    a("--brake-probe-max", type=opt_type("--brake-probe-max", _positive, "bad duration"),
      default=d.probe_max, metavar="S",
      help="brake: longest interval between probes (%g; first after %g)"
      % (d.probe_max, d.probe_interval))
    a("--delay", metavar="SPEC", type=opt_type("--delay", parse_delay, "bad delay"),
      help="add latency towards the target: 50ms, 50ms:10ms (jitter) or rtt")
    a("--health-window", type=opt_type("--health-window", int_range(1, 3600), "bad window"),
      default=60, metavar="S", help="replication health: sliding window in seconds (60)")


def check_unattended_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    d = BrakeConfig()
    cfg = BrakeConfig(window=args.brake_window, min_failures=args.brake_failures,
                      ratio=args.brake_ratio, synack_wait=args.brake_synack_wait,
                      probe_interval=min(d.probe_interval, args.brake_probe_max),
                      probe_max=args.brake_probe_max)
    try:
        cfg.check()
    except ValueError as exc:
        opt = {"window": "--brake-window", "failures": "--brake-failures",
               "ratio": "--brake-ratio", "SYN-ACK": "--brake-synack-wait"}
        name = next((v for k, v in opt.items() if str(exc).startswith(k)), "--brake-probe-max")
        p.error("option %s: %s" % (name, exc))
    args.brake_cfg = cfg


class Unattended:
    """The issue-12 parts of a running tcpcopy."""

    def __init__(self, app: "TcpCopyApp") -> None:
        args = app.args
        eng = app.engine
        self.app = app
        self.log = app.log
        eng.health = Health(eng, args.health_window, clock=app.loop.time)
        # own-address mode: the target answers this host's own address, never a real
        # client, so nothing can leak and there is nothing to brake
        own = bool(getattr(args, "no_assistant", False))
        eng.brake = EngineBrake(eng, args.brake_cfg, enabled=not (args.no_brake or own))
        self.delay: Optional[DelayLine] = None
        if args.delay is not None:
            self.delay = DelayLine(args.delay, eng.rng)
            app.stats.add_gauge("delay_held", lambda: self.delay.held if self.delay else 0)
            spec = args.delay
            self.log.log(25, "delay towards the target: %s", "each client's RTT" if spec.rtt
                         else "%gms%s" % (spec.base * 1e3, (" +-%gms" % (spec.jitter * 1e3))
                                          if spec.jitter else ""))
        if own:
            self.log.info("safety brake not needed (--no-assistant): the target answers this "
                          "host's own address, never a real client")
        elif args.no_brake:
            self.log.warning("safety brake off (--no-brake)")

    def log_events(self) -> None:
        brake = self.app.engine.brake
        if brake is None or not brake.brake.events:
            return
        for kind, target, text in brake.drain_events():
            if kind == "engaged":
                links = self.app.links
                why = ("the target's answers may be reaching real clients (its route via the "
                       "assistant?)")
                if hasattr(links, "live_count") and links.live_count() == 0:
                    why = "no link to intercept is up (-L reconnects; a probe follows each link)"
                self.log.error("brake engaged for target %s: %s; %s: no new sessions to it "
                               "until a probe's SYN-ACK is reported", target, text, why)
            else:
                self.log.warning("brake released for target %s: %s; new sessions resume",
                                 target, text)

    def health_lines(self) -> List[str]:
        h = self.app.engine.health
        if h is None:
            return []
        from ..core.health import target_name

        out = []
        for t in h.windows:
            cap, done, failed, ratio = h.figures(t)
            b = self.app.engine.brake
            out.append("health %s over %ds: captured:%d, completed:%d, handshakes failed:%d, "
                       "replication:%.1f%%%s" % (target_name(t), h.window_s, cap, done, failed,
                                                 ratio * 100, ", BRAKE ENGAGED"
                                                 if b is not None and b.brake.engaged(t) else ""))
        return out
