"""Fixtures for the safety scenario's verify: five lab hosts over SSH.

Shares lab_client (requests from the client, the target's log) with the
default scenario; adds the second online host.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "default" / "tests"))

from lab_client import KEY, MGMT  # noqa: E402

HOSTS = {**MGMT, "online2": "10.242.0.14"}


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, testinfra.host.Host]:
    config = tmp_path_factory.mktemp("ssh") / "config"
    config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return {
        name: testinfra.get_host(
            f"paramiko://root@{addr}", ssh_identity_file=KEY, ssh_config=str(config), timeout=10
        )
        for name, addr in HOSTS.items()
    }
