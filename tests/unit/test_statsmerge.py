"""Merging the workers' statistics (core/statsmerge.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycopy_engine.core.statsmerge import merge_snapshots

keys = st.sampled_from(["requests_sent", "drop:pure_ack", "brake_engaged:target=a",
                        "health_replication:target=a", "session_cap", "sessions_active"])
snaps = st.lists(st.dictionaries(keys, st.integers(-1, 10**9), max_size=6), max_size=5)
RULES = {"brake_engaged": "max", "health_replication": "min", "session_cap": "cap"}


@given(snaps)
def test_each_key_follows_its_rule_over_the_workers_that_have_it(workers):
    merged = merge_snapshots(workers, RULES)
    assert set(merged) == {k for w in workers for k in w}
    for key, value in merged.items():
        vals = [w[key] for w in workers if key in w]
        name = key.partition(":")[0]
        if name == "brake_engaged":
            assert value == max(vals)
        elif name == "health_replication":
            assert value == min(vals)
        elif name == "session_cap":
            assert value == (-1 if min(vals) < 0 else sum(vals))
        else:
            assert value == sum(vals)


def test_examples():
    a = {"requests_sent": 5, "drop:pure_ack": 2, "brake_engaged:target=t": 0, "session_cap": -1}
    b = {"requests_sent": 7, "brake_engaged:target=t": 1, "session_cap": 100}
    assert merge_snapshots([a, b], RULES) == {
        "requests_sent": 12, "drop:pure_ack": 2, "brake_engaged:target=t": 1, "session_cap": -1}
    assert merge_snapshots([{"session_cap": 10}, {"session_cap": 20}], RULES) == {"session_cap": 30}
    assert merge_snapshots([]) == {}


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="'avg'"):
        merge_snapshots([{"x": 1}], {"x": "avg"})
