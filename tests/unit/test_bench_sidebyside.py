"""bench/run.py's alternation plan and side-by-side table, on fake measurements."""

from __future__ import annotations

import pytest

from bench.sidebyside import (
    PY,
    C,
    Measure,
    Run,
    plan_runs,
    rate_label,
    render_table,
    summarize,
    switches,
)


def test_plan_alternates_tools_per_point_and_per_repeat():
    runs = plan_runs(["keepalive", "close"], ["1000", "max"], [C, PY], repeats=2)
    assert len(runs) == 2 * 2 * 2 * 2
    pairs = [(r.mode, r.rate, r.tool, r.rep) for r in runs]
    assert pairs[:8] == [
        ("keepalive", "1000", C, 0), ("keepalive", "1000", PY, 0),
        ("keepalive", "max", PY, 0), ("keepalive", "max", C, 0),
        ("close", "1000", C, 0), ("close", "1000", PY, 0),
        ("close", "max", PY, 0), ("close", "max", C, 0),
    ]
    # the second repeat starts the other way round: each point is measured C-first once
    # and pycopy-first once
    assert pairs[8:10] == [("keepalive", "1000", PY, 1), ("keepalive", "1000", C, 1)]
    for point in {(r.mode, r.rate) for r in runs}:
        firsts = [runs[i].tool for i in range(0, len(runs), 2)
                  if (runs[i].mode, runs[i].rate) == point]
        assert sorted(firsts) == [C, PY]
    # neighbouring points share a tool at their boundary: one restart per point, plus one
    # where the second repeat begins
    assert switches(runs) == 9


def test_plan_with_pycopy_alone_is_todays_order_and_never_restarts():
    runs = plan_runs(["keepalive", "close"], ["1000", "5000", "max"], [PY])
    assert [(r.mode, r.rate) for r in runs] == [
        ("keepalive", "1000"), ("keepalive", "5000"), ("keepalive", "max"),
        ("close", "1000"), ("close", "5000"), ("close", "max")]
    assert {r.tool for r in runs} == {PY} and switches(runs) == 0
    assert runs[0] == Run("keepalive", "1000", PY, 0)


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError, match="repeats"):
        plan_runs(["keepalive"], ["max"], [PY], repeats=0)
    with pytest.raises(ValueError, match="no tool"):
        plan_runs(["keepalive"], ["max"], [])


def m(tool, mode="keepalive", rate="1000", achieved=1000.0, online=5000, target=5000,
      tc=10.0, ic=5.0, drops=0):
    return Measure(mode, rate, tool, achieved, online, target, tc, ic, drops)


def test_summary_is_the_median_per_point_and_tool():
    sums = summarize([
        m(C, tc=14.0, ic=7.0, target=4600), m(PY, tc=28.0, ic=10.0, drops=3),
        m(C, tc=16.0, ic=9.0, target=4700), m(PY, tc=30.0, ic=11.0, drops=0),
        m(C, tc=90.0, ic=8.0, target=4650), m(PY, tc=29.0, ic=12.0, drops=1),
    ])
    c, p = sums[("keepalive", "1000")][C], sums[("keepalive", "1000")][PY]
    assert (c.n, c.tcpcopy_us, c.intercept_us) == (3, 16.0, 8.0)  # the outlier does not count
    assert c.fidelity == pytest.approx(0.93)
    assert (p.tcpcopy_us, p.intercept_us, p.fidelity, p.drops) == (29.0, 11.0, 1.0, 3)


def test_side_by_side_table_with_ratios_and_fidelity():
    sums = summarize([
        m(C, tc=14.0, ic=6.9, rate="max", achieved=27_300.0, target=4630),
        m(PY, tc=28.0, ic=10.4, rate="max", achieved=29_100.0, drops=0),
        m(C, mode="close", rate="5000", tc=62.0, ic=26.0),
        m(PY, mode="close", rate="5000", tc=123.0, ic=37.0, drops=12),
    ])
    out = render_table(sums).splitlines()
    assert [c.strip() for c in out[0].split("|")[1:-1]] == [
        "mode", "rate (req/s)", "tcpcopy us/req C -> pycopy", "intercept us/req C -> pycopy",
        "fidelity C -> pycopy", "kernel drops pycopy"]
    assert len({len(ln) for ln in out}) == 1  # columns padded to one width
    assert set(out[1]) == {"|", "-"} and len(out[1]) == len(out[0])
    cells = [c.strip() for c in out[2].split("|")[1:-1]]
    assert cells == ["keep-alive", "max (~27.3k-29.1k)", "14.0 -> 28.0 (2.00x)",
                     "6.9 -> 10.4 (1.51x)", "92.6 % -> 100.0 %", "0"]
    cells = [c.strip() for c in out[3].split("|")[1:-1]]
    assert cells == ["short", "5,000", "62.0 -> 123 (1.98x)", "26.0 -> 37.0 (1.42x)",
                     "100.0 % -> 100.0 %", "12"]
    assert len(out) == 4


def test_side_by_side_with_a_missing_side_or_no_intercept():
    sums = summarize([m(C, tc=14.0), m(PY, rate="max", ic=None, drops=None)])
    out = [[c.strip() for c in ln.split("|")[1:-1]] for ln in render_table(sums).splitlines()]
    assert out[2][2:] == ["14.0 -> -", "5.0 -> -", "100.0 % -> -", "-"]
    assert out[3][1:] == ["max (~1.0k)", "- -> 10.0", "- -> -", "- -> 100.0 %", "-"]


def test_pycopy_alone_table_keeps_todays_columns_plus_fidelity_and_drops():
    sums = summarize([m(PY, tc=58.0, ic=16.1, target=4990, drops=48123)])
    out = render_table(sums).splitlines()
    assert [c.strip() for c in out[0].split("|")[1:-1]] == [
        "mode", "rate (req/s)", "tcpcopy us/req", "intercept us/req", "fidelity",
        "kernel drops"]
    assert [c.strip() for c in out[2].split("|")[1:-1]] == [
        "keep-alive", "1,000", "58.0", "16.1", "99.8 %", "48123"]


def test_rate_label_for_max_uses_the_achieved_range():
    sums = summarize([m(PY, rate="max", achieved=9_300.0), m(PY, rate="max", achieved=9_700.0)])
    assert rate_label("max", list(sums[("keepalive", "max")].values())) == "max (~9.3k-9.7k)"
    assert rate_label("10000", []) == "10,000"
