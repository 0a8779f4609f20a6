"""Merging the statistics of several worker processes into one (``--workers``), sans-IO.

Every worker keeps its own :class:`~pycopy_engine.core.stats.Stats`; the
supervisor holds the last snapshot of each and shows one merged snapshot: a
key (``name`` or ``name:labels``) present in several workers is combined by
the rule of its name (the part before the colon):

* ``sum`` (the default): counters, and gauges that count things each worker
  has its own of (sessions, buffered bytes, links, kernel drops, RSS, ...);
* ``max``: a flag that is up when any worker's is (``brake_engaged``);
* ``min``: a ratio where the worst worker is the figure to alert on
  (``health_replication``);
* ``cap``: a bound where -1 means "none": -1 when any worker has none, the
  sum otherwise (``session_cap``).

A key missing from a worker counts as absent, not as zero (so a ``min`` is
taken over the workers that have the key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

RULES = ("sum", "max", "min", "cap")


def _combine(rule: str, values: list[float]) -> float:
    if rule == "max":
        return max(values)
    if rule == "min":
        return min(values)
    if rule == "cap":
        return -1 if any(v < 0 for v in values) else sum(values)
    return sum(values)


def merge_snapshots(
    snapshots: Iterable[Mapping[str, float]], rules: Mapping[str, str] | None = None
) -> dict[str, float]:
    """One snapshot from several: each key combined by ``rules[name]`` (``sum``
    when the name has no rule)."""
    rules = rules or {}
    for name, rule in rules.items():
        if rule not in RULES:
            raise ValueError(f"merge rule for {name!r} must be one of {RULES}, not {rule!r}")
    values: dict[str, list[float]] = {}
    for snap in snapshots:
        for key, value in snap.items():
            values.setdefault(key, []).append(value)
    return {
        key: _combine(rules.get(key.partition(":")[0], "sum"), vals)
        for key, vals in values.items()
    }
