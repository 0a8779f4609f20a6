"""pycopy_engine.io.loop: timers with a fake clock, I/O readiness, stop."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from pycopy_engine.io.loop import Loop


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> tuple[Loop, FakeClock]:
    clock = FakeClock()
    loop = Loop(clock=clock)
    yield loop, clock
    loop.close()


def test_timers_fire_in_time_order_and_only_when_due(fake):
    loop, clock = fake
    fired = []
    loop.call_at(1003.0, lambda: fired.append("c"))
    loop.call_at(1001.0, lambda: fired.append("a"))
    loop.call_later(2.0, lambda: fired.append("b"))
    loop.call_at(1001.0, lambda: fired.append("a2"))  # same time: insertion order
    loop.run_once(0)
    assert fired == []
    clock.t = 1001.0
    loop.run_once(0)
    assert fired == ["a", "a2"]
    clock.t = 1005.0
    loop.run_once(0)
    assert fired == ["a", "a2", "b", "c"]
    assert loop.pending_timers() == 0


def test_cancelled_timer_never_fires_and_cancel_is_idempotent(fake):
    loop, clock = fake
    fired = []
    h = loop.call_later(1.0, lambda: fired.append(1))
    h.cancel()
    h.cancel()
    assert loop.pending_timers() == 0
    clock.t += 2
    loop.run_once(0)
    assert fired == []
    # cancelling after firing does nothing either
    h2 = loop.call_later(1.0, lambda: fired.append(2))
    clock.t += 2
    loop.run_once(0)
    h2.cancel()
    assert fired == [2] and loop.pending_timers() == 0 and loop.heap_size() == 0


def test_many_cancelled_timers_are_compacted(fake):
    loop, clock = fake
    handles = [loop.call_later(10.0 + i, lambda: None) for i in range(10000)]
    keep = []
    for i, h in enumerate(handles):
        if i % 100 == 0:
            keep.append(h)
        else:
            h.cancel()
    assert loop.pending_timers() == 100
    assert loop.heap_size() < 300  # lazy deletion, but compacted
    fired = []
    for h in keep:
        cb = h.callback
        h.callback = lambda cb=cb, w=h.when: fired.append(w)
    clock.t += 20000
    loop.run_once(0)
    assert len(fired) == 100 and fired == sorted(fired)


def test_next_timeout_skips_cancelled_head(fake):
    loop, clock = fake
    h = loop.call_later(0.5, lambda: None)
    loop.call_later(30.0, lambda: None)
    h.cancel()
    assert loop._next_timeout() == pytest.approx(30.0)


def test_call_soon_runs_next_iteration_in_order(fake):
    loop, _ = fake
    out = []
    loop.call_soon(lambda: out.append(1))
    loop.call_soon(lambda: (out.append(2), loop.call_soon(lambda: out.append(3))))
    loop.run_once(0)
    assert out == [1, 2]  # the one added during the iteration waits
    loop.run_once(0)
    assert out == [1, 2, 3]


def test_reader_and_writer_on_same_socket():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got = []
    with Loop() as loop:
        loop.add_writer(a, lambda: (a.send(b"ping"), loop.remove_writer(a)))
        loop.add_reader(b, lambda: got.append(b.recv(10)))
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        loop.run_once(1.0)  # a writable
        loop.run_once(1.0)  # b readable
        assert got == [b"ping"]
        b.send(b"pong")
        loop.run_once(1.0)
        assert got == [b"ping", b"pong"]
        loop.remove_reader(a)
        loop.remove_reader(b)
        loop.remove_reader(b)  # removing twice is harmless
        assert loop._handlers == {}
    a.close()
    b.close()


def test_run_until_stop_and_exception_propagates():
    with Loop() as loop:
        n = []

        def tick():
            n.append(1)
            if len(n) == 3:
                loop.stop()
            else:
                loop.call_later(0.001, tick)

        loop.call_soon(tick)
        loop.run()
        assert len(n) == 3

        def boom():
            raise ValueError("from callback")

        loop.call_soon(boom)
        with pytest.raises(ValueError, match="from callback"):
            loop.run()
        # the loop is still usable afterwards
        loop.call_soon(loop.stop)
        loop.run()


def test_stop_from_signal_handler_wakes_blocked_loop():
    with Loop() as loop:
        loop.call_later(30.0, lambda: None)  # would block 30 s
        old = signal.signal(signal.SIGUSR1, lambda s, f: loop.stop())
        try:
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            t0 = time.monotonic()
            loop.run()
            assert time.monotonic() - t0 < 5.0
        finally:
            signal.signal(signal.SIGUSR1, old)


def test_stop_from_other_thread_wakes_loop():
    with Loop() as loop:
        loop.call_later(30.0, lambda: None)
        threading.Timer(0.1, loop.stop).start()
        t0 = time.monotonic()
        loop.run()
        assert time.monotonic() - t0 < 5.0


def test_stop_before_run_is_honoured():
    with Loop() as loop:
        loop.call_later(30.0, lambda: None)
        loop.stop()
        t0 = time.monotonic()
        loop.run()
        assert time.monotonic() - t0 < 1.0


def test_error_and_hangup_wake_the_reader_and_the_writer():
    """epoll reports a reset as EPOLLERR|EPOLLHUP: the reader (to read the
    error or EOF) and the writer (to fail its send) both run, as they did
    with selectors."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with Loop() as loop:
        woke = []
        b.close()  # a: EOF (EPOLLIN|EPOLLHUP)
        loop.add_reader(a, lambda: woke.append("reader-a"))
        d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.setblocking(False)
        loop.add_writer(c, lambda: woke.append("writer-c"))
        d.close()
        loop.run_once(1.0)
        assert sorted(woke) == ["reader-a", "writer-c"]
        assert a.recv(10) == b""
        loop.remove_reader(a)
        loop.remove_writer(c)
    a.close()
    c.close()


def test_a_reader_removed_by_an_earlier_callback_of_the_same_turn_does_not_run():
    pairs = [socket.socketpair() for _ in range(2)]
    with Loop() as loop:
        ran = []

        def first(i: int):
            ran.append(i)
            loop.remove_reader(pairs[1 - i][0])  # the other one, ready in this turn too

        for i, (r, w) in enumerate(pairs):
            w.send(b"x")
            loop.add_reader(r, lambda i=i: first(i))
        loop.run_once(1.0)
        assert len(ran) == 1
        loop.remove_reader(pairs[ran[0]][0])
    for r, w in pairs:
        r.close()
        w.close()


def test_a_socket_closed_without_remove_can_be_removed_and_its_number_reused():
    with Loop() as loop:
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.add_reader(a, lambda: None)
        a.close()  # epoll forgets it; the loop's table does not
        loop.remove_reader(fd)  # no error
        c, d = socket.socketpair()
        got: list[int] = []
        loop.add_reader(c, lambda: got.append(1))  # likely the same number again
        d.send(b"x")
        loop.run_once(1.0)
        assert got == [1]
        loop.remove_reader(c)
        for s in (b, c, d):
            s.close()
