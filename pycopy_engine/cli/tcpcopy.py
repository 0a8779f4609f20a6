"""``tcpcopy``: copy live TCP traffic from this (online) host to a target.

Option-compatible with TCPCopy 1.0 (reference §1.2); run ``tcpcopy -h``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import List, Optional, Sequence

from ..core.engine import EngineConfig
from ..core.mapping import TargetMap, expand_clt_ips, restart_port_salt
from ..core.stats import Stats
from ..errors import ConfigError, PycopyError
from ..wire.control import DEFAULT_PORT
from .common import (
    Parser,
    add_common_options,
    die,
    int_range,
    ipv4,
    opt_type,
    parse_hostport_list,
    setup_logging,
    version_line,
)
from .compare_out import add_compare_options, check_compare_options
from .tcpcopy_workers import MAX_WORKERS, check_workers_options
from .unattended import add_unattended_options, check_unattended_options

USAGE_EXAMPLE = """example:
  tcpcopy -x 80-10.0.0.12:8080 -s 10.0.0.13      copy port 80 to 10.0.0.12:8080,
                                                intercept running on 10.0.0.13
  tcpcopy -x 10.0.0.11:80-10.0.0.12:80 -s 10.0.0.13 -n 3 -r 50 -c 10.0.1.x
  tcpcopy -x 80-10.0.0.12:80,80-10.0.0.14:80 --tee -s 10.0.0.13
                                                every session to both targets
  tcpcopy -x 80-10.0.0.12:8080 --no-assistant    own-address mode: no intercept, no route
                                                on the target (clouds); run as root
"""


def probe_client(text: str) -> str:
    ipv4(text)
    return text


def parse_maps(text: str) -> List[TargetMap]:
    maps = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "@" in item:
            raise ValueError("MAC addresses (pcap-send form) are not supported; give ip:port")
        left, sep, right = item.partition("-")
        if not sep:
            raise ValueError("expected [online_ip:]online_port-target_ip:target_port")
        if ":" in left:
            lip_s, _, lport_s = left.rpartition(":")
            lip: Optional[bytes] = ipv4(lip_s)
        else:
            lip, lport_s = None, left
        tip_s, sep2, tport_s = right.rpartition(":")
        if not sep2:
            raise ValueError("target needs ip:port")
        lport, tport = int(lport_s), int(tport_s)
        if not (0 < lport < 65536 and 0 < tport < 65536):
            raise ValueError("port out of range")
        maps.append(TargetMap(lip, lport, ipv4(tip_s), tport))
    if not maps:
        raise ValueError("no map")
    return maps


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tcpcopy", add_help=False, epilog=USAGE_EXAMPLE,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Copy live TCP traffic to a target server (pycopy, TCPCopy 1.0 compatible).")
    a = p.add_argument
    a("-x", dest="maps", metavar="[ip:]port-ip:port[,...]", required=True,
      type=opt_type("-x", parse_maps, "bad map"),
      help="online address -> target address (several, comma-separated; the first matching"
           " map wins, unless --tee)")
    a("--tee", action="store_true",
      help="copy each session to EVERY target whose -x map matches (comparison experiments):"
           " each copy is its own session with its own client port; -r samples the same"
           " sessions for every target, -n and -c apply per target")
    a("-s", dest="servers", metavar="ip[:port][,...]",
      help="intercept servers (port defaults to -p); required unless --no-assistant")
    a("--no-assistant", dest="no_assistant", action="store_true",
      help="own-address mode: copies leave with this host's own address (-c, if given, must"
           " list only this host's addresses) and ports from a pool outside"
           " ip_local_port_range; the target's answers are captured here and dropped before"
           " this host's stack sees them (an nftables/iptables rule in table"
           " " + "pycopy_noassist" + ", removed at exit). No intercept, no -s, no route on the"
           " target")
    a("--drop-rule", dest="drop_rule", choices=("auto", "install", "remove", "external"),
      default="auto",
      help="--no-assistant: auto = install the rule at start and remove it at exit (needs"
           " CAP_NET_ADMIN); install / remove = do only that and exit (a privileged start or"
           " stop step); external = the rule is managed by those steps, this process needs"
           " only CAP_NET_RAW")
    a("--rule-state", dest="rule_state", metavar="FILE", default="/run/pycopy/noassist-rule.json",
      help="--drop-rule install/external: the rule's ports are passed through this file"
           " (/run/pycopy/noassist-rule.json)")
    a("-p", dest="port", type=opt_type("-p", int_range(1, 65535), "bad port"), default=DEFAULT_PORT,
      help="default intercept port (36524)")
    a("-C", dest="conns", type=opt_type("-C", int_range(-1000, 11), "bad count"), default=2,
      help="parallel connections to each intercept (2; at most 11)")
    a("-c", dest="clt_ips", metavar="ip[,ip...]|a.b.c.x", help="rewrite client source addresses")
    a("-H", dest="localhost_ip", type=opt_type("-H", ipv4, "bad address"),
      help="source address replacing 127.0.0.1")
    a("-i", dest="iface", metavar="dev[,dev]|FILE",
      help="capture interfaces (AF_PACKET), or a pcap/pcapng file to replay offline")
    a("--pcap", dest="pcap", metavar="FILE", help="replay this capture file (offline mode)")
    a("-a", dest="speed", type=opt_type("-a", float, "bad factor"), default=1.0,
      help="offline: speed-up factor")
    a("-I", dest="idle_skip", type=opt_type("-I", int_range(0), "bad interval"), default=0,
      help="offline: skip gaps longer than this many ms")
    a("-T", dest="rounds", type=opt_type("-T", int_range(1), "bad count"), default=1,
      help="offline: replay the file this many times")
    a("-F", dest="filter", metavar="BPF", help="capture filter (pcap syntax) for -i")
    a("-B", dest="bufsize", type=opt_type("-B", int_range(1, 4096), "bad size"), default=64,
      help="-i: capture ring in MB (64); raise it when the log reports kernel drops")
    a("-S", dest="snaplen", type=opt_type("-S", int_range(64, 65535), "bad snaplen"),
      default=65535, help="capture snap length (65535)")
    a("-n", dest="replicas", type=opt_type("-n", int_range(1, 1023), "must be 1..1023"), default=1,
      help="replay each session n times (amplification)")
    a("-f", dest="port_shift", type=opt_type("-f", int_range(0, 31), "must be 0..31"), default=0,
      help="port shift factor for several tcpcopy instances")
    a("-m", dest="mem_mb", type=opt_type("-m", int_range(1), "bad size"), default=2048,
      help="bound on resident memory in MB: near it, half-open and idle sessions are evicted"
           " first (2048)")
    a("-M", dest="mtu", type=opt_type("-M", int_range(576, 65535), "bad MTU"), default=1500,
      help="MTU for packets sent to the target (1500)")
    a("-D", dest="mss", type=opt_type("-D", int_range(88, 65495), "bad MSS"), default=1460,
      help="MSS in fabricated SYNs (1460)")
    a("-R", dest="rtt_ms", type=opt_type("-R", int_range(0), "bad RTT"), default=0,
      help="fixed RTT in ms (0 = measure)")
    a("-U", dest="pool_kb", type=opt_type("-U", int_range(1, 63), "bad size"), default=1,
      help="accepted for compatibility (per-session pool block size)")
    a("-t", dest="timeout", type=opt_type("-t", int_range(1), "bad timeout"), default=600,
      help="session timeout in s without response (600)")
    a("-k", dest="keepalive", type=opt_type("-k", int_range(1), "bad timeout"), default=None,
      help="keepalive timeout in s for idle sessions (-t + 120)")
    a("-r", dest="percent", type=opt_type("-r", int_range(0, 100), "must be 0..100"), default=100,
      help="replay this percentage of sessions (by client address)")
    a("-g", dest="gradual", action="store_true", help="ramp the percentage up by 1 per second")
    a("-O", dest="only_syn", action="store_true", help="only sessions whose SYN was captured")
    a("-W", dest="no_wait", action="store_true", help="do not wait for responses (pipeline)")
    a("-L", dest="lonely", action="store_true",
      help="keep running when intercept is lost; reconnect with backoff")
    a("-l", dest="log", metavar="FILE", help="log file (default: stderr)")
    a("-P", dest="pidfile", metavar="FILE", help="write the PID here")
    a("-d", dest="daemon", action="store_true", help="run as a daemon")
    a("--uncombined", action="store_true",
      help="intercept sends records one by one (C --disable-combined builds)")
    a("--probe-client", metavar="ADDR", type=opt_type("--probe-client", probe_client, "bad address"),
      help="--doctor: source address of the end-to-end probe (an unused address of the clients'"
           " network, routed via the assistant on the target); default: the first -c address")
    a("--workers", dest="workers", type=opt_type("--workers", int_range(1, MAX_WORKERS),
                                                  "must be 1..%d" % MAX_WORKERS), default=1,
      help="replay with N processes (1 = one process, no supervisor): flows are shared out by"
           " hash (live: PACKET_FANOUT, needs -i; offline: each worker replays its hash slot"
           " of the file); one merged --metrics/--stats-json")
    add_unattended_options(a)
    add_compare_options(a)
    add_common_options(a, "online")
    a("--seed", type=int, default=None, help=argparse.SUPPRESS)
    a("-v", "--version", action="version", version=version_line("tcpcopy"))
    return p


def make_config(args: argparse.Namespace) -> EngineConfig:
    targets = [m.target_ip for m in args.maps]
    clt_ips: Sequence[bytes] = ()
    if args.clt_ips:
        try:
            clt_ips = expand_clt_ips(args.clt_ips, targets)
        except (ValueError, OSError) as exc:
            raise ConfigError("option -c: invalid value %r: %s" % (args.clt_ips, exc or "bad address")) from None
    keepalive = args.keepalive if args.keepalive is not None else args.timeout + 120
    return EngineConfig(
        maps=args.maps, clt_ips=clt_ips, localhost_ip=args.localhost_ip,
        replicas=args.replicas, port_shift=args.port_shift, sample_percent=args.percent,
        gradual=args.gradual, only_syn=args.only_syn, no_wait=args.no_wait, mtu=args.mtu,
        mss=args.mss, rtt=args.rtt_ms / 1000.0, session_timeout=float(args.timeout),
        keepalive_timeout=float(keepalive), mem_limit=args.mem_mb << 20, seed=args.seed,
        restart_salt=restart_port_salt(time.time()), tee=args.tee)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.no_assistant:
        if args.servers is not None:
            p.error("option -s: invalid value %r: --no-assistant has no intercept to connect to"
                    % args.servers)
        args.server_list = []
        _own_addresses(p, args)
    elif args.drop_rule != "auto":
        p.error("option --drop-rule: invalid value %r: only with --no-assistant" % args.drop_rule)
    elif args.servers is None:
        p.error("option -s is required (intercept servers), unless --no-assistant is given")
    else:
        try:
            args.server_list = parse_hostport_list(args.servers, args.port)
        except ValueError as exc:
            p.error("option -s: invalid value %r: %s" % (args.servers, exc or "bad address"))
    if len(args.server_list) > 32:
        p.error("option -s: at most 32 intercepts")
    if args.conns <= 0:
        args.conns = 1
    args.offline_file = args.pcap
    if args.iface and not args.pcap and os.path.isfile(args.iface):
        args.offline_file, args.iface = args.iface, None
    if args.offline_file and not os.access(args.offline_file, os.R_OK):
        p.error("option --pcap: cannot read %r" % args.offline_file)
    if args.speed < 1:
        args.speed = 1.0
    check_unattended_options(p, args)
    check_compare_options(p, args)
    check_workers_options(p, args)
    if args.tee:
        _check_tee(p, args)
    for m in args.maps:
        if m.online_ip is None and m.online_port == m.target_port and args.iface and not args.filter:
            p.error("option -x: online port %d equals the target port and no online IP is given;"
                    " with -i this would capture tcpcopy's own copies: add the online IP or -F"
                    % m.online_port)
    return args


def _map_text(m: TargetMap) -> str:
    return "%s%d-%s:%d" % ((socket.inet_ntoa(m.online_ip) + ":") if m.online_ip else "",
                           m.online_port, socket.inet_ntoa(m.target_ip), m.target_port)


def _check_tee(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--tee needs two targets for one online address, each listed once for it, and
    at most 1023 copies of a session in all (the -n port shifts)."""
    maps = args.maps
    text = ",".join(map(_map_text, maps))
    fan = 1
    # every kind of captured packet: a port with one of the online IPs named for it,
    # or with any other address (None: only the maps without an online IP match)
    kinds = {(m.online_port, m.online_ip) for m in maps} | {(m.online_port, None) for m in maps}
    for port, ip in sorted(kinds, key=lambda k: (k[0], k[1] or b"")):
        hit = [m for m in maps
               if m.online_port == port and (m.online_ip is None or m.online_ip == ip)]
        targets = {(m.target_ip, m.target_port) for m in hit}
        if len(targets) < len(hit):
            dup = next(m for i, m in enumerate(hit) if (m.target_ip, m.target_port) in
                       {(o.target_ip, o.target_port) for o in hit[:i]})
            p.error("option -x: invalid value %r with --tee: target %s:%d is mapped twice for"
                    " online %s%d (each session would go to it twice; use -n for several"
                    " copies)" % (text, socket.inet_ntoa(dup.target_ip), dup.target_port,
                                  (socket.inet_ntoa(ip) + ":") if ip else "port ", port))
        fan = max(fan, len(targets))
    if fan < 2:
        p.error("option --tee: -x %r maps no online address to two targets: nothing to copy"
                " to several targets (give one map per target, e.g. -x 80-A:80,80-B:80)" % text)
    if fan * args.replicas > 1023:
        p.error("option -n: invalid value %d: with --tee, %d targets x %d copies exceed 1023"
                " copies of a session" % (args.replicas, fan, args.replicas))


def _own_addresses(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--no-assistant: -c must name only this host's addresses; without -c, the source
    address this host uses towards each target."""
    from ..io import sysinfo

    local = set(sysinfo.local_addresses())
    if args.clt_ips:
        try:
            ips = expand_clt_ips(args.clt_ips)
        except ValueError as exc:
            p.error("option -c: invalid value %r: %s" % (args.clt_ips, exc))
        for ip in ips:
            text = socket.inet_ntoa(ip)
            if text not in local:
                p.error("option -c: invalid value %r: %s is not an address of this host"
                        " (--no-assistant replays with the host's own addresses)"
                        % (args.clt_ips, text))
        return
    own = []
    for m in args.maps:
        tip = socket.inet_ntoa(m.target_ip)
        route = sysinfo.route_get(tip)
        src = route.get("prefsrc") if route else None
        if not src or src not in local:
            p.error("option -x: invalid value: no route with a source address of this host"
                    " towards target %s (give -c with this host's address)" % tip)
        if src not in own:
            own.append(src)
    args.clt_ips = ",".join(own)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.doctor:
        from .doctor import run_doctor

        return run_doctor("online", args)
    try:
        cfg = make_config(args)
    except ConfigError as exc:
        die(str(exc), 2)
    if args.no_assistant and args.drop_rule in ("install", "remove"):
        from .own_address import rule_step

        try:
            print("tcpcopy: " + rule_step(args.drop_rule, args.maps, cfg.clt_ips, args.rule_state))
        except PycopyError as exc:
            die(str(exc), 1)
        return 0
    from .tcpcopy_app import TcpCopyApp

    if args.daemon:
        from .common import daemonize

        daemonize()
    log = setup_logging("tcpcopy", args.log)
    if args.workers > 1:
        from .tcpcopy_workers import run_tcpcopy_workers

        return run_tcpcopy_workers(args, cfg, log)
    try:
        app = TcpCopyApp(args, cfg, Stats(), log)
    except PermissionError as exc:
        die(str(exc.strerror if getattr(exc, "strerror", None) else exc), 1)
    except PycopyError as exc:
        log.error("%s", exc)
        die(str(exc), 1)
    prof_path = os.environ.get("PYCOPY_PROFILE")
    if prof_path:  # developers: cProfile of the whole run, written at exit
        import cProfile

        prof = cProfile.Profile()
        try:
            return prof.runcall(app.run)
        finally:
            prof.dump_stats(prof_path)
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
