"""``tcpcopy --doctor --no-assistant``: the online host's checks for own-address mode.

* CAP_NET_RAW (raw sends, AF_PACKET capture) and CAP_NET_ADMIN (the drop rule);
* the source addresses are this host's own;
* the port pool: its size (and the sustained rate of new sessions it allows
  with the 60 s rest), and, when the drop rule is installed, that the ports
  it drops are clear of this host's listening ports and live sockets;
* the drop rule is in place;
* a probe: a SYN from this host's address and a pool port to the target; its
  SYN-ACK must be captured here and the host's stack must not answer it with
  RST (which it does when the rule is missing).
"""

from __future__ import annotations

import random
import select
import socket
import time
from typing import TYPE_CHECKING

from pycopy_engine.cli.doctor_probe import _reset, _send_raw, _syn
from pycopy_engine.core.portpool import REUSE_GAP, pool_ports
from pycopy_engine.io import droprule, hostports, sysinfo
from pycopy_engine.wire.tcpip import ACK, RST, SYN

if TYPE_CHECKING:
    from pycopy_engine.cli.doctor import DoctorOptions, Report

CAP_NET_ADMIN = 12
POOL_FAIL = 1024  # fewer pool ports than this: fewer than ~17 new sessions/s
POOL_WARN = 8192
PACKET_OUTGOING = 4
RST_WAIT = 0.3  # after the SYN-ACK, how long to watch for the host's RST
PROBE_TRIES = 3  # pool ports tried when the target's TIME_WAIT answers a bare ACK


def check_own_address(o: DoctorOptions, rep: Report) -> None:
    cap = sysinfo.has_cap(sysinfo.CAP_NET_RAW)
    if cap:
        rep.ok("cap_net_raw", "this process may send raw packets and capture the answers")
    else:
        rep.fail("cap_net_raw", "missing: cannot send raw packets nor capture answers",
                 "run as root")  # fmt: skip
    if sysinfo.has_cap(CAP_NET_ADMIN):
        rep.ok("cap_net_admin", "this process may install the drop rule")
    else:
        rep.fail("cap_net_admin", "missing: tcpcopy --no-assistant cannot install its drop rule",
                 "run as root")  # fmt: skip
    local = set(sysinfo.local_addresses())
    own = o.clients or [
        r["prefsrc"] for r in (sysinfo.route_get(t) for t, _ in o.targets) if r and "prefsrc" in r]
    for addr in own:
        if addr in local:
            rep.ok(f"source {addr}", "an address of this host")
        else:
            rep.fail(f"source {addr}", "not an address of this host: the copies would be spoofed",
                     "give -c with this host's address, or none")  # fmt: skip
    lo, hi = hostports.local_port_range()
    host_ports = hostports.live_ports()  # listening ones included
    ports = pool_ports((lo, hi), host_ports)
    rate = len(ports) * max(len(own), 1) / REUSE_GAP
    detail = (f"{len(ports)} ports outside ip_local_port_range {lo}-{hi} x {len(own)} "
              f"address(es): at most {rate:.0f} new sessions/s sustained ({REUSE_GAP:g} s "
              "rest per port)")  # fmt: skip
    widen = (f"sysctl -w net.ipv4.ip_local_port_range='{max(lo, 32768)} {min(hi, 60999)}'"
             " (leave room outside it)")  # fmt: skip
    if len(ports) < POOL_FAIL:
        rep.fail("port pool", detail, widen)
    elif len(ports) < POOL_WARN:
        rep.warn("port pool", detail, widen)
    else:
        rep.ok("port pool", detail)
    installed = droprule.installed_intervals()
    if installed:
        dropped: set[int] = set()
        for a, b in installed:
            dropped.update(range(a, b + 1))
        clash = sorted(dropped & host_ports)
        if clash:
            rep.fail("pool clear of host ports", "the drop rule covers port(s) "
                     + ", ".join(map(str, clash[:5])) + " used by this host's sockets",
                     "restart tcpcopy --no-assistant (its pool leaves live ports out)")  # fmt: skip
        else:
            rep.ok("pool clear of host ports", f"none of the {len(dropped)} dropped ports is a "
                                               "listening port or a live socket of this host")
        which = "nft table ip " + droprule.TABLE if droprule.nft_present() else (
            "iptables raw chain " + droprule.CHAIN)
        rep.ok("drop rule", f"in place ({which})")
    else:
        rep.warn("drop rule", "not installed: tcpcopy --no-assistant installs it at start "
                              "(if tcpcopy runs, something removed it: restart it)")  # fmt: skip
    if not o.probe:
        return
    if not (cap and o.targets and own and ports):
        rep.warn("probe", "probe skipped (needs CAP_NET_RAW, an -x target, a source address "
                          "and a pool port)")  # fmt: skip
        return
    tries = random.sample(ports, min(PROBE_TRIES, len(ports)))
    probe_own(o, rep, o.targets[0], own[0], tries, bool(installed))


def _probe_once(src: str, thost: str, cport: int, tport: int, seq: int, wait: float
                ) -> str | tuple[float | None, bool, bool, bool]:
    """One SYN; (SYN-ACK time, RST in, bare ACK in, host's RST out) or the send error."""
    from pycopy_engine.io.bpf import attach_filter, compile_filter

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
    synack = None
    rst_in = ack_in = rst_out = False
    try:
        attach_filter(sock, compile_filter(
            f"tcp and host {thost} and port {tport} and host {src} and port {cport}"))
        sock.setblocking(False)
        err = _send_raw(_syn(src, thost, cport, tport, seq), thost)
        if err:
            return err
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                pkt, addr = sock.recvfrom(256)
            except BlockingIOError:
                continue
            if len(pkt) < 40:
                continue
            flags = pkt[((pkt[0] & 15) * 4) + 13]
            if addr[2] == PACKET_OUTGOING:
                if flags & RST:
                    rst_out = True
                    break
            elif synack is None:
                if flags & RST:
                    rst_in = True
                    break
                if flags & (SYN | ACK) == SYN | ACK:
                    synack = time.monotonic()
                    deadline = min(deadline, synack + RST_WAIT)
                elif flags & ACK:
                    ack_in = True
                    break
    finally:
        sock.close()
    return synack, rst_in, ack_in, rst_out


def probe_own(o: DoctorOptions, rep: Report, tgt: tuple[str, int], src: str,
              cports: list[int], rule: bool) -> None:
    """Probe from the first of ``cports`` whose 4-tuple the target has no socket for.

    A bare ACK instead of a SYN-ACK is the target's TIME_WAIT socket of an
    earlier session on the same 4-tuple (a pool port tcpcopy used within the
    last minute): the way back works, so the next port is tried.
    """
    thost, tport = tgt
    for n, cport in enumerate(cports):
        check = f"probe {src}:{cport}->{thost}:{tport}"
        seq = random.getrandbits(32)
        got = _probe_once(src, thost, cport, tport, seq, o.deadline)
        if isinstance(got, str):
            rep.fail(check, f"probe not sent: {got}", "check this host's OUTPUT firewall rules")
            return
        synack, rst_in, ack_in, rst_out = got
        if ack_in and synack is None and n + 1 < len(cports):
            continue  # TIME_WAIT on the target for this 4-tuple: another port
        break
    if rst_in and synack is None:
        rep.fail(check, f"the target answered RST: nothing listens on {thost}:{tport}",
                 f"start the service on {thost} port {tport} or fix -x")  # fmt: skip
        return
    if ack_in and synack is None:
        rep.warn(check, f"the target answered with a bare ACK from {len(cports)} port(s): "
                        "its sockets of earlier sessions on these 4-tuples are in TIME_WAIT "
                        "(the way back works)", "run the doctor again in a minute")  # fmt: skip
        return
    if synack is None:
        rep.fail(check, f"no answer from {thost}:{tport} within {o.deadline:g} s",
                 "check the target's firewall and that it can reach this host's address")
        return
    _reset(src, thost, cport, tport, (seq + 1) & 0xFFFFFFFF)
    if not rst_out:
        rep.ok(check, "the target's SYN-ACK is captured here and the host's stack does not "
                      "answer it")  # fmt: skip
    elif rule:
        rep.fail(check, "the host's stack answered the target's SYN-ACK with RST: the drop rule"
                        " does not match the target's answers",
                 "restart tcpcopy --no-assistant (it replaces the rule)")  # fmt: skip
    else:
        rep.warn(check, "the SYN-ACK is captured, and without the drop rule the host's stack "
                        "answers it with RST (expected before tcpcopy starts)")  # fmt: skip
