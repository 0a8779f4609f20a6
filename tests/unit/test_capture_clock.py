"""--delay on a ring (io/stamped.py ``CaptureClock``) with fake clocks: kernel
capture stamps (wall clock) put on the loop's monotonic clock, the read time
when a stamp cannot be trusted, and never a packet earlier than its capture
whatever the wall clock does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycopy_engine.io import stamped
from pycopy_engine.io.stamped import MAX_AGE, CaptureClock, ClockSetWatch

WALL0 = 1_764_000_000.0  # the wall clock's reading at tau 0
MONO0 = 5_000.0  # the monotonic clock's


class Clocks:
    """One true time ``tau``; the wall clock may be stepped, and ``stepped()``
    then says so once, as the kernel's timerfd does."""

    def __init__(self) -> None:
        self.tau = 0.0
        self.wall_off = WALL0
        self.seen_off = WALL0

    def stepped(self) -> bool:
        moved = self.wall_off != self.seen_off
        self.seen_off = self.wall_off
        return moved

    def clock(self) -> CaptureClock:
        return CaptureClock(self.mono, self.wall, self.stepped)

    def mono(self) -> float:
        return MONO0 + self.tau

    def wall(self) -> float:
        return self.wall_off + self.tau


def batch(clk: CaptureClock, stamps):
    out: list = []
    clk.push_batch([(b"p%d" % i, ts) for i, ts in enumerate(stamps)],
                   lambda pkt, t: out.append((pkt, t)))
    assert [p for p, _t in out] == [b"p%d" % i for i in range(len(stamps))]  # in order
    return [t for _p, t in out]


def test_stamps_become_capture_times_on_the_loop_clock():
    c = Clocks()
    clk = c.clock()
    c.tau = 10.0
    # captured 16 ms, 8 ms and 0 ms before the read (a V3 block's timer)
    got = batch(clk, [WALL0 + 9.984, WALL0 + 9.992, WALL0 + 10.0])
    assert got == pytest.approx([MONO0 + 9.984, MONO0 + 9.992, MONO0 + 10.0], abs=1e-6)
    assert clk.read_timed == 0 and clk.stepped == 0


def test_a_capture_time_never_exceeds_the_read_time():
    c = Clocks()
    clk = c.clock()
    c.tau = 3.0
    assert all(t <= c.mono() for t in batch(clk, [c.wall(), c.wall() - 1e-9]))


@pytest.mark.parametrize("ts", [None, WALL0 + 2.0 + 1e-3, WALL0 + 2.0 - MAX_AGE - 1e-3, 0.0],
                         ids=["no stamp", "in the future", "too old", "zero"])
def test_untrusted_stamp_gives_the_read_time(ts):
    c = Clocks()
    clk = c.clock()
    c.tau = 2.0
    assert batch(clk, [ts, WALL0 + 1.99]) == pytest.approx([c.mono(), MONO0 + 1.99])
    assert clk.read_timed == 1


@pytest.mark.parametrize("step", [0.3, -0.3, 5.0, -5.0])
def test_after_a_wall_clock_step_read_times_for_max_age(step):
    c = Clocks()
    clk = c.clock()
    c.tau = 1.0
    old = c.wall() - 0.01  # stamped before the step, read after it
    c.wall_off += step
    assert batch(clk, [old]) == [c.mono()]
    assert clk.stepped == 1
    c.tau = 1.0 + MAX_AGE / 2  # stamped after the step: still not trusted
    assert batch(clk, [c.wall() - 0.01, old]) == [c.mono(), c.mono()]
    c.tau = 1.0 + MAX_AGE + 0.01
    assert batch(clk, [c.wall() - 0.01]) == pytest.approx([c.mono() - 0.01])
    assert clk.stepped == 1 and clk.read_timed == 3


def test_slewing_is_no_step_however_long_the_idle_gap():
    """Wall minus monotonic drifts by the slew (chronyd: up to 8 %) between
    two batches minutes apart: stamps stay trusted, no warning."""
    c = Clocks()
    clk = c.clock()
    c.tau = 1.0
    batch(clk, [c.wall() - 0.001])
    c.tau = 301.0
    c.wall_off += 300 * 0.08  # slewed, not set: the kernel reports nothing
    c.seen_off = c.wall_off
    assert batch(clk, [c.wall() - 0.005]) == pytest.approx([c.mono() - 0.005])
    assert clk.stepped == 0 and clk.read_timed == 0


def test_without_a_way_to_learn_of_steps_no_stamp_is_trusted(monkeypatch):
    monkeypatch.setattr(stamped.ClockSetWatch, "available", property(lambda self: False))
    c = Clocks()
    clk = CaptureClock(c.mono, c.wall)
    c.tau = 1.0
    assert batch(clk, [c.wall() - 0.005]) == [c.mono()]
    assert clk.read_timed == 1
    clk.close()


def test_the_kernels_clock_set_watch_is_quiet_while_the_clock_is_not_set():
    """The real timerfd (the clock itself is never set here): made, non-blocking,
    no step reported; CaptureClock uses it by default."""
    w = ClockSetWatch()
    try:
        assert w.available
        assert [w.stepped() for _ in range(3)] == [False, False, False]
    finally:
        w.close()
    assert not w.available
    clk = CaptureClock(lambda: MONO0, lambda: WALL0)
    try:
        assert batch(clk, [WALL0 - 0.002]) == pytest.approx([MONO0 - 0.002])
    finally:
        clk.close()


events = st.lists(st.one_of(
    st.tuples(st.just("capture"), st.floats(0.0, 0.05)),
    st.tuples(st.just("wait"), st.floats(0.0, 0.8)),
    st.tuples(st.just("read"), st.integers(1, 4)),  # at most this many packets
    st.tuples(st.just("step"), st.floats(-3.0, 3.0)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events)
def test_no_packet_is_timed_before_its_capture(evs):
    """Captures, reads of a few packets at a time and wall-clock steps in any
    order: a packet's time is never before its true capture nor after its
    read; without a step it is its capture time."""
    c = Clocks()
    clk = c.clock()
    ring: list = []  # (true capture time on the loop clock, stamp)
    stepped = False
    for kind, v in evs:
        if kind == "capture":
            c.tau += v
            ring.append((c.mono(), c.wall()))
        elif kind == "wait":
            c.tau += v
        elif kind == "step":
            c.wall_off += v
            stepped = stepped or v != 0.0
        else:
            got, ring = ring[:v], ring[v:]
            times = batch(clk, [ts for _true, ts in got])
            for (true, _ts), t in zip(got, times):
                assert true - 1e-6 <= t <= c.mono()
                if not stepped and c.mono() - true <= MAX_AGE - 1e-6:
                    assert t == pytest.approx(true, abs=1e-6)
