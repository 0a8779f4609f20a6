"""The C tools' own offline input (391 requests in 2 s) replayed by pycopy:
every request reaches the target at -a 1, at -a 20, and in each of 3 rounds."""

from __future__ import annotations

import pytest

from tests.unit.fixtures import need

from .procs import Proc, intercept

pytestmark = pytest.mark.lab

REQUESTS = 391  # GET requests in offline-input.pcap (its README)


@pytest.mark.parametrize("speed,rounds,shift", [("1", "1", "1"), ("20", "1", "2"), ("5", "3", "3")])
def test_offline_fixture_replays_every_request(lab, workdir, http_servers, speed, rounds, shift):
    pcap = need("offline-input.pcap")
    target = http_servers["target"]
    lab.add_route("target", "10.232.0.10/32", lab.ip["assistant"])  # the file's client
    ic = intercept(lab, workdir, name=f"ic-off{speed}")
    before = len(target.records())
    try:
        # -f: each parametrized run uses other client ports than the earlier runs,
        # whose connections still sit in the target's TIME_WAIT
        p = Proc(lab, "online", "tcpcopy", [
            "-i", str(pcap), "-a", speed, "-T", rounds, "-f", shift,
            "-x", f"10.232.0.11:80-{lab.ip['target']}:80", "-s", lab.ip["assistant"]],
            workdir, f"tc-off{speed}", ready=False)
        assert p.proc.wait(timeout=90) == 0, p.log()[-2000:]
        recs = target.wait_records(before + REQUESTS * int(rounds), 10)[before:]
        assert len(recs) == REQUESTS * int(rounds)
        assert {r["path"] for r in recs} == {"/index.html"}
        assert len({r["client_port"] for r in recs}) == REQUESTS * int(rounds)
        assert "offline replay done: sessions:%d, requests sent:%d" % (
            396 * int(rounds), REQUESTS * int(rounds)) in p.log()
        p.stop()
    finally:
        lab.run("target", ["ip", "route", "del", "10.232.0.10/32"], check=False)
        ic.stop()
