"""Counters shared by every layer.

Counters live in one plain dict so the hot path pays one dict update:
``stats.c["send_packets"] += 1``.  Reason-coded counters are spelled
``"name:reason"`` (``"rst_sent:handshake_timeout"``, ``"drop:pure_ack"``); the
exporters turn the part after the colon into a ``reason`` label
(``"name:label=value"`` into that label; several are joined by tabs, see
``labelled``).  Gauges are callables registered by their owner and read only
when a snapshot is taken.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Tuple


def labelled(name: str, *labels: Tuple[str, str]) -> str:
    """The counter key of ``name`` with these labels, in this order:
    ``labelled("x", ("kind", "status"), ("target", "10.0.0.12:80"))`` is
    ``"x:kind=status\\ttarget=10.0.0.12:80"`` (a tab in a value becomes a space)."""
    return name + ":" + "\t".join("%s=%s" % (k, v.replace("\t", " ")) for k, v in labels)


class Stats:
    __slots__ = ("c", "gauges")

    def __init__(self) -> None:
        self.c: Dict[str, int] = defaultdict(int)
        self.gauges: Dict[str, Callable[[], float]] = {}

    def inc(self, key: str, n: int = 1) -> None:
        self.c[key] += n

    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def get(self, key: str) -> int:
        return self.c.get(key, 0)

    def by_reason(self, name: str) -> Dict[str, int]:
        """All ``name:reason`` counters as {reason: value}."""
        prefix = name + ":"
        return {k[len(prefix):]: v for k, v in self.c.items() if k.startswith(prefix)}

    def snapshot(self) -> Dict[str, float]:
        snap: Dict[str, float] = dict(self.c)
        for name, read in self.gauges.items():
            try:
                snap[name] = read()
            except Exception:  # a broken gauge must not stop statistics
                snap[name] = float("nan")
        return snap
