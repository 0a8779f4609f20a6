"""``doctor``: check a host's set-up for tcpcopy/intercept and name what is wrong.

    python -m pycopy_engine.cli.doctor --role online -s 10.0.0.13 -x 80-10.0.0.12:80 -c 10.0.0.10
    python -m pycopy_engine.cli.doctor --role assistant -i eth0 -F 'tcp and src port 80' \\
        -x 10.0.0.12:80 -c 10.0.0.10
    python -m pycopy_engine.cli.doctor --role target --client 10.0.0.10 --assistant 10.0.0.13

One line per check: ``OK   <check>: <detail>``, ``WARN <check>: <detail>`` or
``FAIL <check>: <what is wrong> -> <fix>``.  Exit status 0 when nothing
failed, 1 otherwise.  ``tcpcopy --doctor`` and ``intercept --doctor`` call
:func:`run_doctor` with their own parsed options (see :func:`options_from`).
The end-to-end probes (online and assistant roles) are in
:mod:`pycopy_engine.cli.doctor_probe`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from pycopy_engine.cli.doctor_probe import (
    probe_from_assistant,
    probe_via_intercept,
    seen_as_client,
)
from pycopy_engine.io import sysinfo
from pycopy_engine.wire import control
from pycopy_engine.wire.tcpip import ACK, SYN, build_ipv4_tcp

ROLES = ("online", "assistant", "target")


@dataclass
class DoctorOptions:
    intercept: list[tuple[str, int]] = field(default_factory=list)  # online: -s
    targets: list[tuple[str, int]] = field(default_factory=list)  # -x (target ip:port)
    clients: list[str] = field(default_factory=list)  # probe source / routed client addresses
    assistant: str | None = None  # target role: where responses must be routed
    online: str | None = None  # target role: where the copies come from
    ifaces: list[str] = field(default_factory=list)  # assistant: -i
    filter: str | None = None  # assistant: -F
    port: int = control.DEFAULT_PORT
    deadline: float = 2.0
    probe: bool = True
    probe_client: str | None = None  # online: --probe-client, the probe's source address
    no_assistant: bool = False  # online: own-address mode (cli/doctor_own.py)


class Report:
    """Prints one line per check as it is made; remembers whether any failed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[tuple[str, str, str]] = []

    def _emit(self, status: str, check: str, text: str) -> None:
        self.lines.append((status, check, text))
        print(f"{status:<4} {check}: {text}", file=self.out, flush=True)

    def ok(self, check: str, detail: str) -> None:
        self._emit("OK", check, detail)

    def warn(self, check: str, detail: str, fix: str | None = None) -> None:
        self._emit("WARN", check, f"{detail} -> {fix}" if fix else detail)

    def fail(self, check: str, what: str, fix: str) -> None:
        self._emit("FAIL", check, f"{what} -> {fix}")

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _, _ in self.lines)


# -- option parsing -------------------------------------------------------------------


def _split(values: Any) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def parse_targets(values: Any) -> list[tuple[str, int]]:
    """``ip:port`` or tcpcopy ``-x`` maps (``[ip:]port-ip:port``, MACs allowed)."""
    out = []
    objs = values if isinstance(values, (list, tuple)) else [values]
    if values is not None and all(hasattr(m, "target_port") for m in objs):
        for m in objs:  # parsed tcpcopy maps (core.mapping.TargetMap)
            ip = m.target_ip
            out.append((socket.inet_ntoa(ip) if isinstance(ip, bytes) else str(ip), m.target_port))
        return out
    for item in _split(values):
        item = item.rsplit("-", 1)[-1].split("@")[0]
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"doctor: bad target {item!r}: want IP:PORT")
        out.append((host, int(port)))
    return out


def parse_intercepts(values: Any, default_port: int) -> list[tuple[str, int]]:
    out = []
    for item in _split(values):
        host, sep, port = item.partition(":")
        out.append((host, int(port) if sep and port.isdigit() else default_port))
    return out


def _attr(args: Any, *names: str) -> Any:
    for n in names:
        v = args.get(n) if isinstance(args, dict) else getattr(args, n, None)
        if v not in (None, "", []):
            return v
    return None


def options_from(args: Any) -> DoctorOptions:
    """Build options from an argparse namespace (or dict) of doctor, tcpcopy or intercept."""
    if isinstance(args, DoctorOptions):
        return args
    port = int(_attr(args, "port", "p", "intercept_port") or control.DEFAULT_PORT)
    return DoctorOptions(
        intercept=parse_intercepts(_attr(args, "intercept", "servers", "s"), port),
        targets=parse_targets(_attr(args, "target", "targets", "maps", "transfer", "x")),
        clients=[
            c.split("/")[0].replace(".x", ".1")  # tcpcopy -c a.b.c.x: its first address
            for c in _split(_attr(args, "client", "clients", "clt_ips", "clt_ip", "c"))
        ],
        assistant=_attr(args, "assistant"),
        online=_attr(args, "online"),
        ifaces=[
            i
            for i in _split(_attr(args, "iface", "ifaces", "interfaces", "device", "i"))
            if i != "any"
        ],  # fmt: skip
        filter=_attr(args, "filter", "pcap_filter", "bpf", "F"),
        port=port,
        deadline=float(_attr(args, "deadline") or 2.0),
        probe=not _attr(args, "no_probe"),
        probe_client=_attr(args, "probe_client"),
        no_assistant=bool(_attr(args, "no_assistant")),
    )


# -- shared checks ---------------------------------------------------------------------


def check_cap(rep: Report, why: str) -> bool:
    if sysinfo.has_cap(sysinfo.CAP_NET_RAW):
        rep.ok("cap_net_raw", f"this process may {why}")
        return True
    exe = os.path.realpath(sys.executable)
    rep.fail("cap_net_raw", f"missing: cannot {why}",
             f"run as root, or: setcap cap_net_raw,cap_net_admin+ep {exe}")  # fmt: skip
    return False


# -- online host -------------------------------------------------------------------------


def check_online(o: DoctorOptions, rep: Report) -> None:
    cap = check_cap(rep, "send raw packets (SOCK_RAW) to the target")
    if not o.intercept:
        rep.fail("intercept", "no intercept address given", "add -s <assistant-ip>[:port]")
    reachable = []
    for host, port in o.intercept:
        err = sysinfo.tcp_reachable(host, port, timeout=o.deadline)
        if err is None:
            rep.ok(f"intercept {host}:{port}", "reachable")
            reachable.append((host, port))
        else:
            rep.fail(f"intercept {host}:{port}", f"cannot connect: {err}",
                     f"on {host}: start intercept (intercept -i <iface> -F 'tcp and src port "
                     f"<target-port>' -p {port}) and let TCP port {port} through its firewall")  # fmt: skip
    ct = sysinfo.conntrack()
    if ct is None:
        rep.ok("conntrack", "nf_conntrack not loaded: raw packets are not tracked")
    else:
        count, limit = ct
        pct = 100 * count / limit if limit else 100
        notrack = "iptables -t raw -I OUTPUT -p tcp -j NOTRACK"
        if pct >= 90:
            rep.fail("conntrack", f"table {count}/{limit} ({pct:.0f} %) full: sends fail with EPERM",
                     f"sysctl -w net.netfilter.nf_conntrack_max={limit * 4} or {notrack}")  # fmt: skip
        elif pct >= 60:
            rep.warn("conntrack", f"table {count}/{limit} ({pct:.0f} %): little headroom",
                     f"sysctl -w net.netfilter.nf_conntrack_max={limit * 4}")  # fmt: skip
        else:
            rep.ok("conntrack", f"{count}/{limit} entries ({pct:.0f} %)")
    if not o.targets:
        rep.warn("target", "no target given (-x): route, firewall and probe checks skipped")
    src = probe_address(o)
    for thost, tport in o.targets:
        route = sysinfo.route_get(thost)
        if route is None:
            rep.fail(f"route to {thost}", "the kernel has no route to the target",
                     f"ip route add {thost}/32 via <gateway> (or dev <iface>)")  # fmt: skip
            continue
        via = f"via {route['gateway']} " if route.get("gateway") else ""
        rep.ok(f"route to {thost}", f"{via}dev {route.get('dev')}")
        probe = sysinfo.Probe(
            src or route.get("prefsrc", "0.0.0.0"), thost, tport, route.get("dev")
        )
        hits = sysinfo.firewall_drops(probe)
        for h in hits:
            check = f"firewall {h.source} {h.where}"
            what = f"rule '{h.rule}' drops tcp to {thost}:{tport}"
            if h.certain:
                rep.fail(check, what, h.fix)
            else:
                rep.warn(check, f"{what} under conditions doctor cannot evaluate", h.fix)
        if not hits:
            rep.ok(f"firewall to {thost}:{tport}", "no OUTPUT rule drops raw packets to the target")
    if not o.probe:
        return
    if src is None:
        rep.warn("probe", "end-to-end probe skipped: no probe address; to enable it add "
                          "--probe-client <an unused address of the clients' network, routed "
                          "via the assistant on the target> (or -c; Ansible: "
                          "pycopy_probe_address)")  # fmt: skip
        return
    if not (cap and reachable and o.targets):
        rep.warn("probe", "end-to-end probe skipped (needs CAP_NET_RAW, a reachable intercept "
                          "and an -x target)")  # fmt: skip
        return
    if seen_as_client(src, min(1.0, o.deadline / 2)):
        rep.warn("probe", f"end-to-end probe skipped: {src} is a real client (it sends to this "
                          "host now); with a route missing the target's SYN-ACK would reach it",
                 "--probe-client <an address of the clients' network that no client uses>")  # fmt: skip
        return
    probe_via_intercept(o, rep, reachable[0], o.targets[0], src)


def probe_address(o: DoctorOptions) -> str | None:
    """The probe's source: --probe-client, else the first -c address, else none.

    Never an address picked from the capture: with a route missing, the
    target's SYN-ACK would reach that real client."""
    if o.probe_client:
        return o.probe_client
    return o.clients[0] if o.clients else None


# -- assistant ------------------------------------------------------------------------------


def synack_sample(target: str, tport: int, client: str, cport: int = 50000) -> bytes:
    return build_ipv4_tcp(socket.inet_aton(target), socket.inet_aton(client), tport, cport,
                          12345, 67890, SYN | ACK, 65160, b"\x02\x04\x05\xb4")  # fmt: skip


def check_assistant(o: DoctorOptions, rep: Report) -> None:
    cap = check_cap(rep, "capture packets (AF_PACKET)")
    fwd = sysinfo.ip_forward()
    if fwd == 0:
        rep.ok("ip_forward", "0: the target's answers stop here")
    else:
        rep.fail("ip_forward", f"is {fwd}: the target's answers are forwarded on to the real "
                               "client, which resets the target's connections",
                 "sysctl -w net.ipv4.ip_forward=0")  # fmt: skip
    for iface in o.ifaces:
        state = sysinfo.iface_state(iface)
        if state is None:
            rep.fail(f"interface {iface}", "no such interface", "ip -br link  (pick one for -i)")
            continue
        if state == "down":
            rep.fail(f"interface {iface}", "is down", f"ip link set {iface} up")
        if cap:
            err = sysinfo.capture_error(iface)
            if err:
                rep.fail(f"capture {iface}", err, "run as root or grant CAP_NET_RAW")
            else:
                rep.ok(f"capture {iface}", "AF_PACKET socket opens and binds")
    client = o.clients[0] if o.clients else "192.0.2.1"
    suggest = (f"-F 'tcp and src host {o.targets[0][0]} and src port {o.targets[0][1]}'"
               if o.targets else "-F 'tcp and src port <target-port>'")  # fmt: skip
    if not o.filter:
        rep.fail("filter", "no filter given: intercept needs -F", f"intercept {suggest}")
    else:
        err = sysinfo.filter_error(o.filter)
        if err:
            rep.fail("filter", err, f"intercept {suggest}")
        else:
            rep.ok("filter", f"'{o.filter}' compiles")
            for thost, tport in o.targets:
                if sysinfo.filter_matches(o.filter, synack_sample(thost, tport, client)):
                    rep.ok("filter match", f"accepts a SYN-ACK from {thost}:{tport} to {client}")
                else:
                    rep.fail("filter match", f"'{o.filter}' does not accept the target's answers "
                                             f"(a SYN-ACK from {thost}:{tport} to {client})",
                             f"intercept {suggest}")  # fmt: skip
    if sysinfo.tcp_listening(o.port):
        rep.ok(f"intercept port {o.port}", "something listens on it (intercept running)")
    else:
        rep.warn(f"intercept port {o.port}", "nothing listens: intercept is not running here",
                 f"intercept -i {o.ifaces[0] if o.ifaces else '<iface>'} {suggest}")  # fmt: skip
    if o.probe and cap and o.targets and o.clients:
        probe_from_assistant(o, rep, o.targets[0], o.clients[0])


# -- target ----------------------------------------------------------------------------------


def check_target(o: DoctorOptions, rep: Report) -> None:
    if not o.clients:
        rep.fail("client", "no client address given", "add --client <client-ip>[,...]")
    if not o.assistant:
        rep.fail("assistant", "no assistant address given", "add --assistant <assistant-ip>")
        return
    a_route = sysinfo.route_get(o.assistant)
    if a_route is None or a_route.get("gateway"):
        how = "unreachable" if a_route is None else f"only via {a_route['gateway']}"
        rep.fail(f"assistant {o.assistant}", f"not on a directly connected network ({how})",
                 "the assistant must be on the target's own subnet (or use a tunnel)")  # fmt: skip
    else:
        rep.ok(f"assistant {o.assistant}", f"on-link via dev {a_route.get('dev')}")
    ingress = None
    if o.online:
        r = sysinfo.route_get(o.online)
        ingress = r.get("dev") if r else None
    for client in o.clients:
        route = sysinfo.route_get(client)
        fix = f"ip route replace {client}/32 via {o.assistant}"
        if route is None:
            rep.fail(f"route to {client}", "no route at all", fix)
        elif route.get("gateway") != o.assistant:
            how = f"via {route['gateway']}" if route.get("gateway") else "directly"
            rep.fail(f"route to {client}", f"answers go {how} on dev {route.get('dev')}, "
                                           f"not via the assistant {o.assistant}", fix)  # fmt: skip
        else:
            rep.ok(f"route to {client}", f"via {o.assistant} dev {route.get('dev')}")
        out_dev = route.get("dev") if route else None
        dev = ingress or out_dev or "all"
        rp = sysinfo.rp_filter(dev)
        eff = rp.effective
        rp_fix = f"sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{dev}.rp_filter=0"
        check = f"rp_filter {dev}"
        detail = f"all={rp.all} {dev}={rp.iface} (effective {eff})"
        if eff == 0:
            rep.ok(check, f"{detail}: spoofed client sources are accepted")
        elif eff == 2:
            if route is None:
                rep.fail(check, f"{detail}: loose mode drops {client}, which has no route", fix)
            else:
                rep.ok(check, f"{detail}: loose mode accepts {client} (a route exists)")
        elif ingress and out_dev and ingress != out_dev:
            rep.fail(check, f"{detail}: strict mode drops copies from {client} arriving on "
                            f"{ingress}, because the route to {client} leaves by {out_dev}",
                     rp_fix)  # fmt: skip
        elif route is None:
            rep.fail(check, f"{detail}: strict mode drops {client} (no route back)", fix)
        else:
            rep.warn(check, f"{detail}: strict mode; it passes only while copies from {client} "
                            f"arrive on {out_dev}, the interface its route leaves by",
                     rp_fix)  # fmt: skip
    for _, tport in o.targets:
        if sysinfo.tcp_listening(tport):
            rep.ok(f"service port {tport}", "something listens on it")
        else:
            rep.warn(f"service port {tport}", "nothing listens on it in this host")


# -- entry points ------------------------------------------------------------------------------


def run_doctor(role: str, args: Any, out: TextIO | None = None) -> int:
    """Run the checks of ``role``; 0 if nothing failed, 1 otherwise."""
    if role not in ROLES:
        raise ValueError(f"doctor role must be one of {ROLES}, not {role!r}")
    opts = options_from(args)
    rep = Report(out or sys.stdout)
    if role == "online" and opts.no_assistant:
        from pycopy_engine.cli.doctor_own import check_own_address

        check_own_address(opts, rep)
        return 1 if rep.failed else 0
    {"online": check_online, "assistant": check_assistant, "target": check_target}[role](opts, rep)
    return 1 if rep.failed else 0


def probe_client_arg(text: str) -> str:
    """``--probe-client``: one IPv4 address (argparse exits 2 naming it otherwise)."""
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not an IPv4 address") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycopy doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("-s", "--intercept", action="append", help="intercept IP[:PORT][,...]")
    p.add_argument("-x", "--target", action="append",
                   help="target IP:PORT, or a tcpcopy -x map")  # fmt: skip
    p.add_argument("-c", "--client", action="append", help="client address(es) replayed")
    p.add_argument("--assistant", help="assistant address (target role)")
    p.add_argument("--online", help="online host address (target role: where copies come from)")
    p.add_argument("-i", "--iface", action="append", help="capture interface (assistant)")
    p.add_argument("-F", "--filter", help="intercept's pcap filter (assistant)")
    p.add_argument("-p", "--port", type=int, default=control.DEFAULT_PORT)
    p.add_argument("--deadline", type=float, default=2.0, help="seconds to wait for answers")
    p.add_argument("--no-probe", action="store_true", help="skip the end-to-end probe")
    p.add_argument("--no-assistant", action="store_true",
                   help="online: own-address mode (tcpcopy --no-assistant)")
    p.add_argument("--probe-client", type=probe_client_arg, metavar="ADDR",
                   help="online: source address of the end-to-end probe (an unused address of "
                        "the clients' network, routed via the assistant); default: first -c")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_doctor(args.role, args)


if __name__ == "__main__":
    sys.exit(main())
