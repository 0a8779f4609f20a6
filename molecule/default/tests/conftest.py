"""Fixtures for the verify step: the lab hosts over SSH (paramiko backend).

The hosts are the booted nspawn hosts of scripts/lab/ (management addresses
10.242.0.10-13). create.yml writes the deployment phase ("running") and the
side_effect step ("stopped") to the ephemeral directory; each test module
runs in its own phase and is skipped in the other.
"""

from __future__ import annotations

import pytest
import testinfra
from lab_client import MGMT, lab_hosts


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, testinfra.host.Host]:
    return lab_hosts(MGMT, tmp_path_factory.mktemp("ssh"))
