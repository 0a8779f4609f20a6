"""ansible-lint (production profile) and syntax checks of every playbook."""

from __future__ import annotations

import shutil

import pytest

from .conftest import REPO, run, tail

PLAYBOOKS = ["replay.yml", "stop.yml", "check.yml", "bundle.yml", "interpreter.yml", "preflight.yml",
             "compare.yml"]
MOLECULE_PLAYBOOKS = ["create.yml", "prepare.yml", "converge.yml", "side_effect.yml", "undo.yml",
                      "destroy.yml"]


@pytest.mark.skipif(shutil.which("ansible-lint") is None, reason="ansible-lint not installed")
def test_ansible_lint_production_profile_passes():
    result = run(["ansible-lint", "--profile", "production"], timeout=300)
    assert result.returncode == 0, tail(result)
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("inventory", ["inventory/production", "inventory/lab"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook, inventory):
    result = run(
        ["ansible-playbook", "--syntax-check", "-i", inventory, f"playbooks/{playbook}"],
        timeout=120,
    )
    assert result.returncode == 0, tail(result)


@pytest.mark.parametrize("playbook", MOLECULE_PLAYBOOKS)
def test_molecule_playbook_syntax(playbook):
    result = run(
        [
            "ansible-playbook",
            "--syntax-check",
            "-i",
            "inventory/lab",
            f"molecule/default/{playbook}",
        ],
        timeout=120,
    )
    assert result.returncode == 0, tail(result)


def test_production_inventory_has_the_three_groups():
    result = run(["ansible-inventory", "-i", "inventory/production", "--list"], timeout=60)
    assert result.returncode == 0, tail(result)
    for group in ("online", "target", "assistant"):
        assert f'"{group}"' in result.stdout


def test_argument_specs_reject_a_bad_variable():
    # meta/argument_specs.yml makes a wrong value fail early with a clear message.
    result = run(
        [
            "ansible",
            "localhost",
            "--check",
            "-m",
            "ansible.builtin.include_role",
            "-a",
            "name=intercept",
            "-e",
            "intercept_state=sideways",
            "-e",
            "target=10.0.0.12:8080",
        ],
        timeout=120,
    )
    assert result.returncode != 0
    assert "intercept_state" in result.stdout + result.stderr
    assert (REPO / "roles" / "intercept" / "meta" / "argument_specs.yml").exists()
