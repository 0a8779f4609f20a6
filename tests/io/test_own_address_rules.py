"""Own-address mode's firewall rule text, answer filter and /proc port readers."""

from __future__ import annotations

import socket

from pycopy_engine.cli.own_address import answer_filter
from pycopy_engine.io import droprule, hostports
from pycopy_engine.io.sysinfo import filter_matches
from pycopy_engine.wire.tcpip import ACK, SYN, build_ipv4_tcp

T, O = "10.9.0.12", "10.9.0.11"


def test_nft_script_replaces_the_table_and_matches_only_answers_to_the_pool():
    s = droprule.nft_script([(T, 80)], [O], [(1024, 32767), (61000, 65535)])
    first, second = s.splitlines()[:2]
    assert (first, second) == ("add table ip pycopy_noassist", "delete table ip pycopy_noassist")
    assert "hook prerouting priority -300" in s
    assert (f"ip saddr {T} tcp sport 80 ip daddr {{ {O} }} tcp dport {{ 1024-32767, 61000-65535 }}"
            " counter drop") in s
    assert s.count("drop") == 1


def test_iptables_rules_one_per_target_address_and_interval():
    rules = droprule.iptables_rules([(T, 80), (T, 443)], [O], [(1024, 2000), (61000, 65535)])
    assert len(rules) == 4
    assert rules[0] == ["-A", "PYCOPY_NOASSIST", "-s", T, "-d", O, "-p", "tcp", "--sport", "80",
                        "--dport", "1024:2000", "-j", "DROP"]


def _pkt(src, dst, sport, dport):
    return build_ipv4_tcp(socket.inet_aton(src), socket.inet_aton(dst), sport, dport, 1, 2,
                          SYN | ACK, 1000)


def test_answer_filter_takes_the_targets_answers_to_this_host_only():
    expr = answer_filter([(T, 80)], [O])
    assert filter_matches(expr, _pkt(T, O, 80, 5000))
    assert not filter_matches(expr, _pkt(T, O, 81, 5000))  # another service of the target
    assert not filter_matches(expr, _pkt("10.9.0.99", O, 80, 5000))  # another host
    assert not filter_matches(expr, _pkt(T, "10.9.0.10", 80, 5000))  # not to this host


def test_proc_readers(tmp_path):
    rng = tmp_path / "range"
    rng.write_text("32768\t60999\n")
    assert hostports.local_port_range(str(rng)) == (32768, 60999)
    tcp = tmp_path / "tcp"
    tcp.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        "   1: 0B00090A:1F90 0C00090A:0050 01 00000000:00000000 00:00000000 00000000     0\n"
        "   2: 0B00090A:EA60 0C00090A:0050 06 00000000:00000000 00:00000000 00000000     0\n")
    paths = (str(tcp), str(tmp_path / "missing"))
    assert hostports.listening_ports(paths) == {80}
    assert hostports.live_ports(paths) == {80, 8080, 60000}
    busy = hostports.LivePorts(paths=paths)
    assert busy(8080) and not busy(8081)


def test_answer_filter_leaves_out_the_hosts_own_connections():
    expr = answer_filter([(T, 80)], [O], (32768, 60999))
    assert filter_matches(expr, _pkt(T, O, 80, 5000))
    assert filter_matches(expr, _pkt(T, O, 80, 61000))
    assert not filter_matches(expr, _pkt(T, O, 80, 40000))  # an ephemeral port: the host's own
