"""Options as the C tools spell them; bad values exit 2 naming option and value."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import intercept as icli
from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.core.mapping import parse_ip


def test_runbook_command_lines_parse():
    a = tcli.parse_args("-x 172.26.73.127:8000-172.26.73.128:8000 -s 172.26.73.129 -n 10 -d".split())
    assert a.maps[0].online_ip == parse_ip("172.26.73.127") and a.maps[0].target_port == 8000
    assert a.server_list == [("172.26.73.129", 36524)] and a.replicas == 10 and a.daemon
    cfg = tcli.make_config(a)
    assert cfg.replicas == 10 and cfg.keepalive_timeout == 720
    i = icli.build_parser().parse_args(["-i", "eth0", "-F", "tcp and src port 8000", "-d"])
    assert i.iface == "eth0" and i.filter == "tcp and src port 8000" and i.daemon


def test_every_tcpcopy_option():
    a = tcli.parse_args([
        "-x", "80-10.0.0.12:8080,10.0.0.11:443-10.0.0.12:8443", "-s", "10.0.0.13,10.0.0.14:4000",
        "-p", "4001", "-C", "4", "-c", "10.1.1.x", "-H", "10.0.0.10", "-n", "3", "-f", "2",
        "-m", "512", "-M", "9000", "-D", "1400", "-R", "5", "-U", "2", "-t", "60", "-k", "90",
        "-r", "40", "-g", "-O", "-W", "-L", "-l", "/tmp/x.log", "-P", "/tmp/x.pid", "-F",
        "tcp dst port 80", "-B", "32", "-S", "2000"])
    assert [m.online_port for m in a.maps] == [80, 443]
    assert a.server_list == [("10.0.0.13", 4001), ("10.0.0.14", 4000)]
    cfg = tcli.make_config(a)
    assert len(cfg.clt_ips) == 254 and cfg.port_shift == 2 and cfg.mem_limit == 512 << 20
    assert (cfg.mtu, cfg.mss, cfg.rtt, cfg.session_timeout, cfg.keepalive_timeout) == (9000, 1400, 0.005, 60, 90)
    assert cfg.sample_percent == 40 and cfg.gradual and cfg.only_syn and cfg.no_wait and a.lonely
    assert a.conns == 4 and a.pidfile == "/tmp/x.pid"


@pytest.mark.parametrize("argv,needle", [
    (["-x", "80", "-s", "1.2.3.4"], "-x"),
    (["-x", "80-1.2.3:80", "-s", "1.2.3.4"], "'80-1.2.3:80'"),
    (["-x", "80-1.2.3.4:99999", "-s", "1.2.3.4"], "-x"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4:0"], "-s"),
    (["-x", "80-1.2.3.4:80", "-s", "nohost"], "'nohost'"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-n", "0"], "-n"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-r", "150"], "'150'"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-f", "40"], "-f"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-t", "abc"], "'abc'"),
    (["-x", "80-1.2.3.4:80"], "-s"),
    (["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-i", "eth0"], "would capture tcpcopy's own copies"),
])
def test_bad_tcpcopy_values_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_client_range_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.main(["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-c", "10.0.0.300"])
    assert exc.value.code == 2 and "-c" in capsys.readouterr().err


@pytest.mark.parametrize("value,why", [
    ("::1", "IPv6 is not supported"),
    ("2001:db8::10", "IPv6 is not supported"),
    ("10.0.0.1,fe80::1", "IPv6 is not supported"),
    ("::ffff:10.0.0.1", "IPv6 is not supported"),
    ("2001:db8::x", "IPv4"),
    ("client.example", "not an IPv4 address"),
])
def test_client_option_refuses_anything_but_ipv4(value, why, capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.main(["-x", "80-1.2.3.4:80", "-s", "1.2.3.4", "-c", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "option -c" in err and repr(value) in err and why in err, err


@pytest.mark.parametrize("argv,needle", [
    (["-i", "eth0"], "-F"),
    (["-F", "tcp and src prt 80"], "-F"),
    (["-F", "tcp", "-p", "0"], "-p"),
    (["-F", "tcp", "--allow", "10.0.0.0/33"], "--allow"),
    (["-F", "tcp", "-B", "0"], "invalid value '0': must be 1..4096"),
    (["-F", "tcp", "-B", "4097"], "-B: invalid value"),
])
def test_bad_intercept_values_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        icli.main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_version_and_help(capsys):
    for mod in (tcli, icli):
        with pytest.raises(SystemExit) as exc:
            mod.build_parser().parse_args(["-v"])
        assert exc.value.code == 0
        assert "internal version 6" in capsys.readouterr().out


def test_no_assistant_needs_no_s_and_defaults_to_the_hosts_own_address():
    a = tcli.parse_args(["-x", "80-127.0.0.2:8080", "--no-assistant"])
    assert a.no_assistant and a.server_list == []
    assert a.clt_ips == "127.0.0.1"  # the source address of the route to the target
    assert tcli.make_config(a).clt_ips == [parse_ip("127.0.0.1")]
    a = tcli.parse_args(["-x", "80-127.0.0.2:8080", "--no-assistant", "-c", "127.0.0.1", "-n", "3"])
    assert a.clt_ips == "127.0.0.1" and a.replicas == 3


@pytest.mark.parametrize("argv,needle", [
    (["-c", "10.254.77.1"], "option -c: invalid value '10.254.77.1': 10.254.77.1 is not an address"
                            " of this host"),
    (["-c", "127.0.0.1,10.254.77.1"], "10.254.77.1 is not an address of this host"),
    (["-c", "10.254.77.x"], "is not an address of this host"),
    (["-c", "::1"], "IPv6 is not supported"),
    (["-s", "127.0.0.1"], "option -s: invalid value '127.0.0.1': --no-assistant has no intercept"),
])
def test_no_assistant_refuses_foreign_client_addresses_and_s(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        tcli.parse_args(["-x", "80-127.0.0.2:8080", "--no-assistant", *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
