"""tcpcopy --workers: what it accepts, and exit 2 naming the option for what it cannot do."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.cli.tcpcopy_workers import worker_args, worker_config

BASE = ["-x", "80-127.0.0.2:8080", "-s", "127.0.0.3"]


def _exit2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_default_is_one_process():
    a = tcli.parse_args(BASE)
    assert a.workers == 1


def test_workers_need_the_af_packet_capture(capsys):
    err = _exit2(BASE + ["--workers", "2"], capsys)
    assert "option --workers: invalid value 2 without -i" in err and "PACKET_FANOUT" in err
    a = tcli.parse_args(BASE + ["--workers", "2", "-i", "lo"])
    assert a.workers == 2 and a.iface == "lo"


@pytest.mark.parametrize("value", ["0", "65", "x"])
def test_bad_counts(value, capsys):
    err = _exit2(BASE + ["-i", "lo", "--workers", value], capsys)
    assert "--workers" in err and repr(value) in err


def test_compare_and_no_assistant_are_refused(tmp_path, capsys):
    err = _exit2(BASE + ["-i", "lo", "--workers", "2", "--compare", str(tmp_path)], capsys)
    assert "option --workers: invalid value 2 with --compare" in err
    err = _exit2(["-x", "80-127.0.0.2:8080", "--no-assistant", "-c", "127.0.0.1", "-i", "lo",
                  "--workers", "3"], capsys)
    assert "option --workers: invalid value 3 with --no-assistant" in err


def test_offline_file_with_workers(tmp_path):
    f = tmp_path / "x.pcap"
    f.write_bytes(b"")
    a = tcli.parse_args(BASE + ["-i", str(f), "--workers", "2"])
    assert a.offline_file == str(f) and a.iface is None and a.workers == 2


def test_a_worker_gets_its_share_and_no_outputs_of_its_own():
    a = tcli.parse_args(BASE + ["-i", "lo", "--workers", "4", "-m", "400", "--metrics",
                                "127.0.0.1:9", "--stats-json", "/tmp/s.json", "-P", "/tmp/p"])
    w = worker_args(a, 2, 4, 77)
    assert (w.metrics, w.stats_json, w.pidfile) == (None, None, None)
    assert w.worker == (2, 4) and w.fanout_group == 77 and a.metrics == "127.0.0.1:9"
    cfg = worker_config(tcli.make_config(a), 2, 4)
    assert cfg.worker == (2, 4) and cfg.mem_limit == 100 << 20
