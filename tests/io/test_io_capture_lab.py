"""Capture, kernel filters and raw sending for real, in the netns lab.

Sockets are opened inside a lab host with ``lab.inside(host)`` (setns for the
calling thread) and used from the test; traffic comes from the real HTTP
client and servers (tests/lab) or from packets built with scapy.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from collections.abc import Callable

import pytest

from pycopy_engine.core.stats import Stats
from pycopy_engine.io import bpf
from pycopy_engine.io.capture import (
    Capture,
    CapturePermissionError,
    build_program,
    open_packet_capture,
    open_raw_ip_capture,
)
from pycopy_engine.io.rawsend import RawSender
from pycopy_engine.io.stamped import has_stamps, read_stamped
from tests.lab.services import run_client

pytestmark = pytest.mark.lab

_IP_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBB")


def parse(pkt: bytes) -> dict:
    (
        vihl,
        _tos,
        tot_len,
        _id,
        _frag,
        _ttl,
        proto,
        _sum,
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        _off,
        flags,
    ) = _IP_TCP.unpack_from(pkt)
    return {
        "src": socket.inet_ntoa(src),
        "dst": socket.inet_ntoa(dst),
        "proto": proto,
        "sport": sport,
        "dport": dport,
        "seq": seq,
        "ack": ack,
        "flags": flags,
        "tot_len": tot_len,
        "caplen": len(pkt),
        "version": vihl >> 4,
    }


def drain(
    cap: Capture, until: Callable[[list[bytes]], bool] | None = None, timeout: float = 3.0
) -> list[bytes]:
    """Read packets (copies) until ``until(pkts)`` or ``timeout``; with no
    ``until``, until the capture has been quiet for 0.3 s."""
    pkts: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        select.select([cap], [], [], 0.05)
        n = cap.read_batch(lambda p: pkts.append(bytes(p)))
        if n:
            quiet_since = time.monotonic()
        if until is not None and until(pkts):
            break
        if until is None and time.monotonic() - quiet_since > 0.3:
            break
    return pkts


@pytest.fixture(scope="module")
def servers(http_servers):
    return http_servers


KINDS = {2: "packet-ring", 3: "packet-ring-v3", None: "packet-recv", 0: "packet-recv"}


@pytest.mark.parametrize(
    "version", [2, 3, None, 0], ids=["ring-v2", "ring-v3", "recvmmsg", "recv-loop"]
)
def test_packet_capture_sees_client_to_online(lab, servers, version):
    prog = bpf.compile_filter("tcp and dst port 80")
    with lab.inside("online"):
        cap = open_packet_capture(
            ["eth0"], prog, ring=bool(version), version=version or None, batched=version is None
        )
    try:
        assert cap.kind == KINDS[version]
        if not version:
            assert cap.batched == (version is None)
        res = run_client(lab, requests=20, connections=1, mode="close", tag=f"cap{version}")
        assert res["ok"] == 20
        pkts = [parse(p) for p in drain(cap)]
        syns = [p for p in pkts if p["flags"] & 0x02]
        assert len(syns) == 20
        assert all(p["src"] == lab.ip["client"] and p["dst"] == lab.ip["online"] for p in pkts)
        assert all(p["dport"] == 80 and p["version"] == 4 for p in pkts)
        assert all(p["caplen"] == p["tot_len"] for p in pkts)  # whole packets
        st = cap.kernel_stats()
        assert st["drops"] == 0 and st["truncated"] == 0 and st["packets"] >= len(pkts)
    finally:
        cap.close()


@pytest.mark.parametrize("version", [2, 3, 0], ids=["ring-v2", "ring-v3", "recvmmsg"])
def test_read_stamped_gives_each_packet_its_kernel_capture_time(lab, servers, version):
    """Both ring versions stamp every packet (wall clock) between the moment
    before the client ran and the read (--delay holds packets from it); socket
    reads give None."""
    prog = bpf.compile_filter("tcp and dst port 80")
    with lab.inside("online"):
        cap = open_packet_capture(["eth0"], prog, ring=bool(version), version=version or None)
    try:
        assert has_stamps(cap) == bool(version)
        before = time.time()
        assert run_client(lab, requests=5, connections=1, mode="close", tag=f"ts{version}")["ok"] == 5
        got: list = []
        deadline = time.monotonic() + 3.0
        while len(got) < 15 and time.monotonic() < deadline:  # 3 per request at least
            select.select([cap], [], [], 0.05)
            read_stamped(cap, lambda pkt, ts: got.append((parse(pkt), ts, time.time())))
        assert len(got) >= 15
        if not version:
            assert all(ts is None for _p, ts, _r in got)
            return
        assert all(before <= ts <= read for _p, ts, read in got)
    finally:
        cap.close()


def test_filter_drops_other_ports_and_directions(lab, servers):
    prog = bpf.compile_filter("tcp and dst port 80")
    with lab.inside("online"):
        cap = open_packet_capture(["eth0"], prog)
        unfiltered = open_packet_capture(["eth0"], None)
    try:
        run_client(lab, requests=5, connections=1, tag="flt")
        # connection attempts to a closed port: the online host answers RST
        lab.run(
            "client",
            [
                sys.executable,
                "-c",
                (
                    "import socket\n"
                    "for p in (81, 82, 8080):\n"
                    "    s = socket.socket(); s.settimeout(1)\n"
                    f"    try: s.connect(('{lab.ip['online']}', p))\n"
                    "    except OSError: pass\n"
                ),
            ],
        )
        seen = [parse(p) for p in drain(cap)]
        everything = [parse(p) for p in drain(unfiltered)]
        assert seen and all(p["dport"] == 80 for p in seen)
        # the unfiltered capture proves the other packets did cross eth0
        other = {p["dport"] for p in everything if p["dst"] == lab.ip["online"]}
        assert {81, 82, 8080} <= other
        assert any(p["sport"] == 80 for p in everything)  # online's own answers
    finally:
        cap.close()
        unfiltered.close()


def test_ignore_outgoing(lab, servers):
    prog = bpf.compile_filter("tcp and port 80")
    with lab.inside("online"):
        both = open_packet_capture(["eth0"], prog)
        inbound = open_packet_capture(["eth0"], prog, ignore_outgoing=True)
        # the filter-only path used on kernels without PACKET_IGNORE_OUTGOING
        by_filter = open_packet_capture(["eth0"], prog)
    bpf.attach_filter(by_filter.sock, build_program(prog, 65535, (), drop_outgoing=True))
    try:
        run_client(lab, requests=5, connections=1, tag="out")
        a = [parse(p) for p in drain(both)]
        b = [parse(p) for p in drain(inbound)]
        c = [parse(p) for p in drain(by_filter)]
        assert any(p["src"] == lab.ip["online"] for p in a)
        assert b and all(p["dst"] == lab.ip["online"] for p in b)
        assert len(b) == sum(1 for p in a if p["dst"] == lab.ip["online"])
        assert c == b
    finally:
        both.close()
        inbound.close()
        by_filter.close()


def test_interface_selection(lab, servers):
    with lab.inside("online"):
        lo_only = open_packet_capture(["lo"], bpf.compile_filter("tcp and dst port 80"))
        two = open_packet_capture(["lo", "eth0"], bpf.compile_filter("tcp and dst port 80"))
        anyif = open_packet_capture(["any"], bpf.compile_filter("tcp and dst port 80"))
    try:
        run_client(lab, requests=3, connections=1, tag="ifs")
        assert drain(lo_only, timeout=1.0) == []
        n_two = len(drain(two))
        n_any = len(drain(anyif))
        assert n_two > 0 and n_two == n_any
    finally:
        for c in (lo_only, two, anyif):
            c.close()


def test_snaplen_and_truncation(lab, servers):
    prog = bpf.compile_filter("tcp and dst port 80")
    with lab.inside("online"):
        short = open_packet_capture(["eth0"], prog, snaplen=120)
        small_frames = open_packet_capture(["eth0"], prog, version=2, frame_size=80 + 256)
    try:
        run_client(lab, requests=4, connections=1, kind="upload", upload_size=20000, tag="trn")
        a = [parse(p) for p in drain(short)]
        assert max(p["caplen"] for p in a) == 120
        assert any(p["tot_len"] > 1000 for p in a)  # tot_len still tells the real size
        assert short.kernel_stats()["truncated"] == 0  # cut as asked: not counted
        b = drain(small_frames)
        assert max(len(p) for p in b) == 256
        assert (
            small_frames.kernel_stats()["truncated"]
            == sum(1 for p in b if parse(p)["tot_len"] > 256)
            > 0
        )
    finally:
        short.close()
        small_frames.close()


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recv-loop"])
def test_raw_ip_capture_sees_inbound_tcp(lab, servers, batched):
    with lab.inside("online"):
        cap = open_raw_ip_capture(bpf.compile_filter("tcp and dst port 80"), batched=batched)
        nofilter = open_raw_ip_capture(None, batched=batched)
    try:
        assert cap.kind == "raw-ip" and cap.batched == batched
        run_client(lab, requests=3, connections=1, tag=f"raw{batched}")
        pkts = [parse(p) for p in drain(cap)]
        assert sum(1 for p in pkts if p["flags"] & 0x02) == 1
        assert all(p["dport"] == 80 and p["dst"] == lab.ip["online"] for p in pkts)
        assert drain(nofilter)  # sees the same traffic without a filter
        assert cap.kernel_stats()["drops"] == 0
        # SO_RCVBUFFORCE went past rmem_max (the kernel reports twice the size)
        assert cap.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 64 << 20
    finally:
        cap.close()
        nofilter.close()


def _syn(src: str, dst: str, sport: int, seq: int, flags: str = "S") -> bytes:
    from scapy.layers.inet import IP, TCP

    return bytes(
        IP(src=src, dst=dst, id=0, flags="DF") / TCP(sport=sport, dport=80, flags=flags, seq=seq)
    )


def test_raw_send_syn_answer_reaches_assistant(lab, servers):
    """A handcrafted SYN from online (spoofing the client) reaches the target,
    whose SYN-ACK is routed to the assistant and captured there."""
    stats = Stats()
    sport = 40123
    with lab.inside("assistant"):
        cap = open_packet_capture(
            ["eth0"], bpf.compile_filter(f"tcp and src port 80 and dst port {sport}"), snaplen=120
        )
    with lab.inside("online"):
        sender = RawSender(stats)
    try:
        pkt = _syn(lab.ip["client"], lab.ip["target"], sport, 1000)
        assert sender.send(pkt, socket.inet_aton(lab.ip["target"]))

        def got_synack(pkts: list[bytes]) -> bool:
            return any(parse(p)["flags"] & 0x12 == 0x12 for p in pkts)

        pkts = [parse(p) for p in drain(cap, got_synack, timeout=5.0)]
        synack = [p for p in pkts if p["flags"] & 0x12 == 0x12]
        assert synack, pkts
        assert synack[0]["src"] == lab.ip["target"] and synack[0]["dst"] == lab.ip["client"]
        assert synack[0]["ack"] == 1001
        # tidy up: reset the half-open connection on the target
        sender.send(
            _syn(lab.ip["client"], lab.ip["target"], sport, 1001, "R"),
            socket.inet_aton(lab.ip["target"]),
        )
        assert sender.sent == 2 and not stats.c
    finally:
        cap.close()
        sender.close()


def test_raw_send_errors_are_counted_not_raised(lab):
    stats = Stats()
    with lab.inside("online"):
        sender = RawSender(stats)
    try:
        big = bytearray(_syn(lab.ip["online"], lab.ip["target"], 40200, 1))
        big += b"x" * 3000  # larger than the 1500-byte MTU, DF set
        struct.pack_into("!H", big, 2, len(big))
        assert sender.send(bytes(big), socket.inet_aton(lab.ip["target"])) is False
        assert stats.c["send_error:EMSGSIZE"] == 1
        assert sender.send(b"\x45\x00", socket.inet_aton(lab.ip["target"])) is False
        assert sender.failed == 2 and sum(stats.by_reason("send_error").values()) == 2
    finally:
        sender.close()


def test_capture_without_cap_net_raw_explains():
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    code = (
        "import os\n"
        "from pycopy_engine.io.capture import open_packet_capture, CapturePermissionError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    open_packet_capture(None, None)\n"
        "except CapturePermissionError as e:\n"
        "    print('ERR', e.strerror)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert "ERR capturing needs CAP_NET_RAW" in out.stdout, out.stderr
    assert issubclass(CapturePermissionError, PermissionError)


@pytest.mark.parametrize("version", [2, 3])
def test_ring_keeps_offload_super_packets_whole(lab, servers, version):
    """veth passes TSO super-packets unsplit: the ring's default frames hold
    them whole (tcpcopy needs full payloads)."""
    prog = bpf.compile_filter("tcp and dst port 80")
    with lab.inside("online"):
        cap = open_packet_capture(["eth0"], prog, version=version)
    try:
        res = run_client(
            lab, requests=3, connections=1, kind="upload", upload_size=100_000, tag="gso"
        )
        assert res["ok"] == 3
        pkts = [parse(p) for p in drain(cap)]
        assert all(p["caplen"] == p["tot_len"] for p in pkts)
        payload = sum(p["tot_len"] - 40 for p in pkts)  # lower bound: >= 20+20 headers
        assert payload >= 300_000
        print("largest captured packet:", max(p["tot_len"] for p in pkts))
        assert cap.kernel_stats()["truncated"] == 0
    finally:
        cap.close()


def _probe(src: str, dst: str, seq: int) -> bytes:
    """A TCP packet to the discard port, numbered by its sequence number."""
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        140,
        0,
        0x4000,
        64,
        6,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + struct.pack("!HHIIBBHHH", 33333, 9, seq, 0, 0x50, 0x18, 1024, 0, 0) + b"q" * 100


@pytest.mark.parametrize("version", [2, 3])
def test_small_ring_wraps_around_in_order(lab, version):
    """A ring of a few blocks, filled and drained many times: every packet
    arrives once, in order (the block/frame index wraps correctly)."""
    prog = bpf.compile_filter("tcp and dst port 9")
    with lab.inside("online"):
        cap = open_packet_capture(
            ["eth0"],
            prog,
            version=version,
            snaplen=1500,
            ring_bytes=64 << 10,
            block_size=8 << 10,
            max_batch=7,
        )
    with lab.inside("client"):
        sender = RawSender()
    dst = socket.inet_aton(lab.ip["online"])
    seqs: list[int] = []
    try:
        total = 0
        for _batch in range(30):
            for _ in range(20):
                sender.send(_probe(lab.ip["client"], lab.ip["online"], total), dst)
                total += 1
            got = drain(cap, lambda p, want=total: len(p) >= want - len(seqs), timeout=3.0)
            seqs.extend(parse(p)["seq"] for p in got)
        assert seqs == list(range(total))
        st = cap.kernel_stats()
        assert (st["packets"], st["drops"], st["read"]) == (total, 0, total)
    finally:
        cap.close()
        sender.close()


def test_ring_v3_delivers_a_lone_packet_promptly(lab):
    prog = bpf.compile_filter("tcp and dst port 9")
    with lab.inside("online"):
        cap = open_packet_capture(["eth0"], prog, version=3, block_timeout_ms=1)
    with lab.inside("client"):
        sender = RawSender()
    try:
        t0 = time.monotonic()
        sender.send(
            _probe(lab.ip["client"], lab.ip["online"], 7), socket.inet_aton(lab.ip["online"])
        )
        got = drain(cap, lambda p: len(p) >= 1, timeout=2.0)
        assert [parse(p)["seq"] for p in got] == [7]
        assert time.monotonic() - t0 < 1.0  # the block retire timer handed it over
    finally:
        cap.close()
        sender.close()


@pytest.mark.parametrize("version", [2, 3])
def test_full_ring_drops_are_counted(lab, version):
    prog = bpf.compile_filter("tcp and dst port 9")
    with lab.inside("online"):
        cap = open_packet_capture(
            ["eth0"], prog, version=version, snaplen=1500, ring_bytes=64 << 10, block_size=8 << 10
        )
    with lab.inside("client"):
        sender = RawSender()
    try:
        dst = socket.inet_aton(lab.ip["online"])
        for i in range(1000):  # far more than 64 KB of ring holds
            sender.send(_probe(lab.ip["client"], lab.ip["online"], i), dst)
        time.sleep(0.2)
        got = drain(cap)
        st = cap.kernel_stats()
        assert st["packets"] == 1000
        assert st["drops"] > 0 and st["drops"] + len(got) == 1000
        seqs = [parse(p)["seq"] for p in got]
        assert seqs == sorted(seqs) and seqs[0] == 0  # the first ones were kept
    finally:
        cap.close()
        sender.close()


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recv-loop"])
def test_recv_capture_snaplen_and_truncation(lab, batched):
    prog = bpf.compile_filter("tcp and dst port 9")
    with lab.inside("online"):
        raw = open_raw_ip_capture(prog, snaplen=100, batched=batched)
        pkt = open_packet_capture(["eth0"], prog, ring=False, snaplen=100, batched=batched)
        unfiltered = open_raw_ip_capture(None, snaplen=100, batched=batched)
    with lab.inside("client"):
        sender = RawSender()
    try:
        dst = socket.inet_aton(lab.ip["online"])
        for i in range(150):  # 140-byte packets
            sender.send(_probe(lab.ip["client"], lab.ip["online"], i), dst)
        for cap in (raw, pkt):
            got = drain(cap, lambda p: len(p) >= 150)
            assert [len(p) for p in got] == [100] * 150
            assert [parse(p)["seq"] for p in got] == list(range(150))
            assert cap.kernel_stats()["read"] == 150
            # the filter's accept value cut them to the snaplen: as asked, not counted
            assert cap.truncated == 0
        # no filter: the 100-byte buffer cut them, and that is counted
        got = [p for p in drain(unfiltered) if parse(p)["dport"] == 9]
        assert len(got) == 150 and unfiltered.truncated >= 150
    finally:
        for c in (raw, pkt, unfiltered):
            c.close()
        sender.close()


@pytest.mark.parametrize("version", [2, 3])
def test_ring_the_kernel_refuses_falls_back_to_socket_reads(lab, version):
    """A 2 GB block is refused by the kernel at once (EINVAL, nothing is
    allocated): the capture still works, with socket reads."""
    prog = bpf.compile_filter("tcp and dst port 9")
    with lab.inside("online"):
        cap = open_packet_capture(
            ["eth0"], prog, version=version, block_size=1 << 31, ring_bytes=1 << 31
        )
    with lab.inside("client"):
        sender = RawSender()
    try:
        assert cap.kind == "packet-recv"
        sender.send(
            _probe(lab.ip["client"], lab.ip["online"], 5), socket.inet_aton(lab.ip["online"])
        )
        got = drain(cap, lambda p: len(p) >= 1)
        assert [parse(p)["seq"] for p in got] == [5]
    finally:
        cap.close()
        sender.close()
