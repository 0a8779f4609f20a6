"""The replayed session's states, the transitions allowed between them, and
the narrow interface a session uses to reach its engine (sans-IO).

::

    NEW          -> SYN_SENT (start)             | CLOSED (evicted before its SYN)
    SYN_SENT     -> ESTABLISHED (SYN-ACK)        | REBUILD_WAIT (RST, data queued) | CLOSED
    ESTABLISHED  -> REBUILD_WAIT (target closed) | CLOSED
    REBUILD_WAIT -> SYN_SENT (fresh handshake)   | CLOSED
    CLOSED       (terminal)

* ``NEW``: allocated, nothing sent yet.
* ``SYN_SENT``: our SYN is out (captured or fabricated); waiting for the
  target's SYN-ACK as intercept reports it.
* ``ESTABLISHED``: captured data flows to the target, paced by its answers.
* ``REBUILD_WAIT``: the target closed (FIN or RST) while captured requests
  remain; a fresh handshake on the same 4-tuple follows after one RTT.
* ``CLOSED``: ended (cleanly or with a counted reason); terminal.

Every state change goes through ``Session._set_state``, which checks
:data:`ALLOWED` and counts ``state:<OLD>-><NEW>``; a change not in the table
raises :class:`TransitionError` (the engine then ends the session as an
``internal_error``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Dict, FrozenSet, List, Optional, Protocol, Tuple

from ..errors import PycopyError


class State(Enum):
    NEW = 0
    SYN_SENT = 1
    ESTABLISHED = 2
    REBUILD_WAIT = 3
    CLOSED = 4


NEW, SYN_SENT, ESTABLISHED, REBUILD_WAIT, CLOSED = (
    State.NEW, State.SYN_SENT, State.ESTABLISHED, State.REBUILD_WAIT, State.CLOSED)

ALLOWED: Dict[State, FrozenSet[State]] = {
    NEW: frozenset({SYN_SENT, CLOSED}),                      # start; evicted before its SYN
    SYN_SENT: frozenset({ESTABLISHED, REBUILD_WAIT, CLOSED}),  # SYN-ACK; RST with data queued
    ESTABLISHED: frozenset({REBUILD_WAIT, CLOSED}),          # target closed early; ended
    REBUILD_WAIT: frozenset({SYN_SENT, CLOSED}),             # the fresh handshake; ended
    CLOSED: frozenset(),
}

# the counter key of each allowed transition, built once (no string work per packet)
TRANSITION_KEY: Dict[Tuple[State, State], str] = {
    (a, b): f"state:{a.name}->{b.name}" for a, bs in ALLOWED.items() for b in bs
}

# states in which the target holds (or is about to hold) a connection for us
TARGET_SIDE_OPEN = frozenset({SYN_SENT, ESTABLISHED})

# The hot path's view of the table: an Enum member hashes in Python code, so
# _set_state indexes rows by the members' int values instead of hashing them.
# ROWS[old][new] is the counter key, or None when not allowed; rebuilt by
# compile_table() whenever ALLOWED changes (tests change it).
ROWS: List[List[Optional[str]]] = []


def compile_table() -> None:
    ROWS[:] = [[f"state:{a.name}->{b.name}" if b in ALLOWED[a] else None for b in State]
               for a in State]


compile_table()


class TransitionError(PycopyError):
    """A state change the table does not allow: a bug in the session logic."""

    def __init__(self, old: State, new: State) -> None:
        super().__init__(f"session state {old.name} -> {new.name} is not allowed")
        self.old = old
        self.new = new


class SessionHost(Protocol):
    """All a session may reach of its engine: configuration, counters, the
    output queues, the timer heap, the byte budget and its own removal.
    (The methods take the session itself, typed ``Any`` to keep this module
    free of an import cycle.)"""

    counters: Dict[str, int]
    buffered: int

    @property
    def cfg(self) -> "EngineConfigLike": ...

    def emit(self, pkt: bytes, dst: bytes) -> None: ...

    def client_add(self, s: Any) -> None: ...

    def schedule(self, s: Any) -> None: ...

    def want_ack(self, s: Any) -> None: ...

    def forget(self, s: Any, now: float) -> None: ...


class EngineConfigLike(Protocol):
    """The configuration fields a session reads (see ``EngineConfig``)."""

    rtt: float
    est_timeout: float
    max_queue: int
    no_wait: bool
    mtu: int
    mss: int
    idle_gap: float
    max_rebuilds: int
    session_timeout: float
    keepalive_timeout: float
