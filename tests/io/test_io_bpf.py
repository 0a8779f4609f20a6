"""pycopy_engine.io.bpf: compiling (no root needed), errors, -x filters."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import namedtuple

import pytest

from pycopy_engine.errors import ConfigError
from pycopy_engine.io import bpf
from pycopy_engine.io.capture import build_program


def test_compile_raw_starts_at_ip_header():
    prog = bpf.compile_filter("tcp and dst port 80", bpf.DLT_RAW)
    insns = bpf.unpack_insns(prog)
    # ldb [0]; and #0xf0; jeq #0x40 -- the IP version nibble at offset 0
    assert insns[0] == (0x30, 0, 0, 0)
    assert insns[1][0] == 0x54 and insns[1][3] == 0xF0
    assert insns[2][0] == 0x15 and insns[2][3] == 0x40
    # the protocol byte is read at offset 9 of the IP header, not 14 + 9
    assert (0x30, 0, 0, 9) in insns


def test_linktype_101_is_the_same_program_as_12():
    assert bpf.compile_filter("tcp and src port 80", bpf.LINKTYPE_RAW) == bpf.compile_filter(
        "tcp and src port 80", bpf.DLT_RAW
    )


def test_ethernet_program_reads_the_ethertype():
    insns = bpf.unpack_insns(bpf.compile_filter("tcp", bpf.DLT_EN10MB))
    assert insns[0] == (0x28, 0, 0, 12)  # ldh [12]


def test_bad_expression_reports_libpcap_message():
    with pytest.raises(ConfigError) as ei:
        bpf.compile_filter("tcp and dst prt 80")
    msg = str(ei.value)
    assert "tcp and dst prt 80" in msg and "unknown host 'prt'" in msg
    with pytest.raises(ConfigError, match="syntax error"):
        bpf.compile_filter("tcp and and")


def test_scapy_is_not_imported_by_the_io_modules():
    code = (
        "import sys; import pycopy_engine.io.bpf, pycopy_engine.io.capture, "
        "pycopy_engine.io.rawsend, pycopy_engine.io.loop; "
        "print(any(m.startswith('scapy') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_filter_from_maps():
    Map = namedtuple("Map", "online_ip online_port target_ip target_port")
    maps = [
        ("10.0.0.1", 80),
        (None, 8080),
        Map("0.0.0.0", 3306, "10.0.0.2", 3306),
        (socket.inet_aton("10.0.0.3"), 80),
        ("10.0.0.1", 80),  # duplicate
    ]
    assert bpf.tcpcopy_filter_from_maps(maps) == (
        "tcp and ((dst port 80 and dst host 10.0.0.1) or (dst port 8080) or "
        "(dst port 3306) or (dst port 80 and dst host 10.0.0.3))"
    )
    # and libpcap accepts it
    assert bpf.compile_filter(bpf.tcpcopy_filter_from_maps(maps))
    with pytest.raises(ConfigError):
        bpf.tcpcopy_filter_from_maps([])


def test_ifindex_prefix_jumps_land_on_the_program():
    base = bpf.pack_insns([(bpf.BPF_RET_K, 0, 0, 1234)])
    insns = bpf.unpack_insns(bpf.restrict_to_ifindexes(base, [3, 7, 9]))
    n = 3
    assert insns[0][3] == (bpf.SKF_AD_OFF + bpf.SKF_AD_IFINDEX) & 0xFFFFFFFF
    for p in range(1, n + 1):
        code, jt, jf, k = insns[p]
        assert code == bpf.BPF_JEQ_K and k == [3, 7, 9][p - 1]
        assert p + 1 + jt == n + 2  # match -> the original program
        assert jf == 0
    assert insns[n + 1] == (bpf.BPF_RET_K, 0, 0, 0)  # no match on the last -> drop
    assert insns[n + 2] == (bpf.BPF_RET_K, 0, 0, 1234)


def test_build_program_lowers_accept_to_snaplen():
    prog = bpf.compile_filter("tcp")
    insns = bpf.unpack_insns(build_program(prog, 120))
    rets = [k for c, _, _, k in insns if c == bpf.BPF_RET_K]
    assert set(rets) == {0, 120}


def test_attach_rejects_malformed_program():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ConfigError):
            bpf.attach_filter(s, b"\x00" * 7)
        # a program that jumps out of bounds: the kernel's checker refuses it
        with pytest.raises(ConfigError, match="kernel refused"):
            bpf.attach_filter(s, bpf.pack_insns([(bpf.BPF_JEQ_K, 5, 5, 0)]))
        bpf.attach_filter(s, bpf.compile_filter("udp"))  # any socket takes a filter
        bpf.detach_filter(s)
    finally:
        s.close()
