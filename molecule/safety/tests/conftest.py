"""Fixtures for the safety scenario's verify: five lab hosts over SSH.

Shares lab_client (requests from the client, the target's log, the hosts)
with the default scenario (molecule.yml puts molecule/default/tests on
PYTHONPATH); adds the second online host.
"""

from __future__ import annotations

import pytest
import testinfra
from lab_client import MGMT, lab_hosts

HOSTS = {**MGMT, "online2": "10.242.0.14"}


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, testinfra.host.Host]:
    return lab_hosts(HOSTS, tmp_path_factory.mktemp("ssh"))
