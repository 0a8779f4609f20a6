"""Fixtures for the cloud scenario's verify: client, online and target over SSH.

Shares lab_client (requests from the client, the target's log, the hosts)
with the default scenario (molecule.yml puts molecule/default/tests on
PYTHONPATH). There is no assistant in this topology.
"""

from __future__ import annotations

import pytest
import testinfra
from lab_client import MGMT, lab_hosts


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, testinfra.host.Host]:
    return lab_hosts({h: MGMT[h] for h in ("client", "online", "target")},
                     tmp_path_factory.mktemp("ssh"))
