"""Replay of the golden offline-input.pcap through PcapReader + Replay, fake clock."""

from __future__ import annotations

import pytest

from pycopy_engine.core.offline import Replay
from pycopy_engine.io.pcapfile import PcapReader, read_packets

from .test_pcapfile import FIXTURES

PCAP = FIXTURES / "offline-input.pcap"
pytestmark = pytest.mark.skipif(not PCAP.is_file(), reason="golden captures not present")


def run(replay: Replay, start: float) -> list[tuple[float, int, float, bytes]]:
    replay.start(start)
    now, out = start, []
    while True:
        out.extend((now, *d) for d in replay.due(now))
        deadline = replay.next_deadline()
        if deadline is None:
            return out
        now = deadline


@pytest.mark.parametrize("speed", [1.0, 5.0])
def test_every_packet_at_its_scaled_offset(speed: float) -> None:
    ts = [t for t, _ in read_packets(str(PCAP))]
    out = run(Replay(lambda: PcapReader(str(PCAP)), speed=speed), 100.0)
    assert len(out) == len(ts) == 4722
    for (now, rnd, t, _), want in zip(out, ts):
        assert rnd == 1 and t == want
        assert now == pytest.approx(100.0 + (want - ts[0]) / speed, abs=1e-6)
    span = ts[-1] - ts[0]
    assert out[-1][0] - 100.0 == pytest.approx(span / speed, abs=1e-6)


def test_three_rounds_each_complete_and_numbered() -> None:
    pkts = read_packets(str(PCAP))
    replay = Replay(lambda: PcapReader(str(PCAP)), rounds=3, speed=20.0)
    out = run(replay, 0.0)
    assert [sum(1 for o in out if o[1] == r) for r in (1, 2, 3)] == [4722] * 3
    for r in (1, 2, 3):
        assert [o[3] for o in out if o[1] == r] == [p for _, p in pkts]
    assert replay.round_packets == [4722] * 3 and replay.done
    pos = replay.position()
    assert (pos.round, pos.released) == (3, 3 * 4722)


def test_idle_skip_removes_exactly_the_long_gaps() -> None:
    ts = [t for t, _ in read_packets(str(PCAP))]
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    bound = sorted(gaps)[-20]  # skip the 19 longest gaps
    skipped = sum(g for g in gaps if g > bound)
    replay = Replay(lambda: PcapReader(str(PCAP)), idle_skip_ms=0)
    replay.idle_skip_ms = bound * 1000
    out = run(replay, 0.0)
    assert out[-1][0] == pytest.approx(ts[-1] - ts[0] - skipped, abs=1e-6)
