"""Python 3.9 (``requires-python >= 3.9``: RHEL 8's python39, RHEL 9's
python3): the engine imports and replicates there too.  The 3.9 here is PyPy
3.9, Debian's ``pypy3`` (no CPython 3.9 in Debian 12), with Debian's
``python3-scapy`` for the filters; scripts/install-deps.sh installs both.
A ``dataclass(slots=True)`` (3.10) once made tcpcopy fail at import on 3.9."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab.netns import REPO_ROOT
from tests.lab.services import run_client

from .procs import Proc, intercept

pytestmark = pytest.mark.lab


def _python39() -> str:
    exe = shutil.which("pypy3")
    if exe is None:
        pytest.skip("no Python 3.9 here (pypy3: scripts/install-deps.sh installs it)")
    r = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "(3, 9)", r.stdout + r.stderr
    return exe


def test_every_engine_module_imports_on_python39():
    exe = _python39()
    mods = sorted(
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in Path(REPO_ROOT, "pycopy_engine").rglob("*.py"))
    assert len(mods) > 50
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    r = subprocess.run([exe, "-c", code, *mods], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for prog in ("tcpcopy", "intercept"):
        r = subprocess.run([exe, "-m", f"pycopy_engine.cli.{prog}", "--help"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]


def test_replication_on_python39(lab, http_servers, workdir, logs):
    exe = _python39()
    ic = intercept(lab, workdir, name="ic-py39", python=exe)
    o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
    # -i: the AF_PACKET ring (ctypes, mmap) too
    tc = Proc(lab, "online", "tcpcopy", ["-x", f"{o}:80-{t}:80", "-s", a, "-i", "eth0"], workdir,
              "tc-py39", python=exe)
    try:
        ka = run_client(lab, requests=150, connections=3, mode="keepalive", tag="py39k")
        sc = run_client(lab, requests=50, connections=2, mode="close", tag="py39c")
        assert ka["ok"] == 150 and sc["ok"] == 50, (ka["errors"], sc["errors"])
        got = {r["path"] for r in logs("target", 200, timeout=30) if "/py39" in r["path"]}
    finally:
        tc.stop()
        ic.stop()
    assert len(got) == 200, (len(got), tc.log()[-2000:])
    assert tc.stats().get("capture_kernel_drops", 0) == 0
