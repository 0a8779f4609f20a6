"""The lab itself: topology, clean-up after a crash, the HTTP server and client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netns import (
    REGISTRY,
    Lab,
    LabError,
    _netns_list,
    cleanup_prefix,
    lab_unavailable,
    new_lab_prefix,
    reap_orphans,
)
from tests.lab.services import HttpServerProc, logged_keys, run_client, sent_keys

pytestmark = pytest.mark.lab


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def test_topology(lab):
    assert sorted(lab.ns.values()) == sorted(n for n in _netns_list() if n.startswith(lab.prefix))
    for host, octet in (("client", 10), ("online", 11), ("target", 12), ("assistant", 13)):
        addrs = lab.run(host, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{lab.subnet}.{octet}/24" in addrs
        assert "UP" in lab.run(host, ["ip", "-o", "link", "show", "lo"]).stdout
    routes = lab.run("target", ["ip", "route"]).stdout
    assert f"{lab.ip['client']} via {lab.ip['assistant']}" in routes
    for key in ("all", "default", "eth0"):
        assert lab.read_sysctl("target", f"net.ipv4.conf.{key}.rp_filter") == "0"
    assert lab.read_sysctl("assistant", "net.ipv4.ip_forward") == "0"
    assert f"{lab.prefix}br" in _links()
    assert all(len(n) <= 15 for n in (lab.bridge, f"{lab.prefix}-ass"))


def test_extra_client_range(lab, http_servers):
    """A fake client range routed via the assistant on target: the target's
    answers to it go to the assistant like those to the real client."""
    fake = f"{lab.subnet}.200"
    lab.add_address("client", f"{fake}/24")
    lab.add_route("target", f"{lab.subnet}.128/25", lab.ip["assistant"])
    got = lab.run("target", ["ip", "route", "get", fake]).stdout
    assert f"via {lab.ip['assistant']}" in got


def test_http_keepalive_and_short_connections_logged(lab, http_servers):
    online = http_servers["online"]
    before = len(online.records())
    ka = run_client(lab, requests=1000, connections=4, mode="keepalive", tag="ka")
    cl = run_client(lab, requests=1000, connections=4, mode="close", tag="cl")
    assert (ka["ok"], ka["failed"]) == (1000, 0), ka["errors"]
    assert (cl["ok"], cl["failed"]) == (1000, 0), cl["errors"]
    recs = online.wait_records(before + 2000)[before:]
    assert logged_keys(recs) == sorted(sent_keys(ka) + sent_keys(cl))
    ka_conns = {r["conn"] for r in recs if r["path"].startswith("/r/ka/")}
    cl_conns = {r["conn"] for r in recs if r["path"].startswith("/r/cl/")}
    assert len(ka_conns) == 4  # four persistent connections
    # one connection per request (counted by the server, not by client port:
    # the server closes first, so the client may reuse a port at once)
    assert len(cl_conns) == 1000
    assert all(r["client_ip"] == lab.ip["client"] and r["server"] == "online" for r in recs)


def test_http_uploads_and_downloads(lab, http_servers):
    online = http_servers["online"]
    before = len(online.records())
    res = run_client(
        lab,
        requests=12,
        connections=2,
        kind="mixed",
        tag="mx",
        upload_size=100 * 1024,
        download_size=1 << 20,
    )
    assert (res["ok"], res["failed"]) == (12, 0), res["errors"]
    recs = online.wait_records(before + 12)[before:]
    assert logged_keys(recs) == sent_keys(res)
    uploads = [r for r in recs if r["method"] == "POST"]
    assert len(uploads) == 4 and all(r["body_len"] == 100 * 1024 for r in uploads)


def test_server_log_flushed_while_running_and_on_sigterm(lab, lab_workdir):
    srv = HttpServerProc(lab, "online", lab_workdir, port=8081, name="flush")
    try:
        res = run_client(lab, requests=3, connections=1, port=8081, tag="fl", expect_server="flush")
        assert res["ok"] == 3
        t0 = time.monotonic()
        assert len(srv.wait_records(3, timeout=2.0)) == 3  # the 100 ms flush
        assert time.monotonic() - t0 < 1.0
        run_client(lab, requests=2, connections=1, port=8081, tag="fl2", expect_server="flush")
    finally:
        code = srv.stop()
    assert code == 0
    assert len(srv.records()) == 5  # nothing lost at SIGTERM


def test_stale_lab_is_cleaned_and_its_processes_killed():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    prefix, subnet = new_lab_prefix()
    first = Lab(prefix, subnet)
    first.setup()
    # simulate a crash: a process left in the namespace, the owner "gone"
    sleeper = subprocess.Popen(
        ["ip", "netns", "exec", first.ns["online"], "sleep", "300"], start_new_session=True
    )
    first._up = False  # the crashed run never tears down
    (REGISTRY / prefix).write_text("999999999\n")  # owner PID that cannot exist
    try:
        assert prefix in reap_orphans(prefix)
        assert sleeper.wait(timeout=5) is not None
        assert not [n for n in _netns_list() if n.startswith(prefix + "-")]
        assert f"{prefix}br" not in _links()
        # a new lab with the same prefix starts cleanly, and closes twice fine
        again = Lab(prefix, subnet)
        again.setup()
        again.close()
        again.close()
        assert not [n for n in _netns_list() if n.startswith(prefix + "-")]
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        cleanup_prefix(prefix)


def test_lab_cleans_up_when_its_owner_exits_without_closing():
    """A process that builds a lab and exits without closing it: atexit removes it."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    prefix, subnet = new_lab_prefix()
    root = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {root!r})\n"
        "from tests.lab.netns import Lab\n"
        f"lab = Lab({prefix!r}, {subnet!r}); lab.setup()\n"
        "print(lab.ns['client'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert out.stdout.strip() == f"{prefix}-client", out.stderr
    assert not [n for n in _netns_list() if n.startswith(prefix + "-")]
    assert not (REGISTRY / prefix).exists()


def test_prefix_owned_by_a_live_process_is_refused(lab):
    """A run must not tear down the lab of a concurrent run with the same prefix."""
    other = subprocess.Popen(["sleep", "60"])
    registry = REGISTRY / lab.prefix
    saved = registry.read_text()
    try:
        registry.write_text(f"{other.pid}\n")
        with pytest.raises(LabError, match="in use by the live process"):
            Lab(lab.prefix, lab.subnet).setup()
        # the running lab was left alone
        assert sorted(lab.ns.values()) == sorted(
            n for n in _netns_list() if n.startswith(lab.prefix + "-")
        )
    finally:
        registry.write_text(saved)
        other.kill()
        other.wait()
