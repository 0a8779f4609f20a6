"""Replication health (core/health.py): the sliding window, what counts as a
captured and a completed request, and how it is exported."""

from __future__ import annotations

from pycopy_engine.core.brake import BrakeConfig, EngineBrake
from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.health import Health, Window
from pycopy_engine.core.mapping import TargetMap
from pycopy_engine.io.metrics import render_prometheus

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])
T = (TARGET, 8080)
NAME = "10.1.0.12:8080"


def test_window_forgets_what_is_older_than_its_size():
    w = Window(10)
    w.add(0, 5, 100.2)
    w.add(1, 3, 104.9)
    assert w.total(105.0) == [5, 3, 0]
    assert w.total(109.99) == [5, 3, 0]
    assert w.total(110.0) == [0, 3, 0]  # second 100 left the window
    assert w.total(113.99) == [0, 3, 0]
    assert w.total(114.0) == [0, 0, 0]  # whole seconds: 105..114
    w.add(2, 1, 200.0)  # a long quiet gap clears every bucket
    assert w.total(200.5) == [0, 0, 1]


def make(replicas=1, **kw):
    cfg = EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 8080)], seed=7, replicas=replicas, **kw)
    eng = Engine(cfg)
    eng.health = Health(eng, 10)
    eng.brake = EngineBrake(eng, BrakeConfig())
    target = SimServer(TARGET, 8080, seed=99)
    return eng, Wire(eng, target)


def keepalive(port, n):
    online = SimServer(ONLINE, 80, seed=port)
    cl = SimClient(online, CLIENT, port, isn=port * 1000)
    cl.connect()
    for i in range(n):
        cl.request(b"GET 3000 /r%d" % i)  # answers of several segments
    cl.close()
    return cl.captured


def test_every_request_captured_and_completed_counted_once_per_copy():
    eng, wire = make(replicas=2)
    for port in (30000, 30001, 30002):
        for p in keepalive(port, 4):
            wire.capture(p, 0.001)
    wire.advance(0.5)
    c = eng.stats.c
    assert c["requests_captured:target=" + NAME] == 3 * 4 * 2
    assert c["requests_completed:target=" + NAME] == 3 * 4 * 2 == c["requests_sent"]
    assert eng.health.figures(T, wire.now) == (24, 24, 0, 1.0)
    snap = eng.stats.snapshot()
    assert snap["health_replication:target=" + NAME] == 1.0


def test_lost_answers_lower_the_figure_and_it_recovers_after_the_window():
    eng, wire = make()
    wire.drop_records = lambda rec: True  # nothing reaches intercept
    for p in keepalive(30000, 3):
        wire.capture(p, 0.001)
    wire.advance(2.0)  # past the SYN-ACK wait (1.5 s: the SYN's retransmission included)
    cap, done, failed, ratio = eng.health.figures(T, wire.now)
    assert (cap, done, failed, ratio) == (3, 0, 1, 0.0)
    wire.drop_records = None
    wire.advance(12.0)
    for p in keepalive(30100, 2):
        wire.capture(p, 0.001)
    wire.advance(0.5)
    assert eng.health.figures(T, wire.now) == (2, 2, 0, 1.0)
    c = eng.stats.c  # the running totals keep everything, for rate() in Prometheus
    assert c["requests_captured:target=" + NAME] == 5 and c["requests_completed:target=" + NAME] == 2


def test_sampled_out_sessions_are_not_captured_requests():
    eng, wire = make(sample_percent=50)
    for port in range(31000, 31040):
        for p in keepalive(port, 1):
            wire.capture(p, 0.001)
    wire.advance(0.5)
    c = eng.stats.c
    assert 0 < c["requests_captured:target=" + NAME] < 40
    assert c["requests_captured:target=" + NAME] == c["requests_completed:target=" + NAME]


def test_prometheus_renders_the_target_as_a_label():
    text = render_prometheus("pycopy_tcpcopy", {
        "health_replication:target=10.0.0.12:80": 0.5, "requests_captured:target=10.0.0.12:80": 7,
        "drop:pure_ack": 3}, ["health_replication"])
    assert 'pycopy_tcpcopy_health_replication{target="10.0.0.12:80"} 0.5' in text
    assert "# TYPE pycopy_tcpcopy_health_replication gauge" in text
    assert 'pycopy_tcpcopy_requests_captured_total{target="10.0.0.12:80"} 7' in text
    assert 'pycopy_tcpcopy_drop_total{reason="pure_ack"} 3' in text
