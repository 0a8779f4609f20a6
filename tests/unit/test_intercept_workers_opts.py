"""intercept --workers: bad values exit 2 naming the option and the value."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import intercept as icli


@pytest.mark.parametrize("value,why", [("0", "1..64"), ("65", "1..64"), ("-1", "1..64"),
                                       ("two", "invalid literal")])
def test_bad_worker_counts_exit_2(value, why, capsys):
    with pytest.raises(SystemExit) as exc:
        icli.main(["-F", "tcp", "--workers", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "--workers" in err and value in err and why in err, err


def test_one_worker_is_the_default():
    assert icli.build_parser().parse_args(["-F", "tcp"]).workers == 1
