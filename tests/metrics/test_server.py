"""MetricsServer over real loopback sockets, on a stand-in loop and on io.loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pycopy_engine.core.stats import Stats
from pycopy_engine.errors import ConfigError
from pycopy_engine.io.metrics import MetricsServer, parse_hostport, render_prometheus

from .promparse import parse
from .standin_loop import StandInLoop


def loops() -> list[str]:
    kinds = ["standin"]
    try:
        import pycopy_engine.io.loop  # noqa: F401

        kinds.append("project")
    except ImportError:
        pass
    return kinds


class Running:
    """Run a loop in a thread; every loop call happens in that thread."""

    def __init__(self, kind: str) -> None:
        if kind == "standin":
            self.loop: Any = StandInLoop()
            self.step = lambda: self.loop.run_once(0.02)
        else:
            from pycopy_engine.io.loop import Loop

            self.loop = Loop()
            self.step = lambda: self.loop.run_once(0.02)
        self.stop = threading.Event()
        self.calls: list[Any] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                calls, self.calls = self.calls, []
            for fn, done, box in calls:
                try:
                    box.append(fn())
                except BaseException as e:  # surfaced in call()
                    box.append(e)
                done.set()
            self.step()

    def call(self, fn: Any) -> Any:
        done, box = threading.Event(), []
        with self.lock:
            self.calls.append((fn, done, box))
        assert done.wait(5)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


@pytest.fixture(params=loops())
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Running, MetricsServer, Stats]]:
    run = Running(request.param)
    stats = Stats()
    stats.c["requests_sent"] = 0
    stats.add_gauge("control_queue_depth", lambda: 3)
    render = lambda: render_prometheus("pycopy", stats.snapshot(), ["control_queue_depth"])  # noqa: E731
    run.thread.start()
    server = run.call(lambda: MetricsServer(run.loop, "127.0.0.1", 0, render))
    yield run, server, stats
    run.call(server.close)
    run.stop.set()
    run.thread.join(5)


def http(port: int, request: bytes, pieces: int = 1, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        step = max(1, len(request) // pieces)
        for i in range(0, len(request), step):
            s.sendall(request[i : i + step])
            time.sleep(pause)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def split(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def test_scrape_reflects_live_counters(served: Any) -> None:
    run, server, stats = served
    for n in (0, 5, 17):
        run.call(lambda n=n: stats.c.__setitem__("requests_sent", n))
        code, headers, body = split(http(server.port, GET))
        assert code == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert int(headers["Content-Length"]) == len(body)
        fams = parse(body.decode())
        assert fams["pycopy_requests_sent_total"]["samples"] == {
            ("pycopy_requests_sent_total", ()): n
        }
        assert fams["pycopy_control_queue_depth"]["type"] == "gauge"


def test_slow_client_in_pieces(served: Any) -> None:
    run, server, _ = served
    code, _, body = split(http(server.port, GET, pieces=6, pause=0.03))
    assert code == 200 and b"pycopy_requests_sent_total 0" in body


@pytest.mark.parametrize(
    "req,code",
    [
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"garbage\r\n\r\n", 400),
        (b"GET /metrics?x=1 HTTP/1.0\n\n", 200),
    ],
)
def test_other_requests(served: Any, req: bytes, code: int) -> None:
    _, server, _ = served
    assert split(http(server.port, req))[0] == code


def test_head_has_no_body(served: Any) -> None:
    _, server, _ = served
    code, headers, body = split(http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_idle_and_oversized_clients_do_not_block_others(served: Any) -> None:
    run, server, _ = served
    run.call(lambda: setattr(server, "TIMEOUT", 0.3))
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    idle.sendall(b"GET /metr")
    big = http(server.port, b"GET /" + b"a" * 10000)
    assert split(big)[0] == 431
    assert split(http(server.port, GET))[0] == 200  # served while the idle one waits
    t0 = time.monotonic()
    assert idle.recv(100) == b""  # closed by the server's timeout
    assert time.monotonic() - t0 < 2
    idle.close()
    assert run.call(lambda: len(server.conns)) == 0


def test_render_failure_is_a_500_and_the_server_lives(served: Any) -> None:
    run, server, _ = served
    good = server.render
    run.call(lambda: setattr(server, "render", lambda: 1 / 0))
    code, _, body = split(http(server.port, GET))
    assert code == 500 and b"ZeroDivisionError" in body
    run.call(lambda: setattr(server, "render", good))
    assert split(http(server.port, GET))[0] == 200


def test_many_clients_at_once(served: Any) -> None:
    _, server, _ = served
    results: list[int] = []

    def one() -> None:
        results.append(split(http(server.port, GET))[0])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 20


def test_port_in_use_is_a_config_error() -> None:
    loop = StandInLoop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics 127.0.0.1:{port}: cannot listen"):
            MetricsServer(loop, "127.0.0.1", port, str)


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_hostport(":9100") == ("0.0.0.0", 9100)
    assert parse_hostport("[::1]:9100") == ("::1", 9100)
    for bad in ("9100", "host:", "h:99999", "h:x"):
        with pytest.raises(ConfigError):
            parse_hostport(bad)
