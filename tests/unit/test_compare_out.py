"""tcpcopy --compare: its options (bad values exit 2) and the JSON Lines
writer (batched, rotated by size, the newest files kept)."""

from __future__ import annotations

import json
import logging

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.cli.compare_out import JsonlWriter, online_filter
from pycopy_engine.core.stats import Stats

BASE = ["-x", "80-10.0.0.12:8080", "-s", "10.0.0.13"]


def test_compare_options(tmp_path):
    d = tmp_path / "cmp"
    a = tcli.parse_args(BASE + ["--compare", str(d), "--compare-max-mb", "5",
                                "--compare-keep", "3", "--compare-timeout", "2.5",
                                "--compare-max-endpoints", "50"])
    assert d.is_dir() and (a.compare_max_mb, a.compare_keep, a.compare_timeout) == (5, 3, 2.5)
    assert a.compare_max_endpoints == 50
    assert tcli.parse_args(BASE).compare is None
    assert tcli.parse_args(BASE + ["--compare", str(d)]).compare_max_endpoints == 200


@pytest.mark.parametrize("extra,needle", [
    (["--compare-max-mb", "0"], "--compare-max-mb"),
    (["--compare-keep", "x"], "'x'"),
    (["--compare-timeout", "0"], "--compare-timeout"),
    (["--compare-max-endpoints", "0"],
     "--compare-max-endpoints: invalid value '0': must be 1..100000"),
    (["--compare-max-endpoints", "many"], "--compare-max-endpoints: invalid value 'many'"),
    (["--pcap", "/etc/hostname"], "offline capture file"),
])
def test_bad_compare_values_exit_2(tmp_path, extra, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(BASE + ["--compare", str(tmp_path)] + extra)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_compare_dir_that_is_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(BASE + ["--compare", str(f)])
    assert exc.value.code == 2 and "not a directory" in capsys.readouterr().err


def test_writer_rotates_by_size_and_keeps_the_newest(tmp_path, monkeypatch):
    stamps = iter(range(10**6))
    monkeypatch.setattr("pycopy_engine.cli.compare_out.time.strftime",
                        lambda fmt, t: "20261202-0000%02d" % (next(stamps) % 100))
    w = JsonlWriter(str(tmp_path), max_bytes=1000, keep=3, stats=Stats(),
                    log=logging.getLogger("t"))
    recs = [{"n": i, "pad": "x" * 80} for i in range(60)]
    for k in range(0, 60, 7):
        w.add(recs[k:k + 7])
        w.flush()  # a batch per flush, as the timer does
    w.close()
    files = sorted(tmp_path.glob("compare-*.jsonl"))
    assert len(files) == 3
    got = [json.loads(line)["n"] for f in files for line in f.read_text().splitlines()]
    assert got == list(range(60))[-len(got):] and 0 < len(got) < 60  # the newest, in order
    assert all(f.stat().st_size <= 1000 for f in files)


def test_online_filter_sees_both_directions_but_not_our_copies():
    maps = tcli.parse_maps("80-10.0.0.12:80,10.0.0.11:443-10.0.0.12:8443")
    f = online_filter(maps)
    assert "dst port 80 and not dst host 10.0.0.12" in f
    assert "src port 443 and src host 10.0.0.11" in f
