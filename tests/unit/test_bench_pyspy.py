"""bench/pyspy.py: py-spy's collapsed stacks turned into self and inclusive shares."""

from __future__ import annotations

from pathlib import Path

from bench.pyspy import frame_name, parse, top

RAW = """\
<module> (/opt/x/pycopy_engine/cli/tcpcopy.py:10);run (/opt/x/pycopy_engine/io/loop.py:240);send (/opt/x/pycopy_engine/io/rawsend.py:70) 30
<module> (/opt/x/pycopy_engine/cli/tcpcopy.py:10);run (/opt/x/pycopy_engine/io/loop.py:240);select (/usr/lib/python3.11/selectors.py:468) 10
<module> (/opt/x/pycopy_engine/cli/tcpcopy.py:10);run (/opt/x/pycopy_engine/io/loop.py:241);run (/opt/x/pycopy_engine/io/loop.py:240) 5
not a stack line
"""


def test_frame_names_are_short_and_line_free():
    assert frame_name("send (/opt/x/pycopy_engine/io/rawsend.py:70)") == "io/rawsend.py:send"
    assert frame_name("select (/usr/lib/python3.11/selectors.py:468)") == "stdlib:select"
    assert frame_name("process 12 \"python3\"") == "process 12 \"python3\""


def test_self_counts_the_innermost_frame_and_inclusive_each_function_once_per_sample():
    own, incl, total = parse(RAW)
    assert total == 45
    assert own["io/rawsend.py:send"] == 30
    assert own["stdlib:select"] == 10
    assert own["io/loop.py:run"] == 5
    # run appears twice on the last stack: counted once for its 5 samples
    assert incl["io/loop.py:run"] == 45
    assert incl["cli/tcpcopy.py:<module>"] == 45


def test_top_prints_shares_of_all_samples(tmp_path: Path):
    f = tmp_path / "p.txt"
    f.write_text(RAW)
    text = top(f, 3)
    assert text.splitlines()[0] == "p.txt: 45 samples"
    assert "66.7%  io/rawsend.py:send" in text
    assert "100.0%  io/loop.py:run" in text or "100.0%  cli/tcpcopy.py:<module>" in text
    assert top(tmp_path / "absent.txt") == "absent.txt: no profile written"
