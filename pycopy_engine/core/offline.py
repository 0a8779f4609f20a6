"""Sans-IO pacing for offline replay (reference §3.12, done better).

``Pacer`` releases packets at their capture-time offsets, divided by the
speed-up (``-a``), with idle gaps longer than ``-I`` milliseconds removed.
``Replay`` walks a capture ``rounds`` times (``-T``), tags each packet with its
round number (the engine gives every round fresh client ports) and reports the
position for progress lines.  Time is always passed in; nothing here reads a
clock or a file: the packet source is any iterable of ``(timestamp, item)``.

Release time of packet *i*::

    start + (ts_i - ts_0 - skipped_i) / speed

where ``skipped_i`` is the sum of the gaps longer than the idle bound that lie
before packet *i*, each counted exactly once (the C tool re-adds gaps on later
ticks, so its skipping drifts).  A skipped gap is removed entirely: the packet
after it is due together with the one before it, as in the C tool.  Capture
timestamps that go backwards do not move release times back: such a packet is
due with its predecessor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pycopy_engine.errors import ConfigError

T = TypeVar("T")


class Pacer(Generic[T]):
    """Release ``(timestamp, item)`` pairs from one pass over a capture."""

    __slots__ = (
        "speed", "idle_skip", "_src", "_next", "_start", "_ts0", "_last_ts",
        "_skipped", "_last_release", "released", "last_ts", "skipped_total", "skipped_gaps",
    )  # fmt: skip

    def __init__(self, speed: float = 1.0, idle_skip_ms: float = 0) -> None:
        if not speed > 0:
            raise ConfigError(f"-a speed-up must be > 0, got {speed!r}")
        if idle_skip_ms < 0:
            raise ConfigError(f"-I idle gap must be >= 0 ms, got {idle_skip_ms!r}")
        self.speed = float(speed)
        self.idle_skip = idle_skip_ms / 1000.0 if idle_skip_ms else 0.0
        self._src: Iterator[tuple[float, T]] | None = None
        self._next: tuple[float, T] | None = None
        self._start = 0.0
        self._ts0 = 0.0
        self._last_ts = 0.0
        self._skipped = 0.0
        self._last_release = 0.0
        self.released = 0  # packets handed out so far
        self.last_ts: float | None = None  # capture timestamp of the last one handed out
        self.skipped_total = 0.0  # capture seconds removed by -I
        self.skipped_gaps = 0

    def start(self, packets: Iterable[tuple[float, T]], now: float) -> None:
        """Begin releasing ``packets``; the first one is due at ``now``."""
        self._src = iter(packets)
        self._start = now
        self._next = next(self._src, None)
        if self._next is not None:
            self._ts0 = self._last_ts = self._next[0]
        self._last_release = now

    @property
    def exhausted(self) -> bool:
        return self._next is None

    def _release_time(self, ts: float) -> float:
        gap = ts - self._last_ts
        if gap <= 0:
            return self._last_release
        if self.idle_skip and gap > self.idle_skip:
            # decided once, when the packet after the gap is first looked at
            self._skipped += gap
            self.skipped_total += gap
            self.skipped_gaps += 1
            self._last_ts = ts
            return self._last_release
        t = self._start + (ts - self._ts0 - self._skipped) / self.speed
        return t if t > self._last_release else self._last_release

    def next_deadline(self) -> float | None:
        """When the next packet is due (``None`` once the source is exhausted)."""
        nxt = self._next
        if nxt is None:
            return None
        t = self._release_time(nxt[0])
        # remember the decision so that repeated calls agree with due()
        self._last_ts = max(self._last_ts, nxt[0])
        self._last_release = t
        return t

    def due(self, now: float, limit: int = 0) -> list[tuple[float, T]]:
        """Every packet due at ``now`` (at most ``limit`` if given), in file order."""
        out: list[tuple[float, T]] = []
        src = self._src
        nxt = self._next
        while nxt is not None:
            t = self._release_time(nxt[0])
            if t > now:
                break
            self._last_ts = max(self._last_ts, nxt[0])
            self._last_release = t
            out.append(nxt)
            nxt = next(src, None) if src is not None else None
            if limit and len(out) >= limit:
                break
        self._next = nxt
        if out:
            self.released += len(out)
            self.last_ts = out[-1][0]
        return out


@dataclass(frozen=True)
class Position:
    """Where a replay is, for progress lines."""

    round: int  # 1-based; 0 before start
    rounds: int
    index: int  # packets released in this round
    file_ts: float | None  # capture timestamp of the last released packet
    file_start: float | None  # capture timestamp of the round's first packet
    released: int  # packets released over all rounds
    done: bool

    @property
    def file_offset_s(self) -> float:
        """Seconds into the capture (capture time, not wall time)."""
        if self.file_ts is None or self.file_start is None:
            return 0.0
        return self.file_ts - self.file_start


class Replay(Generic[T]):
    """Walk a capture ``rounds`` times, releasing ``(round, timestamp, item)``.

    ``open_packets`` is called once per round and must return a fresh iterable
    of ``(timestamp, item)`` (for example ``lambda: PcapReader(path)``).  Round
    *r + 1* starts ``round_gap`` seconds after the last packet of round *r*.
    """

    def __init__(
        self,
        open_packets: Callable[[], Iterable[tuple[float, T]]],
        rounds: int = 1,
        speed: float = 1.0,
        idle_skip_ms: float = 0,
        round_gap: float = 0.0,
    ) -> None:
        if rounds < 1:
            raise ConfigError(f"-T rounds must be >= 1, got {rounds!r}")
        self._open = open_packets
        self.rounds = rounds
        self.speed = speed
        self.idle_skip_ms = idle_skip_ms
        self.round_gap = round_gap
        self.round = 0
        self.released = 0
        self.finished_at: float | None = None  # when the last packet of the last round left
        self._pacer: Pacer[T] | None = None
        self._next_round_at: float | None = None
        self._first_ts: float | None = None
        self.round_packets: list[int] = []  # packets released per finished round

    def start(self, now: float) -> None:
        self._next_round_at = now

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def _begin_round(self, at: float) -> None:
        self.round += 1
        self._pacer = Pacer(self.speed, self.idle_skip_ms)
        self._pacer.start(self._open(), at)
        self._first_ts = None
        self._next_round_at = None

    def _end_round(self, at: float) -> None:
        assert self._pacer is not None
        self.round_packets.append(self._pacer.released)
        if self.round >= self.rounds:
            self.finished_at = at
            self._next_round_at = None
        else:
            self._next_round_at = at + self.round_gap

    def due(self, now: float, limit: int = 0) -> list[tuple[int, float, Any]]:
        """Packets due at ``now`` as ``(round, timestamp, item)``, in order."""
        out: list[tuple[int, float, Any]] = []
        while not self.done and not (limit and len(out) >= limit):
            if self._next_round_at is not None:
                if self._next_round_at > now:
                    break
                self._begin_round(self._next_round_at)
            pacer = self._pacer
            assert pacer is not None
            batch = pacer.due(now, limit - len(out) if limit else 0)
            if batch:
                if self._first_ts is None:
                    self._first_ts = batch[0][0]
                rnd = self.round
                out.extend((rnd, ts, item) for ts, item in batch)
                self.released += len(batch)
            if pacer.exhausted:
                # the round ends when its last packet is released (or at once if empty)
                self._end_round(max(pacer._last_release, pacer._start))
                continue
            if not batch:
                break
        return out

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        if self._next_round_at is not None:
            return self._next_round_at
        assert self._pacer is not None
        return self._pacer.next_deadline()

    def position(self) -> Position:
        pacer = self._pacer
        return Position(
            round=self.round,
            rounds=self.rounds,
            index=pacer.released if pacer else 0,
            file_ts=pacer.last_ts if pacer else None,
            file_start=self._first_ts,
            released=self.released,
            done=self.done,
        )
