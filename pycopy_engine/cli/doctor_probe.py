"""``doctor``'s end-to-end probes: one spoofed SYN, and where its SYN-ACK ends up.

* :func:`probe_via_intercept` (online role) -- register the probe's client
  with intercept (CLIENT_ADD), send the SYN to the target, and wait for
  intercept to report the target's SYN-ACK on the control channel.
* :func:`probe_from_assistant` (assistant role) -- send the SYN from here and
  sniff for the SYN-ACK: is it routed back here, and does intercept's ``-F``
  filter accept it?

Each reports one OK or FAIL line through :class:`pycopy_engine.cli.doctor.Report`
and, when the target answered SYN-ACK, resets the half-open connection there.
"""

from __future__ import annotations

import os
import random
import select
import socket
import time
from typing import TYPE_CHECKING

from pycopy_engine.io import sysinfo
from pycopy_engine.wire import control
from pycopy_engine.wire.tcpip import ACK, RST, SYN, build_ipv4_tcp

if TYPE_CHECKING:  # doctor imports this module: no run-time import back
    from pycopy_engine.cli.doctor import DoctorOptions, Report


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


def seen_as_client(addr: str, seconds: float) -> bool:
    """Does ``addr`` send TCP to this host right now (a real client in the capture)?

    Watches inbound IPv4 TCP for ``seconds`` with a raw socket, as tcpcopy's own
    default capture, filtered in the kernel on the source address."""
    from pycopy_engine.io.bpf import attach_filter, compile_filter

    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
        attach_filter(s, compile_filter(f"tcp and src host {addr}"))
        s.setblocking(False)
        want = socket.inet_aton(addr)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([s], [], [], left)
            if not r:
                return False
            try:
                pkt = s.recv(128)
            except BlockingIOError:
                continue
            if len(pkt) >= 20 and pkt[12:16] == want:
                return True


def _probe_port() -> int:
    return random.randint(50000, 59999)


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
