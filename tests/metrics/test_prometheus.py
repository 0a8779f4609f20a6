"""render_prometheus against a strict 0.0.4 parser, and write_stats_json."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

from pycopy_engine.core.stats import Stats
from pycopy_engine.io.metrics import render_prometheus, write_stats_json

from .promparse import ParseError, parse


def engine_stats() -> Stats:
    s = Stats()
    s.c["sessions_opened"] += 12
    s.c["requests_sent"] += 31
    s.c["bytes_sent"] += 123456789012
    s.c["rst_sent:handshake_timeout"] += 2
    s.c["rst_sent:shutdown"] += 5
    s.c["drop:pure_ack"] += 40
    s.c['drop:we"ird\\re\nason'] += 1
    s.c["weird-name.x"] += 3
    s.add_gauge("control_queue_depth", lambda: 7)
    s.add_gauge("rtt_seconds", lambda: 0.0125)
    s.add_gauge("broken", lambda: 1 / 0)
    return s


def test_counters_gauges_and_reasons_parse_strictly() -> None:
    snap = engine_stats().snapshot()
    text = render_prometheus(
        "pycopy",
        snap,
        gauges=["control_queue_depth", "rtt_seconds", "broken"],
        help_text={"requests_sent": "requests sent to the target\nwith a \\ in it"},
    )
    fams = parse(text)
    assert fams["pycopy_requests_sent_total"]["type"] == "counter"
    assert (
        fams["pycopy_requests_sent_total"]["help"] == "requests sent to the target\nwith a \\ in it"
    )
    assert fams["pycopy_requests_sent_total"]["samples"] == {("pycopy_requests_sent_total", ()): 31}
    assert (
        fams["pycopy_bytes_sent_total"]["samples"][("pycopy_bytes_sent_total", ())] == 123456789012
    )
    rst = fams["pycopy_rst_sent_total"]["samples"]
    assert rst == {
        ("pycopy_rst_sent_total", (("reason", "handshake_timeout"),)): 2,
        ("pycopy_rst_sent_total", (("reason", "shutdown"),)): 5,
    }
    drops = fams["pycopy_drop_total"]["samples"]
    assert drops[("pycopy_drop_total", (("reason", 'we"ird\\re\nason'),))] == 1
    assert drops[("pycopy_drop_total", (("reason", "pure_ack"),))] == 40
    assert fams["pycopy_control_queue_depth"]["type"] == "gauge"
    assert fams["pycopy_control_queue_depth"]["samples"] == {("pycopy_control_queue_depth", ()): 7}
    assert fams["pycopy_rtt_seconds"]["samples"][("pycopy_rtt_seconds", ())] == 0.0125
    assert math.isnan(fams["pycopy_broken"]["samples"][("pycopy_broken", ())])
    assert "pycopy_weird_name_x_total" in fams
    # every family has HELP and TYPE
    assert all(f["type"] and f["help"] for f in fams.values())


def test_empty_snapshot_renders_nothing() -> None:
    assert render_prometheus("p", {}) == ""
    assert parse("") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "a_total 1",  # no final newline
        "# TYPE a counter\na 1\n",  # counter without _total
        'a{reason="x\\q"} 1\n',  # bad escape
        "a 1\nb 1\na 2\n",  # family split
        "a 1\na 1\n",  # duplicate
        "a one\n",  # bad value
        "# TYPE a_total counter\n# TYPE a_total counter\n",
    ],
)
def test_the_strict_parser_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ParseError):
        parse(bad)


def test_stats_json_is_rewritten_atomically(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    snap = engine_stats().snapshot()
    write_stats_json(str(path), snap, {"tool": "tcpcopy", "time": 1.5})
    doc = json.loads(path.read_text())
    assert doc["tool"] == "tcpcopy" and doc["time"] == 1.5
    assert doc["counters"]["rst_sent:shutdown"] == 5
    assert doc["counters"]["broken"] is None  # NaN is not JSON
    assert doc["counters"]["rtt_seconds"] == 0.0125
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    # a reader racing a writer only ever sees complete documents
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(path.read_text())["counters"]["n"])
            except FileNotFoundError:
                bad.append("missing")
            except (json.JSONDecodeError, KeyError) as e:
                bad.append(repr(e))

    write_stats_json(str(path), {"n": 0, "pad:" + "x" * 200: 1}, {})
    t = threading.Thread(target=reader)
    t.start()
    for i in range(1, 400):
        write_stats_json(str(path), {"n": i, **{f"pad:{j}": j for j in range(200)}}, {})
    stop.set()
    t.join()
    assert not bad
    assert seen == sorted(seen) and len(seen) > 0
    assert [p for p in os.listdir(tmp_path) if p != "stats.json"] == []  # no temp files left


def test_stats_json_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_stats_json(str(path), {"n": 1}, {})
    with pytest.raises(TypeError):
        write_stats_json(str(path), {"n": object()}, {})  # type: ignore[dict-item]
    assert json.loads(path.read_text())["counters"]["n"] == 1
    assert os.listdir(tmp_path) == ["stats.json"]


def test_several_named_labels() -> None:
    from pycopy_engine.core.stats import labelled

    s = Stats()
    key = labelled("compare_differences", ("endpoint", 'GET /a,b=c/"{id}"'),
                   ("target", "10.0.0.12:80"), ("kind", "sta\ttus"))
    assert key == 'compare_differences:endpoint=GET /a,b=c/"{id}"\ttarget=10.0.0.12:80\tkind=sta tus'
    s.c[key] += 3
    s.c["compare_differences:not a label\tkind=x"] += 1  # not all named: one reason label
    s.c["compare_differences:kind=a\tkind=b"] += 1  # a label twice: one reason label
    fams = parse(render_prometheus("pycopy_tcpcopy", s.snapshot()))
    samples = fams["pycopy_tcpcopy_compare_differences_total"]["samples"]
    name = "pycopy_tcpcopy_compare_differences_total"
    assert samples == {
        (name, (("endpoint", 'GET /a,b=c/"{id}"'), ("kind", "sta tus"),
                ("target", "10.0.0.12:80"))): 3,
        (name, (("reason", "not a label\tkind=x"),)): 1,
        (name, (("reason", "kind=a\tkind=b"),)): 1,
    }
