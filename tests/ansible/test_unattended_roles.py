"""What the roles install for running for days (issue 12): the logrotate
configuration per service, the same as deploy/logrotate/pycopy, and the
Prometheus alert rules, the same file as deploy/prometheus/pycopy-alerts.yml."""

from __future__ import annotations

import re
import shutil
import subprocess

import jinja2
import pytest
import yaml

from .conftest import REPO

SHIPPED_LOGROTATE = REPO / "deploy" / "logrotate" / "pycopy"


def _render(role: str, **extra) -> str:
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    src = REPO / "roles" / role / "templates" / "etc" / "logrotate.d" / f"pycopy-{role}.j2"
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(src.read_text()).render(
        {**defaults, "ansible_managed": "Ansible managed", **extra})


def _directives(text: str) -> list:
    """The directives of a logrotate file's block, without comments and the path line."""
    body = text[text.index("{") + 1:text.rindex("}")]
    lines = [line.strip() for line in body.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("role", ["tcpcopy", "intercept"])
def test_role_logrotate_config_is_the_shipped_one_for_its_service(role):
    text = _render(role)
    assert f'"/var/log/pycopy/{role}.log" {{' in text
    shipped = [d for d in _directives(SHIPPED_LOGROTATE.read_text()) if d != "sharedscripts"]
    other = "intercept" if role == "tcpcopy" else "tcpcopy"
    shipped = [d for d in shipped if f"pycopy-{other}.service" not in d]
    assert _directives(text) == shipped
    assert "create" not in _directives(text)  # the non-root service creates its new file
    assert (f"systemctl kill --kill-whom=main --signal=USR1 pycopy-{role}.service"
            in text)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
@pytest.mark.parametrize("role", ["tcpcopy", "intercept"])
def test_role_logrotate_config_is_accepted_by_logrotate(role, tmp_path):
    log = tmp_path / "with space" / f"{role}.log"
    conf = tmp_path / f"pycopy-{role}"
    conf.write_text(_render(role, **{f"{role}_log_file": str(log)}))
    r = subprocess.run(["logrotate", "-d", "-s", "/dev/null", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert str(log) in r.stderr and "error" not in r.stderr.lower()


def test_role_alert_rules_are_the_shipped_file():
    shipped = REPO / "deploy" / "prometheus" / "pycopy-alerts.yml"
    copy = REPO / "roles" / "tcpcopy" / "files" / "pycopy-alerts.yml"
    assert copy.read_bytes() == shipped.read_bytes(), "copy deploy/prometheus/pycopy-alerts.yml"


@pytest.mark.parametrize("role", ["tcpcopy", "intercept"])
def test_units_restart_on_failure_with_a_start_limit(role):
    unit = (REPO / "roles" / role / "templates" / "etc" / "systemd" / "system"
            / f"pycopy-{role}.service.j2").read_text()
    unit_section, service_section = unit.split("[Service]")
    assert re.search(r"^StartLimitIntervalSec=\{\{ %s_start_limit_interval \}\}$" % role,
                     unit_section, re.M)
    assert re.search(r"^StartLimitBurst=\{\{ %s_start_limit_burst \}\}$" % role,
                     unit_section, re.M)
    assert re.search(r"^Restart=on-failure$", service_section, re.M)
    assert re.search(r"^RestartSec=\{\{ %s_restart_sec \}\}$" % role, service_section, re.M)
