"""core/compare_count.py: the live difference counters of ``tcpcopy --compare``
(per endpoint, target and kind, against online, no noise cancellation)."""

from __future__ import annotations

import copy
import random

import pytest

from pycopy_engine.compare.analysis import differences
from pycopy_engine.core.compare_count import DiffCounter, fields_differ
from pycopy_engine.core.stats import Stats, labelled

from .compare_data import BASELINE, CANDIDATE, records

T = "10.0.0.12:80"


def ans(status=200, fields=None, size=10, digest="d1", last=10.0, headers=None, **kw):
    a = {"status": status, "headers": headers or {"content-type": "application/json"},
         "size": size, "digest": digest, "first": last / 2, "last": last}
    if fields is not None:
        a["fields"] = fields
    a.update(kw)
    return a


def rec(path, online, targets, method="GET", proto="http"):
    answers = {"online": online}
    answers.update(targets)
    return {"t": 1.0, "flow": "10.0.0.10:4000", "n": 0, "proto": proto,
            "req": {"method": method, "path": path, "size": 40, "digest": "r"},
            "answers": answers}


def diffs(stats):
    """{(endpoint, target, kind): n} of the non-zero difference counters."""
    out = {}
    for k, v in stats.c.items():
        if k.startswith("compare_differences:") and v:
            labels = dict(p.split("=", 1) for p in k.partition(":")[2].split("\t"))
            out[(labels["endpoint"], labels["target"], labels["kind"])] = v
    return out


def answers_count(stats, ep, target):
    return stats.c.get(labelled("compare_answers", ("endpoint", ep), ("target", target)), 0)


def count(*recs, max_endpoints=200):
    s = Stats()
    d = DiffCounter(s, max_endpoints)
    for r in recs:
        d.count(r)
    return s, d


FIELDS = {"id": 7, "name": "x", "ok": True}


@pytest.mark.parametrize("target, kinds", [
    (ans(fields=dict(FIELDS)), set()),
    (ans(404, fields=dict(FIELDS)), {"status"}),
    (None, {"status"}),  # no answer is a status of its own
    ({"error": "reset"}, {"status"}),
    (ans(fields=dict(FIELDS, name="y")), {"field"}),
    (ans(fields=dict(FIELDS, ok=1)), {"field"}),  # JSON true is not 1
    (ans(fields={"id": 7, "name": "x"}), {"field"}),  # a field missing
    (ans(fields=dict(FIELDS), headers={"content-type": "text/json"}), {"field"}),
    # a JSON body's size and digest are not compared (its fields are)...
    (ans(fields=dict(FIELDS), size=11, digest="d2"), set()),
    # ...unless its fields were truncated
    (ans(fields=dict(FIELDS), size=11, fields_truncated=True), {"size"}),
    (ans(fields=dict(FIELDS), digest="d2", fields_truncated=True), {"body"}),
    # latency: max(20 % of online's 10 ms, 5 ms) = 5 ms, either direction
    (ans(fields=dict(FIELDS), last=15.0), set()),
    (ans(fields=dict(FIELDS), last=15.1), {"latency"}),
    (ans(fields=dict(FIELDS), last=4.9), {"latency"}),
    (ans(500, last=40.0), {"status", "latency"}),  # latency is judged with any status
])
def test_each_kind_against_a_json_online_answer(target, kinds):
    s, _ = count(rec("/users/42", ans(fields=dict(FIELDS)), {T: target}))
    assert set(k for (_, _, k) in diffs(s)) == kinds
    assert all(ep == "GET /users/{id}" and t == T for (ep, t, _) in diffs(s))
    assert all(v == 1 for v in diffs(s).values())
    assert answers_count(s, "GET /users/{id}", T) == 1


@pytest.mark.parametrize("target, kinds", [
    (ans(size=10, digest="d1"), set()),
    (ans(size=12, digest="d2"), {"size"}),  # sizes differ: the digest is not looked at
    (ans(size=10, digest="d2"), {"body"}),
    (ans(size=10, digest="d1", headers={"content-type": "x"}), set()),  # headers: JSON only
])
def test_size_then_body_for_other_answers(target, kinds):
    s, _ = count(rec("/logo.png", ans(size=10, digest="d1"), {T: target}))
    assert set(k for (_, _, k) in diffs(s)) == kinds


def test_latency_threshold_is_20_percent_above_25_ms():
    on = ans(size=1, last=100.0)
    s, _ = count(rec("/a", on, {"a:1": ans(size=1, last=119.9), "b:1": ans(size=1, last=120.5),
                                "c:1": ans(size=1, last=79.0)}))
    assert diffs(s) == {("GET /a", "b:1", "latency"): 1, ("GET /a", "c:1", "latency"): 1}


def test_tcp_records_compare_size_and_digest():
    on = {"size": 10, "digest": "a", "first": 1.0, "last": 2.0}
    s, _ = count(rec(None, on, {"a:1": dict(on, digest="b"), "b:1": dict(on, size=3),
                                "c:1": None}, method=None, proto="tcp"))
    assert diffs(s) == {("tcp", "a:1", "body"): 1, ("tcp", "b:1", "size"): 1,
                        ("tcp", "c:1", "status"): 1}


def test_no_usable_online_answer_counts_nothing():
    for on in (None, {"error": "timeout"}, {"status": 200}):
        s, _ = count(rec("/a", on, {T: ans()}))
        assert not diffs(s) and answers_count(s, "GET /a", T) == 0


def test_counts_add_up_per_endpoint_and_target():
    on = ans(fields=dict(FIELDS))
    recs = [rec("/users/%d" % i, on, {T: ans(500 if i % 3 == 0 else 200, fields=dict(FIELDS)),
                                      "10.0.0.14:80": ans(fields=dict(FIELDS))})
            for i in range(30)]
    recs += [rec("/orders/%d" % i, on, {T: ans(fields=dict(FIELDS))}) for i in range(5)]
    s, _ = count(*recs)
    assert diffs(s) == {("GET /users/{id}", T, "status"): 10}
    assert answers_count(s, "GET /users/{id}", T) == 30
    assert answers_count(s, "GET /users/{id}", "10.0.0.14:80") == 30
    assert answers_count(s, "GET /orders/{id}", T) == 5


def test_endpoints_are_normalised():
    on = ans(size=1)
    paths = ["/users/42?x=1", "/users/43", "/users/1b4e28ba-2fa1-11d2-883f-0016d3cca427",
             "/users/0123abcdEF#f", "http://h.test/users/9"]
    s, d = count(*[rec(p, on, {T: ans(size=2)}) for p in paths],
                 rec("/users/abc", on, {T: ans(size=2)}), rec("/users/1", on, {T: ans(size=2)},
                                                             method="POST"))
    assert diffs(s) == {("GET /users/{id}", T, "size"): 5, ("GET /users/abc", T, "size"): 1,
                        ("POST /users/{id}", T, "size"): 1}
    # a control character would break the key and the exposition line: percent-encoded
    assert d.endpoint(rec("/a\tb\n", on, {})) == "GET /a%09b%0A"


def test_endpoints_beyond_the_limit_are_other_and_the_overflow_is_counted():
    on = ans(size=1)
    paths = ["/a", "/b", "/c/1", "/c/2", "/d", "/a", "/e", "/d", "/b"]
    s, d = count(*[rec(p, on, {T: ans(size=2)}) for p in paths], max_endpoints=3)
    assert diffs(s) == {("GET /a", T, "size"): 2, ("GET /b", T, "size"): 2,
                        ("GET /c/{id}", T, "size"): 2, ("other", T, "size"): 3}
    assert answers_count(s, "other", T) == 3
    assert s.c["compare_endpoints_overflowed"] == 2  # /d and /e, each once
    assert len(d.keys) == 4  # key strings cached per named endpoint and target only


def test_overflow_counter_is_exported_from_the_start():
    s, _ = count()
    assert s.c["compare_endpoints_overflowed"] == 0 and "compare_endpoints_overflowed" in s.c


def test_same_kinds_as_the_report():
    """Every record of the report's synthetic corpus (noise, planted regressions):
    the kinds counted are the kinds pycopy-compare finds, answer by answer."""
    recs = records(30)
    rng = random.Random(3)
    for r in recs[::7]:  # and some booleans against numbers, some truncated bodies
        for a in r["answers"].values():
            if a and "fields" in a and rng.random() < 0.5:
                a["fields"] = dict(a["fields"], flag=rng.choice([True, 1, 1.0, False, 0]))
            if a and rng.random() < 0.2:
                a["fields_truncated"] = True
    for r in recs:
        s, _ = count(copy.deepcopy(r))
        on = r["answers"]["online"]
        for t in (BASELINE, CANDIDATE):
            want = {k for k, *_ in differences(on, r["answers"][t])}
            got = {k for (_, tt, k) in diffs(s) if tt == t and k != "latency"}
            assert got == want, (r, t)


def test_fields_differ_orders_and_types():
    assert not fields_differ({"a": 1, "b": True}, {"b": True, "a": 1})  # key order is no difference
    assert fields_differ({"a": 1, "b": True}, {"b": 1, "a": 1})
    assert not fields_differ({"a": 1}, {"a": 1.0})  # as the report: 1 == 1.0
    assert fields_differ({"a": None}, {})


def test_wired_into_the_comparer_and_exported():
    from pycopy_engine.cli.statsout import GAUGES, HELP
    from pycopy_engine.io.metrics import render_prometheus

    from .test_compare_join import World, run_exchange

    w = World()
    now = run_exchange(w, target_status=(200, 404, 200))
    w.cmp.on_timer(now)
    assert len(w.cmp.take_records()) == 3
    text = render_prometheus("pycopy_tcpcopy", w.stats.snapshot(), GAUGES, HELP)
    lab = 'endpoint="GET /users/{id}",target="10.1.0.12:8080"'
    assert 'pycopy_tcpcopy_compare_differences_total{%s,kind="status"} 1\n' % lab in text
    assert "pycopy_tcpcopy_compare_answers_total{%s} 3\n" % lab in text
    assert "pycopy_tcpcopy_compare_endpoints_overflowed_total 0\n" in text
    assert "no noise cancellation" in text  # the HELP line says what they are
