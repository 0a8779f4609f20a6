"""The datagram mesh between intercept's workers (io/workermesh.py), in one
process: worker 0's end of a two-worker mesh, talking to itself and to a
worker whose inbox is full or gone."""

from __future__ import annotations

import socket

from pycopy_engine.core.stats import Stats
from pycopy_engine.io.loop import Loop
from pycopy_engine.io.workermesh import Mesh


def _mesh(n: int = 2):
    loop = Loop()
    mesh = Mesh(n)
    got = []
    stats = Stats()
    mesh.attach(0, loop, lambda data, sock: got.append((data, sock)), stats)
    return loop, mesh, got, stats


def test_datagrams_arrive_whole_and_in_order():
    loop, mesh, got, _ = _mesh()
    try:
        for i in range(5):
            assert mesh.send(0, bytes([i]) * (1000 + i))
        loop.run_once(0.1)
        assert [(d[0], len(d)) for d, _s in got] == [(i, 1000 + i) for i in range(5)]
        assert all(s is None for _d, s in got)
    finally:
        mesh.close()
        loop.close()


def test_a_socket_travels_with_its_datagram():
    loop, mesh, got, _ = _mesh()
    a, b = socket.socketpair()
    try:
        assert mesh.send(0, b"link", a.fileno())
        a.close()  # the sender's copy: the receiver's stays open
        loop.run_once(0.1)
        (data, sock), = got
        assert data == b"link" and sock is not None
        sock.sendall(b"hello")
        assert b.recv(10) == b"hello"
        sock.close()
    finally:
        b.close()
        mesh.close()
        loop.close()


def test_a_full_inbox_queues_then_drains_in_order():
    loop, mesh, got, stats = _mesh()
    try:
        n = 0
        while mesh.queued_bytes == 0:  # until the kernel refuses one
            assert mesh.send(0, n.to_bytes(4, "big") + bytes(60000))
            n += 1
            assert n < 10000
        for _ in range(3):
            assert mesh.send(0, n.to_bytes(4, "big") + bytes(60000))
            n += 1
        assert stats.c["worker_sends_queued"] == 4
        for _ in range(200):
            loop.run_once(0.01)
            if len(got) == n and mesh.queued_bytes == 0:
                break
        assert [int.from_bytes(d[:4], "big") for d, _s in got] == list(range(n))
        assert mesh.queued_bytes == 0
    finally:
        mesh.close()
        loop.close()


def test_beyond_the_bound_datagrams_are_dropped_and_counted():
    loop, mesh, got, stats = _mesh()
    mesh.max_queued = 100_000
    try:
        sent = [mesh.send(0, bytes(60000)) for _ in range(400)]
        assert not all(sent) and stats.c["drop:worker_queue_full"] == sent.count(False)
    finally:
        mesh.close()
        loop.close()


def test_a_gone_worker_is_counted_not_raised():
    loop, mesh, got, stats = _mesh()
    try:
        assert mesh.send(1, b"x")  # worker 1's inbox was closed by attach(0)
        assert stats.c["drop:worker_gone"] == 1
    finally:
        mesh.close()
        loop.close()


def test_queued_datagrams_with_the_same_head_are_merged_in_order():
    loop, mesh, got, stats = _mesh()
    try:
        n = 0
        while mesh.queued_bytes == 0:  # fill the inbox
            mesh.send(0, b"F" + bytes(59999))
            n += 1
        for i in range(20):
            assert mesh.send(0, b"RS" + bytes([i]) * 100, None, 2)
        assert mesh.send(0, b"LS" + b"x", None, 2)  # another head: its own datagram
        assert mesh.send(0, b"RS" + b"\xff" * 100, None, 2)
        assert stats.c["worker_sends_merged"] == 19
        for _ in range(200):
            loop.run_once(0.01)
            if mesh.queued_bytes == 0 and len(got) >= n + 3:
                break
        tail = [d for d, _s in got if not d.startswith(b"F")]
        assert tail == [b"RS" + b"".join(bytes([i]) * 100 for i in range(20)), b"LSx",
                        b"RS" + b"\xff" * 100]
    finally:
        mesh.close()
        loop.close()
