"""Offline pacing with a fake clock: exact release times at -a 1, -a 5, -I, -T 3."""

from __future__ import annotations

import pytest

from pycopy_engine.core.offline import Pacer, Replay
from pycopy_engine.errors import ConfigError

# capture timestamps: a burst, a 2 s idle gap, a 0.3 s gap, reordering, the end
TS = [100.0, 100.010, 100.010, 100.250, 102.250, 102.550, 102.540, 102.600]


def packets() -> list[tuple[float, int]]:
    return [(ts, i) for i, ts in enumerate(TS)]


def release_times(pacer: Pacer, start: float, step: float = 0.001) -> dict[int, float]:
    """Drive the pacer with a fake clock that jumps to each deadline."""
    pacer.start(packets(), start)
    seen: dict[int, float] = {}
    now = start
    for _ in range(10_000):
        for _, item in pacer.due(now):
            seen[item] = now
        deadline = pacer.next_deadline()
        if deadline is None:
            return seen
        assert deadline >= now
        now = deadline
    raise AssertionError("pacer did not finish")


def test_speed_1_releases_at_capture_offsets() -> None:
    got = release_times(Pacer(1.0), 5000.0)
    want = [0, 0.010, 0.010, 0.250, 2.250, 2.550, 2.550, 2.600]
    assert [got[i] - 5000.0 for i in range(len(TS))] == pytest.approx(want, abs=1e-9)


def test_speed_5_divides_every_gap() -> None:
    got = release_times(Pacer(5.0), 0.0)
    want = [0, 0.002, 0.002, 0.050, 0.450, 0.510, 0.510, 0.520]
    assert [got[i] for i in range(len(TS))] == pytest.approx(want, abs=1e-9)


def test_idle_skip_removes_each_long_gap_exactly_once() -> None:
    p = Pacer(1.0, idle_skip_ms=200)
    got = release_times(p, 0.0)
    # the 0.24 s and 2 s gaps are > 200 ms and vanish; 0.3 s gap too; 10 ms stays
    want = [0, 0.010, 0.010, 0.010, 0.010, 0.010, 0.010, 0.060]
    assert [got[i] for i in range(len(TS))] == pytest.approx(want, abs=1e-9)
    assert p.skipped_gaps == 3
    assert p.skipped_total == pytest.approx(0.240 + 2.0 + 0.300)


def test_idle_skip_with_speed_up() -> None:
    got = release_times(Pacer(2.0, idle_skip_ms=1000), 10.0)
    # only the 2 s gap is skipped; the rest is halved
    want = [0, 0.005, 0.005, 0.125, 0.125, 0.275, 0.275, 0.300]
    assert [got[i] - 10.0 for i in range(len(TS))] == pytest.approx(want, abs=1e-9)


def test_due_is_not_early_and_order_is_kept() -> None:
    p: Pacer[int] = Pacer(1.0)
    p.start(packets(), 0.0)
    assert [i for _, i in p.due(0.0)] == [0]
    assert p.due(0.0099) == []
    assert p.next_deadline() == pytest.approx(0.010)
    assert [i for _, i in p.due(0.3)] == [1, 2, 3]
    assert [i for _, i in p.due(100.0, limit=2)] == [4, 5]
    assert [i for _, i in p.due(100.0)] == [6, 7]
    assert p.exhausted and p.next_deadline() is None and p.released == 8
    assert p.last_ts == TS[-1]


def test_late_polling_releases_everything_due_in_one_batch() -> None:
    p: Pacer[int] = Pacer(1.0)
    p.start(packets(), 0.0)
    assert len(p.due(2.3)) == 5
    assert p.next_deadline() == pytest.approx(2.55)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="-a"):
        Pacer(0)
    with pytest.raises(ConfigError, match="-I"):
        Pacer(1.0, idle_skip_ms=-1)
    with pytest.raises(ConfigError, match="-T"):
        Replay(packets, rounds=0)


def drive(replay: Replay, start: float) -> list[tuple[float, int, float, int]]:
    replay.start(start)
    out = []
    now = start
    for _ in range(10_000):
        for rnd, ts, item in replay.due(now):
            out.append((now, rnd, ts, item))
        deadline = replay.next_deadline()
        if deadline is None:
            return out
        assert deadline >= now
        now = deadline
    raise AssertionError("replay did not finish")


def test_three_rounds_back_to_back_with_round_numbers() -> None:
    opened = []

    def source() -> list[tuple[float, int]]:
        opened.append(1)
        return packets()

    r = Replay(source, rounds=3, speed=1.0)
    out = drive(r, 0.0)
    assert len(opened) == 3
    assert [rnd for _, rnd, _, _ in out] == [1] * 8 + [2] * 8 + [3] * 8
    assert [item for *_, item in out] == list(range(8)) * 3
    starts = [now for now, _, _, item in out if item == 0]
    assert starts == pytest.approx([0.0, 2.6, 5.2])
    assert out[-1][0] == pytest.approx(7.8)
    assert r.done and r.finished_at == pytest.approx(7.8)
    assert r.round_packets == [8, 8, 8]
    pos = r.position()
    assert (pos.round, pos.rounds, pos.index, pos.released, pos.done) == (3, 3, 8, 24, True)
    assert pos.file_offset_s == pytest.approx(2.6)


def test_rounds_with_gap_and_speed() -> None:
    r = Replay(packets, rounds=3, speed=5.0, round_gap=1.0)
    out = drive(r, 0.0)
    starts = [now for now, _, _, item in out if item == 0]
    assert starts == pytest.approx([0.0, 1.52, 3.04])


def test_position_mid_round() -> None:
    r = Replay(packets, rounds=2)
    r.start(0.0)
    assert r.position().round == 0
    r.due(0.3)
    pos = r.position()
    assert (pos.round, pos.index, pos.file_ts, pos.file_start) == (1, 4, 100.25, 100.0)
    assert pos.file_offset_s == pytest.approx(0.25)
    assert not pos.done


def test_empty_capture_finishes_at_once() -> None:
    r: Replay[int] = Replay(list, rounds=3)
    assert drive(r, 7.0) == []
    assert r.done and r.finished_at == 7.0 and r.round == 3


def test_limit_holds_across_round_boundaries() -> None:
    r = Replay(packets, rounds=3)
    r.start(0.0)
    batches = []
    while not r.done:
        batch = r.due(1000.0, limit=5)
        assert 0 < len(batch) <= 5
        batches.append(batch)
    flat = [(rnd, item) for b in batches for rnd, _, item in b]
    assert flat == [(rnd, i) for rnd in (1, 2, 3) for i in range(8)]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
