"""The control links between the real processes: -L re-registers live sessions
once per reconnect, a refused link backs off, and intercept's --secret-file
refuses a replayed proof and a proof from a clock too far off."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.lab.services import logged_keys, sent_keys

from .procs import Proc, intercept, tcpcopy

pytestmark = pytest.mark.lab


def wait_for(pred, timeout: float = 20.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


def test_intercept_restart_reregisters_each_live_session_once_per_link(lab, workdir, logs):
    """Four keep-alive clients talk across an intercept restart (tcpcopy -L, -C 2).
    Each of the two reconnected links carries exactly one CLIENT_ADD per live
    session (counted by tcpcopy and, independently, by the new intercept), and
    the clients' later requests are replicated whole."""
    ic = intercept(lab, workdir, name="ic-rereg1")
    tc = tcpcopy(lab, workdir, extra=["-L"], name="tc-rereg")
    out = Path(workdir) / "rereg.json"
    ka = lab.popen("client", [
        sys.executable, "-m", "tests.lab.client", "--host", lab.ip["online"], "--requests",
        "160", "--connections", "4", "--mode", "keepalive", "--delay", "0.25", "--tag", "rereg",
        "--out", str(out)])
    try:
        assert wait_for(lambda: tc.stats().get("sessions_active") == 4
                        and tc.stats().get("requests_sent", 0) >= 8), tc.stats()
        ic.stop()
        assert tc.wait_stat("control_lost", 2, timeout=10) >= 2
        assert tc.proc.poll() is None
        assert tc.stats()["sessions_active"] == 4  # the sessions live on without intercept
        ic = intercept(lab, workdir, name="ic-rereg2")
        assert tc.wait_stat("control_reconnects", 2, timeout=30) >= 2
        time.sleep(1.0)  # nothing more may come
        st, ist = tc.stats(), ic.stats()
        assert st["control_reconnects"] == 2
        assert st["control_reregistered"] == 2 * 4, st  # 4 live sessions, once per link
        # the new intercept received exactly those: 4 routes, each added by both links
        assert ist["route_add"] == 8 and ist.get("route_replaced", 0) == 4, ist
        assert ka.wait(timeout=120) == 0
        res = json.loads(out.read_text())
        assert res["ok"] == 160
        got = logs("target", 160)
        assert logged_keys([r for r in got if "/rereg/" in r["path"]]) == sent_keys(res)
        assert tc.stats()["control_reregistered"] == 8  # and no second round later
    finally:
        lab.stop(ka)
        tc.stop()
        ic.stop()


def test_a_refused_link_backs_off_and_says_why_once(lab, workdir):
    """intercept --allow does not list online: with -L, tcpcopy's two links are
    accepted and closed at once, again and again.  In 9 s they try at 0, 0.5,
    1.5, 3.5 and 7.5 s (5 times each, 10 in all) instead of 18 times each, and
    the reason is logged once per link."""
    ic = intercept(lab, workdir, extra=["--allow", "10.99.0.0/16"], name="ic-refuse")
    tc = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80", "-s",
                                         lab.ip["assistant"], "-L"], workdir, "tc-refuse",
              ready=False)
    try:
        assert ic.wait_stat("control_refused:not_allowed", 2, timeout=20) >= 2
        t0 = time.monotonic()
        n0 = ic.stats().get("control_refused:not_allowed", 0)
        time.sleep(9.0)
        n = ic.stats().get("control_refused:not_allowed", 0) - n0
        elapsed = time.monotonic() - t0
        assert tc.proc.poll() is None  # -L: still running
        assert 2 <= n <= 10, (n, elapsed)
        log = tc.log()
        refused = [x for x in log.splitlines() if "refused: closed before the link was usable" in x]
        assert len(refused) == 2, log[-3000:]  # once per link, not once per attempt
        assert "backing off up to 5s" in refused[0]
    finally:
        tc.stop()
        ic.stop()


PROVER = """
import socket, sys, time
sys.path.insert(0, ".")
from pycopy_engine.wire.control import HELLO, encode_auth, encode_client_add
secret = open(sys.argv[2], "rb").read().strip()
skew_ms = int(sys.argv[3])
proof = encode_auth(secret, int(time.time() * 1000) + skew_ms, b"pbnonce1")
add = encode_client_add(socket.inet_aton("10.9.9.9"), 4000, socket.inet_aton("10.9.9.8"), 80)
for attempt in range(int(sys.argv[4])):   # the same proof, sent on new connections
    s = socket.create_connection((sys.argv[1], 36524), timeout=5)
    s.sendall(HELLO + proof + add)
    s.settimeout(5)
    try:
        closed = s.recv(1) == b""
    except socket.timeout:
        closed = False
    except OSError:
        closed = True
    print("closed" if closed else "open", flush=True)
    s.close()
"""


@pytest.fixture()
def secret_intercept(lab, workdir):
    secret = Path(workdir) / "secret-proof"
    secret.write_text("correct horse battery staple\n")
    prover = Path(workdir) / "prover.py"
    prover.write_text(PROVER)
    ic = intercept(lab, workdir, extra=["--secret-file", str(secret)], name="ic-proof")

    def prove(skew_ms: int, times: int) -> list:
        r = lab.run("online", [sys.executable, str(prover), lab.ip["assistant"], str(secret),
                               str(skew_ms), str(times)], timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    yield ic, prove
    ic.stop()


def test_secret_replayed_proof_is_refused(secret_intercept):
    ic, prove = secret_intercept
    # the first use of a proof is accepted (the connection stays open), its replay is not
    assert prove(0, 2) == ["open", "closed"]
    assert ic.wait_stat("control_refused:auth", 1) == 1
    log = ic.log()
    assert log.count("replayed authentication record") == 1, log[-2000:]


@pytest.mark.parametrize("skew_s", [-400, 400])
def test_secret_proof_from_a_skewed_clock_is_refused(secret_intercept, skew_s):
    """A valid HMAC made 400 s in the past or the future (the window is 300 s)."""
    ic, prove = secret_intercept
    assert prove(skew_s * 1000, 1) == ["closed"]
    assert ic.wait_stat("control_refused:auth", 1) == 1
    expect = "clocks %d s apart" % -skew_s
    assert any(expect in x for x in ic.log().splitlines()), ic.log()[-2000:]
    assert prove(0, 1) == ["open"]  # the same secret with the clock right is accepted

