"""``doctor``: check a host's set-up for tcpcopy/intercept and name what is wrong.

    python -m pycopy_engine.cli.doctor --role online -s 10.0.0.13 -x 80-10.0.0.12:80 -c 10.0.0.10
    python -m pycopy_engine.cli.doctor --role assistant -i eth0 -F 'tcp and src port 80' \\
        -x 10.0.0.12:80 -c 10.0.0.10
    python -m pycopy_engine.cli.doctor --role target --client 10.0.0.10 --assistant 10.0.0.13

One line per check: ``OK   <check>: <detail>``, ``WARN <check>: <detail>`` or
``FAIL <check>: <what is wrong> -> <fix>``.  Exit status 0 when nothing
failed, 1 otherwise.  ``tcpcopy --doctor`` and ``intercept --doctor`` call
:func:`run_doctor` with their own parsed options (see :func:`options_from`).
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from pycopy_engine.io import sysinfo
from pycopy_engine.wire import control
from pycopy_engine.wire.tcpip import ACK, RST, SYN, build_ipv4_tcp

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


def _syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    mss = b"\x02\x04\x05\xb4"
    return build_ipv4_tcp(socket.inet_aton(src), socket.inet_aton(dst), sport, dport, seq, 0,
                          SYN, 64240, mss, ip_id=random.getrandbits(16))  # fmt: skip


def _send_raw(pkt: bytes, dst: str) -> str | None:
    """Send one IPv4 packet with a raw socket; None or the error."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(pkt, (dst, 0))
    except OSError as e:
        return f"{os.strerror(e.errno) if e.errno else e} (errno {e.errno})"
    return None


def _reset(client: str, target: str, cport: int, tport: int, seq: int) -> None:
    """Close the probe's half-open connection on the target."""
    pkt = build_ipv4_tcp(socket.inet_aton(client), socket.inet_aton(target), cport, tport,
                         seq, 0, RST, 0)  # fmt: skip
    _send_raw(pkt, target)


def _probe_port() -> int:
    return random.randint(50000, 59999)


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
    src = o.clients[0] if o.clients else None
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
    if not (cap and reachable and o.targets and o.clients):
        rep.warn("probe", "end-to-end probe skipped (needs CAP_NET_RAW, a reachable intercept, "
                          "-x target and -c client address)")  # fmt: skip
        return
    probe_via_intercept(o, rep, reachable[0], o.targets[0], o.clients[0])


def probe_via_intercept(
    o: DoctorOptions, rep: Report, icpt: tuple[str, int], tgt: tuple[str, int], client: str
) -> None:
    """CLIENT_ADD + SYN; intercept must report the target's SYN-ACK in time."""
    thost, tport = tgt
    cport, seq = _probe_port(), random.getrandbits(32)
    check = f"probe {client}:{cport}->{thost}:{tport}"
    try:
        ch = socket.create_connection(icpt, timeout=o.deadline)
    except OSError as e:
        rep.fail(check, f"control channel to {icpt[0]}:{icpt[1]} failed: {e}", "see intercept line")
        return
    with ch:
        ch.sendall(control.HELLO + control.encode_client_add(
            socket.inet_aton(client), cport, socket.inet_aton(thost), tport))  # fmt: skip
        time.sleep(0.05)
        t0 = time.monotonic()
        err = _send_raw(_syn(client, thost, cport, tport, seq), thost)
        if err:
            rep.fail(check, f"probe not sent: {err}",
                     "a local firewall OUTPUT rule or a full conntrack table rejects raw "
                     "packets (see the firewall and conntrack lines)")  # fmt: skip
            return
        want = (socket.inet_aton(client), cport, socket.inet_aton(thost), tport)
        dec = control.FrameDecoder(combined=True)
        ch.setblocking(False)
        deadline = t0 + o.deadline
        while time.monotonic() < deadline:
            r, _, _ = select.select([ch], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                data = ch.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                rep.fail(check, f"intercept {icpt[0]} closed the control channel",
                         "check intercept's log (version or mode mismatch?)")  # fmt: skip
                return
            try:
                records = dec.feed(data)
            except Exception as e:
                rep.fail(check, f"bad data from intercept: {e}",
                         "both ends must use the same framing (combined records)")  # fmt: skip
                return
            for rec in records:
                if control.record_key(rec) != want:
                    continue
                seg = control.parse_record(rec)
                ms = (time.monotonic() - t0) * 1000
                if seg.flags & RST:
                    rep.fail(check, f"the target answered RST: nothing listens on {thost}:{tport}",
                             f"start the service on {thost} port {tport} or fix -x")  # fmt: skip
                    return
                if seg.flags & (SYN | ACK) == SYN | ACK:
                    _reset(client, thost, cport, tport, (seq + 1) & 0xFFFFFFFF)
                    rep.ok(check, f"SYN-ACK reported by intercept {icpt[0]} after {ms:.1f} ms")
                    return
    rep.fail(check,
             f"no SYN-ACK reported by intercept within {o.deadline:g} s: routing on the target "
             f"(no route to {client} via {icpt[0]}) or intercept filter mismatch",
             f"on {thost}: ip route replace {client}/32 via {icpt[0]}; to tell which, on "
             f"{icpt[0]}: python -m pycopy_engine.cli.doctor --role assistant -i <iface> "
             f"-F '<intercept filter>' -x {thost}:{tport} -c {client}")  # fmt: skip


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


def _sniffer(iface: str | None, expr: str | None) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
    if expr:
        from pycopy_engine.io.bpf import attach_filter, compile_filter

        attach_filter(s, compile_filter(expr))
    if iface:
        s.bind((iface, 0x0003))
    s.setblocking(False)
    return s


def probe_from_assistant(o: DoctorOptions, rep: Report, tgt: tuple[str, int], client: str) -> None:
    """Spoofed SYN from here; is the SYN-ACK routed back here, and does -F accept it?"""
    thost, tport = tgt
    cport, seq = _probe_port(), random.getrandbits(32)
    check = f"probe {client}:{cport}->{thost}:{tport}"
    iface = o.ifaces[0] if o.ifaces else None
    raw = _sniffer(iface, f"tcp and src host {thost} and src port {tport} and dst port {cport}")
    filt = _sniffer(iface, o.filter) if o.filter and not sysinfo.filter_error(o.filter) else None
    want = (socket.inet_aton(thost), socket.inet_aton(client), tport, cport)
    seen: dict[str, int] = {}
    try:
        err = _send_raw(_syn(client, thost, cport, tport, seq), thost)
        if err:
            rep.fail(check, f"probe not sent: {err}", "check this host's OUTPUT firewall rules")
            return
        deadline = time.monotonic() + o.deadline
        socks = [s for s in (raw, filt) if s is not None]
        while time.monotonic() < deadline and not ("raw" in seen and ("filt" in seen or not filt)):
            r, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
            for s in r:
                try:
                    pkt = s.recv(65535)
                except BlockingIOError:
                    continue
                if len(pkt) < 40 or pkt[0] >> 4 != 4:
                    continue
                ihl = (pkt[0] & 15) * 4
                key = (pkt[12:16], pkt[16:20], int.from_bytes(pkt[ihl:ihl + 2], "big"),
                       int.from_bytes(pkt[ihl + 2:ihl + 4], "big"))  # fmt: skip
                if key == want:
                    seen["raw" if s is raw else "filt"] = pkt[ihl + 13]
    finally:
        raw.close()
        if filt is not None:
            filt.close()
    flags = seen.get("raw")
    me = (sysinfo.route_get(thost) or {}).get("prefsrc", "<this host>")
    if flags is None:
        rep.fail(check, f"no answer from {thost}:{tport} reached this host within {o.deadline:g} s:"
                        f" routing on the target (no route to {client} via {me})",
                 f"on {thost}: ip route replace {client}/32 via {me}")  # fmt: skip
        return
    if flags & RST:
        rep.fail(check, f"the target answered RST: nothing listens on {thost}:{tport}",
                 f"start the service on {thost} port {tport}")  # fmt: skip
        return
    _reset(client, thost, cport, tport, (seq + 1) & 0xFFFFFFFF)
    if filt is not None and "filt" not in seen:
        rep.fail(check, f"the SYN-ACK arrived but the filter '{o.filter}' does not accept it",
                 f"intercept -F 'tcp and src host {thost} and src port {tport}'")  # fmt: skip
        return
    rep.ok(check, f"the target's SYN-ACK arrives here{' and passes the filter' if filt else ''}")


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
    {"online": check_online, "assistant": check_assistant, "target": check_target}[role](opts, rep)
    return 1 if rep.failed else 0


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_doctor(args.role, args)


if __name__ == "__main__":
    sys.exit(main())
