"""Issue 12 in the four-namespace lab: the safety brake when the target's route
via the assistant disappears mid-run, and --delay as the target sees it."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .procs import Proc, intercept, tcpcopy

pytestmark = pytest.mark.lab

PROBES = "61000:61999"  # core.brake.PROBE_PORT_BASE .. +999


def _counter(lab, host: str, comment: str) -> int:
    out = lab.run(host, ["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout
    for line in out.splitlines():
        if f"/* {comment} */" in line:
            return int(line.split()[0])
    raise AssertionError(f"no rule {comment} in {host}: {out}")


def _log_time(line: str) -> float:
    """The time of a C-format log line: YYYY/MM/DD HH:MM:SS +mmm."""
    m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \+(\d{3})", line)
    assert m, line
    return time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S")) + int(m.group(2)) / 1000


def _wait(pred, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def _metrics(lab) -> str:
    return lab.run("online", [sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                              "'http://127.0.0.1:9464/metrics', timeout=5).read().decode())"]).stdout


def _client(lab, workdir: Path, tag: str, requests: int, connections: int, mode: str,
            delay: float):
    out = workdir / f"client-{tag}.json"
    p = lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host", lab.ip["online"],
                             "--requests", str(requests), "--connections", str(connections),
                             "--mode", mode, "--delay", str(delay), "--tag", tag,
                             "--expect-server", "online", "--out", str(out)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, out


def test_brake_route_lost_mid_run_stops_new_sessions_and_resumes(lab, http_servers, workdir):
    t_ip, c_ip, a_ip = lab.ip["target"], lab.ip["client"], lab.ip["assistant"]
    name = f"{t_ip}:80"
    rules = [
        ("client", ["-s", t_ip, "-p", "tcp", "--dport", PROBES], "pk-probe-leak"),
        ("client", ["-s", t_ip], "pk-leak"),
        ("target", ["-p", "tcp", "--syn", "--dport", "80", "!", "--sport", PROBES], "pk-syn"),
    ]
    for host, match, comment in rules:
        lab.run(host, ["iptables", "-A", "INPUT", *match, "-m", "comment", "--comment", comment,
                       "-j", "ACCEPT"])
    start = {h: len(s.records()) for h, s in http_servers.items()}
    ic = intercept(lab, workdir, name="ic-brake")
    tc = tcpcopy(lab, workdir, name="tc-brake", extra=["--metrics", "127.0.0.1:9464"])
    client = None
    try:
        # new short connections arriving steadily (~50/s), for about 25 s
        client, _ = _client(lab, workdir, "brake", 1300, 2, "close", 0.035)
        assert _wait(lambda: len(http_servers["target"].records()) - start["target"] > 100, 15)
        lab.run("client", ["iptables", "-Z", "INPUT"])
        lab.run("target", ["ip", "route", "del", f"{c_ip}/32", "via", a_ip])
        t_del = time.time()
        assert _wait(lambda: tc.stats().get(f"brake_trips:target={name}", 0) >= 1, 10), \
            "the brake never engaged: " + tc.log()[-2000:]
        syn_at_engaged = _counter(lab, "target", "pk-syn")
        metrics_braked = _metrics(lab)
        line = next(x for x in tc.log().splitlines() if "brake engaged" in x)
        t_engaged = _log_time(line)
        time.sleep(max(0.0, t_del + 6.0 - time.time()))  # the route stays away 6 s
        syn_at_fix = _counter(lab, "target", "pk-syn")
        leaked = _counter(lab, "client", "pk-leak")
        probe_leaked = _counter(lab, "client", "pk-probe-leak")
        lab.add_route("target", f"{c_ip}/32", a_ip)
        t_fix = time.time()
        assert _wait(lambda: tc.stats().get(f"brake_released:target={name}", 0) >= 1, 12), \
            "the brake never let go: " + tc.log()[-2000:]
        t_released = time.time()
        assert client.wait(60) == 0
        time.sleep(1.0)
        metrics_end = _metrics(lab)
        st = tc.stats()
        online = http_servers["online"].records()[start["online"]:]
        target = http_servers["target"].records()[start["target"]:]
    finally:
        if client is not None and client.poll() is None:
            lab.stop(client)
        tc.stop()
        ic.stop()
        lab.add_route("target", f"{c_ip}/32", a_ip)
        for host, match, comment in rules:
            lab.run(host, ["iptables", "-D", "INPUT", *match, "-m", "comment", "--comment",
                           comment, "-j", "ACCEPT"], check=False)
    window = 3.0  # the default --brake-window
    opened_in_window = [r for r in online if t_del <= r["time"] <= t_del + window]
    print(f"\nbrake: engaged {t_engaged - t_del:.2f}s after the route was deleted; "
          f"{len(opened_in_window)} sessions opened in the {window:g}s window; target packets "
          f"that reached the client: {leaked} (+{probe_leaked} probe answers); released "
          f"{t_released - t_fix:.2f}s after the route came back (observed every 0.2 s)")
    assert t_engaged - t_del <= window
    # no new session to the target while braked (probes come from their own ports)
    assert syn_at_fix == syn_at_engaged
    assert leaked + probe_leaked <= len(opened_in_window), (leaked, probe_leaked)
    assert t_released - t_fix <= 10.0
    # and replication is whole again: every request online got after the release
    later = {r["path"] for r in online if r["time"] > t_released + 0.5}
    assert len(later) > 50
    assert later <= {r["path"] for r in target}
    assert st.get("drop:brake", 0) > 0 and st.get(f"brake_probes:target={name}", 0) >= 1
    assert "brake engaged for target " + name in tc.log()
    # health: in the JSON statistics and on /metrics, with the target as a label
    assert len(online) - 2 <= st[f"requests_captured:target={name}"] <= len(online)
    # served by the target but answered to the client directly: each leaked a packet
    assert len(target) - leaked <= st[f"requests_completed:target={name}"] <= len(target)
    assert st[f"handshakes_failed:target={name}"] >= 5
    assert st[f"health_replication:target={name}"] < 1.0
    lbl = f'{{target="{name}"}}'
    assert f"pycopy_tcpcopy_brake_engaged{lbl} 1" in metrics_braked
    assert f"pycopy_tcpcopy_brake_engaged{lbl} 0" in metrics_end
    failed = re.search(r"pycopy_tcpcopy_health_handshakes_failed%s (\d+)" % re.escape(lbl),
                       metrics_end)
    assert failed and int(failed.group(1)) >= 5, metrics_end[-3000:]
    assert f"pycopy_tcpcopy_requests_captured_total{lbl}" in metrics_end


class Sniffer:
    """tcpdump in a lab host: kernel timestamps of the requests arriving there
    (the HTTP servers' own log times carry their scheduling delays)."""

    def __init__(self, lab, host: str, workdir: Path, name: str) -> None:
        self.lab = lab
        self.path = workdir / f"{name}.pcap"
        self.err = workdir / f"{name}.tcpdump.err"
        self._err = open(self.err, "w")
        self.proc = lab.popen(host, ["tcpdump", "-i", "eth0", "-n", "-U", "-s", "256", "-w",
                                     str(self.path), "tcp dst port 80"],
                              stdout=subprocess.DEVNULL, stderr=self._err)
        assert _wait(lambda: "listening on" in self.err.read_text(), 10), self.err.read_text()

    def stop(self) -> None:
        self.lab.stop(self.proc)
        self._err.close()

    def first_seen(self) -> dict:
        """{request path: time its first packet arrived}."""
        from scapy.all import TCP, PcapReader  # type: ignore[import-untyped]

        seen: dict = {}
        with PcapReader(str(self.path)) as r:
            for p in r:
                if TCP not in p:
                    continue
                data = bytes(p[TCP].payload)
                if data[:4] in (b"GET ", b"POST"):
                    path = data.split(b" ", 2)[1].decode()
                    seen.setdefault(path, float(p.time))
        return seen


def _favour(*procs) -> None:
    """Timing tests share two cores with other jobs: run tcpcopy, intercept and
    the target's HTTP server (all event- or thread-driven, never spinning)
    round-robin real-time, so that the figures are pycopy's and not the
    neighbours' load (time-sharing slices are ~4 ms).  The server's threads
    for new connections inherit the policy; _unfavour() gives the main one back."""
    for p in procs:
        os.sched_setscheduler(p.proc.pid, os.SCHED_RR, os.sched_param(10))


def _unfavour(*procs) -> None:
    for p in procs:
        try:
            os.sched_setscheduler(p.proc.pid, os.SCHED_OTHER, os.sched_param(0))
        except ProcessLookupError:
            pass


def _wait_seen(sniffer: Sniffer, tag: str, n: int, timeout: float = 15.0) -> dict:
    """tcpdump writes behind under load: wait until it holds n requests of ``tag``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = sniffer.first_seen()
        if sum(f"/{tag}/" in p for p in seen) >= n or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def _pairs(online: dict, target: dict, tag: str):
    return [target[p] - t for p, t in online.items() if f"/{tag}/" in p and p in target]


@pytest.mark.parametrize("ring", [False, True], ids=["raw-socket", "ring"])
@pytest.mark.parametrize("mode", ["keepalive", "close"])
def test_delay_target_sees_each_request_later_by_the_delay(lab, http_servers, workdir, mode,
                                                           ring):
    """With -i (a TPACKET_V3 ring, whose blocks wait up to 16 ms for their
    timer) packets are held from the kernel's capture stamps, not from their
    read: the ring adds nothing to the delay (it added ~8 ms to the median
    and ~15 ms to the p90 when held from the read)."""
    start = {h: len(s.records()) for h, s in http_servers.items()}
    ic = intercept(lab, workdir, name=f"ic-delay-{mode}{'-i' * ring}")
    if ring:  # -i sees tcpcopy's own copies too, unless -x names the online IP
        o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
        tc = Proc(lab, "online", "tcpcopy", ["-x", f"{o}:80-{t}:80", "-s", a, "-i", "eth0",
                                             "--delay", "50ms"], workdir, f"tc-delay-{mode}-i")
    else:
        tc = tcpcopy(lab, workdir, extra=["--delay", "50ms"], name=f"tc-delay-{mode}")
    tag = f"d50{mode[0]}{'i' * ring}"
    _favour(ic, tc, http_servers["target"])
    sniff = {h: Sniffer(lab, h, workdir, f"sniff-{tag}-{h}") for h in ("online", "target")}
    try:
        client, out = _client(lab, workdir, tag, 300, 3, mode, 0.02)
        assert client.wait(120) == 0
        assert _wait(lambda: len(http_servers["target"].records()) - start["target"] >= 300, 20)
        seen = {h: _wait_seen(sn, tag, 300) for h, sn in sniff.items()}
        st = tc.stats()
    finally:
        _unfavour(http_servers["target"])
        for sn in sniff.values():
            sn.stop()
        tc.stop()
        ic.stop()
    lags = _pairs(seen["online"], seen["target"], tag)
    assert len(lags) == 300, len(lags)
    lags.sort()
    print(f"\n--delay 50ms ({mode}, {'-i eth0' if ring else 'raw socket'}): target later than"
          f" online by min {lags[0] * 1e3:.1f} ms, "
          f"median {statistics.median(lags) * 1e3:.1f} ms, p90 {lags[269] * 1e3:.1f} ms, "
          f"max {lags[-1] * 1e3:.1f} ms; over 70 ms: {[round(x * 1e3, 1) for x in lags if x >= 0.07]}")
    # never early (the hard guarantee); most within 20 ms over the delay; none
    # held twice.  (A lone request can lose the CPU for tens of ms on a loaded
    # 2-core CI machine: in close mode it waits for the target's delayed
    # handshake, through intercept, too.)
    assert lags[0] >= 0.050
    assert lags[269] < 0.070
    assert lags[-1] < 0.100
    assert st.get("delay_held", 0) == 0
    if ring:  # held from the read, the p90 was 64.6-66.6 ms (3 runs each mode); now ~52
        assert lags[269] < 0.060


def _rtt_pcap(path: Path, online_ip: str, rtts: dict) -> None:
    """Clients with different RTTs, each sending one request at file time 1.5 s
    (0.3 s after its handshake, so that the target's own handshake is long
    done), and one more without a captured handshake."""
    from scapy.all import IP, TCP, Raw, wrpcap  # type: ignore[import-untyped]

    pkts = []

    def add(t, p):
        p.time = t
        pkts.append(p)

    for i, (cip, rtt) in enumerate(rtts.items()):
        sport, isn = 41000 + i, 1000 * (i + 1)
        t0 = 1.5 - 0.3 - rtt
        add(t0, IP(src=cip, dst=online_ip) / TCP(sport=sport, dport=80, flags="S", seq=isn))
        add(t0 + rtt / 2, IP(src=online_ip, dst=cip) / TCP(sport=80, dport=sport, flags="SA",
                                                          seq=7000, ack=isn + 1))
        add(t0 + rtt, IP(src=cip, dst=online_ip) / TCP(sport=sport, dport=80, flags="A",
                                                      seq=isn + 1, ack=7001))
        req = b"GET /rtt/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i
        add(1.5, IP(src=cip, dst=online_ip) / TCP(sport=sport, dport=80, flags="PA", seq=isn + 1,
                                                  ack=7001) / Raw(req))
    cip = next(iter(rtts))
    req = b"GET /rtt/mid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    add(1.5, IP(src=cip, dst=online_ip) / TCP(sport=42000, dport=80, flags="PA", seq=5555,
                                              ack=9999) / Raw(req))
    add(3.0, IP(src=cip, dst=online_ip) / TCP(sport=42001, dport=80, flags="A", seq=1, ack=1))
    pkts.sort(key=lambda p: p.time)
    wrpcap(str(path), pkts)


def test_delay_rtt_reproduces_each_clients_rtt_from_a_capture(lab, http_servers, workdir):
    base = lab.ip["client"].rsplit(".", 1)[0]
    rtts = {f"{base}.{60 + i}": rtt for i, rtt in enumerate((0.010, 0.050, 0.120))}
    for ip in rtts:
        lab.add_route("target", f"{ip}/32", lab.ip["assistant"])
    pcap = workdir / "rtt.pcap"
    _rtt_pcap(pcap, lab.ip["online"], rtts)
    start = len(http_servers["target"].records())
    ic = intercept(lab, workdir, name="ic-rtt")
    _favour(ic)
    sniff = Sniffer(lab, "target", workdir, "sniff-rtt")
    try:
        r = lab.run("online", ["chrt", "-r", "10", sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-x",
                               f"80-{lab.ip['target']}:80", "-s", lab.ip["assistant"],
                               "--pcap", str(pcap), "--delay", "rtt"], timeout=60, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        recs = http_servers["target"].wait_records(start + 4, 10)[start:]
        at = _wait_seen(sniff, "rtt", 4)
    finally:
        sniff.stop()
        ic.stop()
    assert len(recs) == 4
    assert len(at) == 4, (at, r.stderr[-2000:])
    t = [at[f"/rtt/{i}"] for i in range(3)]
    want = list(rtts.values())
    # every request was captured at the same file time: the target sees them
    # apart by the differences of their clients' RTTs
    for i in (1, 2):
        got = t[i] - t[0]
        print(f"rtt: client {i} later than client 0 by {got * 1e3:.1f} ms "
              f"(RTTs {want[i] * 1e3:.0f} and {want[0] * 1e3:.0f} ms)")
        assert abs(got - (want[i] - want[0])) < 0.010, (got, want)
    # the session without a handshake gets the median (50 ms)
    mid = at["/rtt/mid"] - t[0]
    assert abs(mid - (statistics.median(want) - want[0])) < 0.010, mid
    assert json.dumps(at)
