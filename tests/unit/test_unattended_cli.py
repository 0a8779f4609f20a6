"""tcpcopy's issue-12 options: defaults, values, and bad values exiting 2 with
the option and the value named."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.core.brake import BrakeConfig
from pycopy_engine.core.delay import DelaySpec

BASE = ["-x", "80-10.0.0.12:8080", "-s", "10.0.0.13"]


def test_defaults_brake_on_no_delay():
    a = tcli.parse_args(BASE)
    assert not a.no_brake and a.delay is None and a.health_window == 60
    assert a.brake_cfg == BrakeConfig()
    assert a.brake_cfg.window <= 3.0  # the issue: a window of at most 3 s by default


def test_values():
    a = tcli.parse_args(BASE + ["--no-brake", "--brake-window", "2", "--brake-failures", "9",
                                "--brake-ratio", "0.5", "--brake-synack-wait", "0.25",
                                "--brake-probe-max", "6", "--delay", "50ms:10ms",
                                "--health-window", "300"])
    assert a.no_brake and a.health_window == 300
    assert a.brake_cfg == BrakeConfig(2.0, 9, 0.5, 0.25, probe_max=6.0)
    assert a.delay == DelaySpec(0.05, 0.01)
    assert tcli.parse_args(BASE + ["--delay", "rtt"]).delay == DelaySpec(rtt=True)


@pytest.mark.parametrize("argv,needles", [
    (["--delay", "50"], ["--delay", "'50'", "unit"]),
    (["--delay", "10ms:20ms"], ["--delay", "larger than"]),
    (["--brake-ratio", "1.5"], ["--brake-ratio", "1.5"]),
    (["--brake-window", "0"], ["--brake-window", "'0'"]),
    (["--brake-synack-wait", "5"], ["--brake-synack-wait", "5"]),
    (["--brake-failures", "0"], ["--brake-failures", "'0'"]),
    (["--health-window", "0"], ["--health-window", "'0'"]),
])
def test_bad_values_exit_2_naming_option_and_value(argv, needles, capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(BASE + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
