"""``tcpcopy --tee``: every captured session copied to every target whose ``-x``
map matches (sans-IO).

Without ``--tee`` the first matching map wins, as in C.  With it, a new
session gets, for each matching target *j* (in ``-x`` order, one per target)
and each ``-n`` copy *i*, its own replayed session: copy number ``j*n + i``.
The copy number shifts the client port exactly as ``-n`` does
(``AddressMapper.preferred_port``), so every copy of a session has its own
client port; the ``-c`` address is chosen by *i* alone, so every target sees
a session's copy *i* from the same address.  A client ip:port is free for a
copy only if no live session to *any* target uses it: an intercept that keys
its routes without the target (C's ``--dnat`` builds) could not tell two
targets' copies apart.

Each copy is a separate ``Session`` (own state, own queue of captured
packets, paced by its own target's answers), so a slow or dead target never
holds the others back.  Sampling (``-r``/``-g``) is decided once per captured
session, before the copies are made: every target gets the same sessions.
The brake admits or refuses each target on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Tuple

from .mapping import Key, TargetMap, find_maps

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


class Tee:
    def __init__(self, engine: "Engine") -> None:
        self.e = engine
        self.targets = sorted({(m.target_ip, m.target_port) for m in engine.cfg.maps})

    def maps(self, seg: Any) -> List[TargetMap]:
        """The maps a captured segment is copied to: one per target, in -x order
        (never back to the target it came from)."""
        return [m for m in find_maps(self.e.cfg.maps, seg.dst, seg.dport)
                if not (seg.src == m.target_ip and seg.sport == m.target_port)]

    def copies(self, seg: Any, now: float) -> List[Tuple[TargetMap, int, int]]:
        """(map, copy number, -n copy) of every copy of a new session; targets the
        brake refuses are left out (the engine's ``admit`` counts them)."""
        e = self.e
        n = e.cfg.replicas
        out: List[Tuple[TargetMap, int, int]] = []
        for j, m in enumerate(self.maps(seg)):
            if e.brake is not None and not e.brake.admit(m, now):  # brake hook
                continue
            out.extend((m, j * n + i, i) for i in range(n))
        return out

    def in_use(self, key: Key) -> bool:
        """Is this client ip:port used by a live session to any target?"""
        sessions = self.e.sessions
        cip, cport = key[0], key[1]
        return any((cip, cport, t[0], t[1]) in sessions for t in self.targets)
