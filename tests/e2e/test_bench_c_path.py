"""bench/run.py's C path (PYCOPY_C_TOOLS) end to end in its own lab, with
stand-ins for the C binaries: scripts that record their command line, print
the line the C tool logs when ready and run pycopy's tool with the same
options.  This checks the plumbing (the C command lines, readiness, the
alternation, restarts at each switch, the side-by-side table), not C's
figures: the real C tools are not available here.  Nothing about timing is
asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.netns import cleanup_prefix, lab_unavailable, new_lab_prefix

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]

FAKE = """#!/bin/sh
# stand-in for the C {prog}: record the options, log the C ready line, run pycopy's
echo "$@" >> {argv_log}
log=""; prev=""
for a in "$@"; do [ "$prev" = "-l" ] && log="$a"; prev="$a"; done
echo "{ready}" >> "$log"
exec {python} -m pycopy_engine.cli.{prog} "$@"
"""


def _fake_tools(d: Path) -> None:
    for prog, ready in (("tcpcopy", "connect to remote server (stand-in)"),
                        ("intercept", "pcap_set_buffer_size (stand-in)")):
        p = d / prog
        p.write_text(FAKE.format(prog=prog, ready=ready, python=sys.executable,
                                 argv_log=d / f"{prog}.argv"))
        p.chmod(0o755)


def test_bench_alternates_c_and_pycopy_and_prints_the_side_by_side_table(tmp_path):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    _fake_tools(tmp_path)
    prefix, subnet = new_lab_prefix()
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYCOPY_C_TOOLS=str(tmp_path))
    try:
        r = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "run.py"), "--rates", "max", "--modes",
             "keepalive", "--duration", "1", "--prefix", prefix, "--subnet", subnet,
             "--json", str(out)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        cleanup_prefix(prefix)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    # --repeats defaults to 2 with C: C first, then pycopy first
    assert [row["tool"] for row in rows] == ["c", "pycopy", "pycopy", "c"]
    for row in rows:
        assert row["online"] > 0 and row["tcpcopy_us"] > 0 and row["intercept_us"] > 0
    assert [row["kernel_drops"] is None for row in rows] == [True, False, False, True]
    # the C tools were started as in tests/e2e/test_interop_c.py, once per switch
    t, a = f"{subnet}.12", f"{subnet}.13"
    tc_argv = (tmp_path / "tcpcopy.argv").read_text().splitlines()
    ic_argv = (tmp_path / "intercept.argv").read_text().splitlines()
    assert len(tc_argv) == len(ic_argv) == 2
    assert all(line.startswith(f"-x 80-{t}:80 -s {a} -l ") for line in tc_argv)
    assert all(line.startswith("-i eth0 -F tcp and src port 80 -l ") for line in ic_argv)
    table = r.stdout[r.stdout.index("medians of 2 run(s)"):].splitlines()
    assert "tcpcopy us/req C -> pycopy" in table[1] and "fidelity C -> pycopy" in table[1]
    assert table[3].startswith("| keep-alive | max (~") and table[3].count("->") == 3
