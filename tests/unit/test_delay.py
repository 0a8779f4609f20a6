"""--delay (core/delay.py) with a fake clock: fixed, jitter spread, order per
flow, rtt from captured handshakes and the median for flows without one."""

from __future__ import annotations

import random
import statistics

import pytest

from pycopy_engine.core.delay import DelayLine, DelaySpec, parse_delay
from pycopy_engine.wire.tcpip import ACK, PSH, SYN, build_ipv4_tcp

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])


def pkt(port, flags=ACK, seq=1000, payload=b"", ident=0):
    return build_ipv4_tcp(CLIENT, ONLINE, port, 80, seq, 1, flags, 512, b"", payload, ident)


def drain(line, until, step=0.0001, start=0.0):
    """Run the line's clock from ``start`` to ``until``; returns [(time released, packet)]."""
    out = []
    t = start
    while True:
        d = line.next_deadline()
        if d is None or d > until:
            return out
        t = max(t, d)
        out.extend((t, p) for _tag, p in line.due(t))


@pytest.mark.parametrize("text,spec", [
    ("50ms", DelaySpec(0.05, 0.0)), ("0.05s", DelaySpec(0.05, 0.0)),
    ("500us", DelaySpec(0.0005, 0.0)), ("50ms:10ms", DelaySpec(0.05, 0.01)),
    (" RTT ", DelaySpec(rtt=True)),
])
def test_parse(text, spec):
    assert parse_delay(text) == spec


@pytest.mark.parametrize("text,why", [
    ("50", "unit"), ("fast", "unit"), ("50ms:60ms", "larger than"), ("61s", "more than"),
    ("-5ms", "unit"), ("50ms:", "unit"),
])
def test_parse_refuses_naming_the_value(text, why):
    with pytest.raises(ValueError, match=why):
        parse_delay(text)


def test_fixed_delay_is_exact():
    line = DelayLine(parse_delay("50ms"))
    for i in range(100):
        line.push(pkt(40000 + i % 7, ident=i), i * 0.001)
    out = drain(line, 10)
    assert len(out) == 100 and line.held == 0
    for i, (t, p) in enumerate(out):
        assert p[4:6] == i.to_bytes(2, "big")  # release order is capture order
        assert t == pytest.approx(i * 0.001 + 0.05)
    assert not line.flows  # nothing remembered once released


def test_jitter_has_the_configured_spread_and_keeps_order_per_flow():
    line = DelayLine(parse_delay("50ms:10ms"), random.Random(3))
    n = 20000
    sent_at = {}
    for i in range(n):  # 2000 flows of 10 packets each, 0.1 ms apart (far less than the jitter)
        port, ident = 20000 + i // 10, i % 10
        sent_at[(port, ident)] = i * 0.0001
        line.push(pkt(port, ident=ident), i * 0.0001)
    out = drain(line, 100)
    assert len(out) == n
    last = {}
    delays = []
    firsts = []
    for t, p in out:
        port = int.from_bytes(p[20:22], "big")
        ident = int.from_bytes(p[4:6], "big")
        assert last.get(port, -1) < ident  # never overtakes the flow's earlier packet
        last[port] = ident
        delays.append(t - sent_at[(port, ident)])
        if ident == 0:
            firsts.append(t - sent_at[(port, 0)])
    # the first packet of each flow is never held back by an earlier one: its
    # delay is uniform in [40, 60] ms (mean 50, sd 10/sqrt(3) = 5.77 ms)
    assert min(firsts) >= 0.040 - 1e-9 and max(firsts) <= 0.060 + 1e-9
    assert statistics.mean(firsts) == pytest.approx(0.050, abs=0.0008)
    assert statistics.pstdev(firsts) == pytest.approx(0.01 / 3 ** 0.5, rel=0.06)
    # the later ones wait for their predecessors: never less than 40 ms, never
    # more than 60 ms plus the capture gap they had to their flow's first
    assert min(delays) >= 0.040 - 1e-9 and max(delays) <= 0.060 + 0.001


def handshake(line, port, t0, rtt, isn=5000):
    line.push(pkt(port, SYN, isn), t0)
    line.push(pkt(port, ACK, isn + 1), t0 + rtt)
    line.push(pkt(port, ACK | PSH, isn + 1, b"GET / HTTP/1.1\r\n\r\n"), t0 + rtt + 0.0002)


def test_rtt_mode_uses_each_clients_handshake_and_the_median_otherwise():
    line = DelayLine(parse_delay("rtt"))
    rtts = {41000: 0.020, 41001: 0.060, 41002: 0.120}
    for port, rtt in rtts.items():
        handshake(line, port, 1.0, rtt)
    line.push(pkt(41003, ACK | PSH, 9000, b"GET /mid HTTP/1.1\r\n\r\n"), 1.5)  # no handshake
    out = drain(line, 10)
    got = {}
    for t, p in out:
        got.setdefault(int.from_bytes(p[20:22], "big"), []).append(t)
    for port, rtt in rtts.items():
        syn_t, ack_t, req_t = got[port]
        assert syn_t == pytest.approx(1.0 + rtt)  # the SYN waited for the ACK
        assert ack_t == pytest.approx(1.0 + 2 * rtt)
        assert req_t == pytest.approx(1.0 + 2 * rtt + 0.0002)
    assert got[41003] == [pytest.approx(1.5 + 0.060)]  # median of 20, 60, 120
    assert line.rtt_measured == 3 and line.rtt_median_used == 1


def test_rtt_mode_syn_without_ack_is_released_with_the_median():
    line = DelayLine(parse_delay("rtt"), rtt_wait=3.0)
    handshake(line, 42000, 0.0, 0.040)
    line.push(pkt(42001, SYN, 1), 1.0)
    out = drain(line, 10)
    t_syn = [t for t, p in out if int.from_bytes(p[20:22], "big") == 42001]
    # given up on after rtt_wait: its median delay is long past, it goes at once
    assert t_syn == [pytest.approx(4.0)]
    assert line.rtt_median_used == 1 and not line._waiting
