"""Static checks of the platform half: syntax of the new playbooks, complete argument specs."""

from __future__ import annotations

import pytest
import yaml

from .conftest import REPO, run, tail

PLATFORM_ROLES = ["host_prep", "pycopy_engine", "offline_bundle"]


@pytest.mark.parametrize("inventory", ["inventory/production", "inventory/lab"])
def test_interpreter_playbook_syntax(inventory):
    result = run(
        ["ansible-playbook", "--syntax-check", "-i", inventory, "playbooks/interpreter.yml"],
        timeout=120,
    )
    assert result.returncode == 0, tail(result)


@pytest.mark.parametrize("role", PLATFORM_ROLES)
def test_argument_specs_list_every_default(role):
    """meta/argument_specs.yml describes every public variable of defaults/main.yml, and no other."""
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), set(defaults) ^ set(options)
    for name, option in options.items():
        assert option.get("description"), f"{role}: {name} has no description"


@pytest.mark.parametrize(
    "role", PLATFORM_ROLES + ["tcpcopy", "intercept", "testserver_route", "preflight"]
)
def test_every_role_has_a_readme_naming_its_variables(role):
    readme = (REPO / "roles" / role / "README.md").read_text()
    assert "## How to undo" in readme and "## Variables" in readme
    if role in PLATFORM_ROLES:
        defaults = (
            yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
        )
        missing = [name for name in defaults if name not in readme]
        assert not missing, f"{role}/README.md does not describe {missing}"


def test_vars_files_of_every_platform_exist():
    vars_dir = REPO / "roles" / "host_prep" / "vars"
    platforms = yaml.safe_load((vars_dir / "platforms.yml").read_text())
    assert set(platforms["host_prep_platforms_supported"]) == {
        "Debian",
        "Ubuntu",
        "RedHat",
        "Rocky",
        "AlmaLinux",
        "CentOS",
    }
    for family in ("Debian", "RedHat"):
        constants = yaml.safe_load((vars_dir / f"{family}.yml").read_text())
        assert {
            "host_prep__libpcap_package",
            "host_prep__chrony_service",
            "host_prep__system_bindings",
        } <= set(constants)
