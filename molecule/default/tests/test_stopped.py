"""After side_effect (playbooks/stop.yml): everything replay.yml did is undone."""

from __future__ import annotations

import pytest
from lab_client import (
    DATA,
    INTERCEPT_PORT,
    ONLINE_PORT,
    TARGET_LOG,
    logged_paths,
    phase,
    send_requests,
)

pytestmark = pytest.mark.skipif(
    phase() != "stopped", reason="deployment running (before side_effect)"
)


@pytest.mark.parametrize(
    ("host", "unit"),
    [
        ("online", "pycopy-tcpcopy.service"),
        ("assistant", "pycopy-intercept.service"),
        ("target", "pycopy-testserver-route.service"),
    ],
)
def test_units_stopped_and_removed(lab, host, unit):
    assert not lab[host].service(unit).is_running
    assert not lab[host].file(f"/etc/systemd/system/{unit}").exists


def test_route_removed(lab):
    assert lab["target"].run("ip -o route show %s/32", DATA["client"]).stdout.strip() == ""


def test_rp_filter_back_to_strict(lab):
    # prepare.yml made it strict (1) before replay.yml relaxed it.
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth1.rp_filter"):
        assert lab["target"].sysctl(key) == 1, key
    assert not lab["target"].file("/etc/sysctl.d/60-pycopy-route.conf").exists


def test_ip_forward_setting_removed(lab):
    assert lab["assistant"].sysctl("net.ipv4.ip_forward") == 0  # its value before pycopy
    assert not lab["assistant"].file("/etc/sysctl.d/60-pycopy-intercept.conf").exists


def test_intercept_port_closed(lab):
    assert not lab["assistant"].socket(f"tcp://0.0.0.0:{INTERCEPT_PORT}").is_listening


def test_traffic_no_longer_replayed(lab):
    tag, answers = send_requests(lab["client"], f"http://{DATA['online']}:{ONLINE_PORT}", 10)
    assert all(body is not None and body.startswith("online ") for body in answers.values())
    assert logged_paths(lab["target"], TARGET_LOG, tag, 1, wait=3) == []


@pytest.mark.parametrize("host", ["assistant", "target"])
def test_firewall_openings_closed_site_policy_kept(lab, host):
    rules = lab[host].run("iptables -S INPUT").stdout.splitlines()
    assert "-P INPUT DROP" in rules
    assert not [r for r in rules if "pycopy" in r]


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("online", "/etc/logrotate.d/pycopy-tcpcopy"),
        ("assistant", "/etc/logrotate.d/pycopy-intercept"),
        ("online", "/etc/prometheus/rules/pycopy-alerts.yml"),
    ],
)
def test_logrotate_and_alert_rules_removed(lab, host, path):
    assert not lab[host].file(path).exists
