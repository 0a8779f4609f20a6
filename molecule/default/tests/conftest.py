"""Fixtures for the verify step: the lab hosts over SSH (paramiko backend).

The hosts are the booted nspawn hosts of scripts/lab/ (management addresses
10.242.0.10-13). create.yml writes the deployment phase ("running") and the
side_effect step ("stopped") to the ephemeral directory; each test module
runs in its own phase and is skipped in the other.
"""

from __future__ import annotations

import pytest
import testinfra
from lab_client import KEY, MGMT


@pytest.fixture(scope="session")
def ssh_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ssh") / "config"
    path.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return str(path)


@pytest.fixture(scope="session")
def lab(ssh_config: str) -> dict[str, testinfra.host.Host]:
    return {
        name: testinfra.get_host(
            f"paramiko://root@{addr}", ssh_identity_file=KEY, ssh_config=ssh_config, timeout=10
        )
        for name, addr in MGMT.items()
    }
