"""``intercept``: capture the target's responses on the assistant host and
report their headers to tcpcopy (TCPCopy 1.0 compatible; run ``intercept -h``)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import List, Optional, Sequence

from ..core.stats import Stats
from ..errors import PycopyError
from ..wire.control import DEFAULT_PORT
from .common import (
    Parser,
    add_common_options,
    die,
    int_range,
    ipv4,
    opt_type,
    setup_logging,
    version_line,
)

EXAMPLE = """example:
  intercept -i eth0 -F 'tcp and src port 8080'      responses of a target listening on 8080
"""


def parse_networks(text: str) -> List[ipaddress.IPv4Network]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if item:
            out.append(ipaddress.IPv4Network(item, strict=False))
    if not out:
        raise ValueError("empty list")
    return out


def parse_rewrite(text: str):
    a, sep, b = text.partition("-")
    if not sep:
        raise ValueError("expected A-B")
    return ipv4(a), ipv4(b)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="intercept", add_help=False, epilog=EXAMPLE,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Capture target responses and report them to tcpcopy (pycopy).")
    a = p.add_argument
    a("-i", dest="iface", metavar="dev[,dev]",
      help="interfaces to capture responses on (default: all)")
    a("-F", dest="filter", metavar="BPF", help="response filter (pcap syntax), required, "
      "e.g. 'tcp and src port 80'")
    a("-p", dest="port", type=opt_type("-p", int_range(1, 65535), "bad port"),
      default=DEFAULT_PORT, help="control port to listen on (36524)")
    a("-b", dest="bind", default="0.0.0.0", type=opt_type("-b", lambda t: (ipv4(t), t)[1],
                                                          "bad address"),
      help="address to listen on (all)")
    a("-n", dest="combine", type=opt_type("-n", int_range(0, 16), "must be 0..16"), default=16,
      help="accepted for compatibility: records per frame adapt to the load (max 16)")
    a("-s", dest="buckets", type=opt_type("-s", int_range(1), "bad size"), default=65536,
      help="accepted for compatibility (delay table buckets)")
    a("-t", dest="route_ttl", type=opt_type("-t", int_range(1), "bad timeout"), default=1200,
      help="seconds an unused route is kept (1200)")
    a("-D", dest="rewrite", type=opt_type("-D", parse_rewrite, "expected A-B"),
      help="treat responses to address A as addressed to B (docker)")
    a("-c", dest="protect", action="store_true", help="accepted for compatibility")
    a("-l", dest="log", metavar="FILE", help="log file (default: stderr)")
    a("-P", dest="pidfile", metavar="FILE", help="write the PID here")
    a("-d", dest="daemon", action="store_true", help="run as a daemon")
    a("--uncombined", action="store_true",
      help="send records one by one, for tcpcopy built with --disable-combined")
    a("--allow", type=opt_type("--allow", parse_networks, "bad network"),
      help="addresses/networks allowed to connect (default: any)")
    a("--max-routes", type=opt_type("--max-routes", int_range(16), "bad size"),
      default=1 << 20, help="route table bound (1048576)")
    a("--peer-buffer", type=opt_type("--peer-buffer", int_range(16), "bad size"), default=8192,
      help="KB queued for one slow tcpcopy before its records are dropped (8192)")
    a("-B", dest="bufsize", metavar="MB", type=opt_type("-B", int_range(1, 4096), "bad size"),
      default=16,
      help="MB of the capture ring, per worker (16, as C's pcap buffer): raise it when the "
      "log reports kernel drops")
    a("--workers", type=opt_type("--workers", int_range(1, 64), "must be 1..64"), default=1,
      help="worker processes sharing the capture by flow (PACKET_FANOUT) and the tcpcopy "
      "links; answers are routed to the worker whose link registered them (1)")
    add_common_options(a, "assistant")
    a("-v", "--version", action="version", version=version_line("intercept"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.doctor:
        from .doctor import run_doctor

        return run_doctor("assistant", args)
    if not args.filter:
        p.error("please set filter (-F param), e.g. -F 'tcp and src port 80'")
    from ..io import bpf

    try:
        args.bpf = bpf.compile_filter(args.filter, bpf.DLT_RAW)
    except PycopyError as exc:
        p.error("option -F: %s" % exc)
    if args.daemon:
        from .common import daemonize

        daemonize()
    log = setup_logging("intercept", args.log)
    if args.workers > 1:
        from .intercept_workers import serve

        try:
            return serve(args, log)
        except PycopyError as exc:  # e.g. --metrics that cannot be served
            log.error("%s", exc)
            die(str(exc), 1)
        except OSError as exc:
            log.error("%s", exc)
            die("cannot listen on %s:%d: %s" % (args.bind, args.port, exc.strerror or exc), 1)
    from .intercept_app import InterceptApp

    try:
        app = InterceptApp(args, Stats(), log)
    except PermissionError as exc:
        die(str(exc.strerror if getattr(exc, "strerror", None) else exc), 1)
    except OSError as exc:
        log.error("%s", exc)
        die("cannot listen on %s:%d: %s" % (args.bind, args.port, exc.strerror or exc), 1)
    except PycopyError as exc:
        log.error("%s", exc)
        die(str(exc), 1)
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
