from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def workdir(lab_workdir: Path) -> Path:
    return lab_workdir


@pytest.fixture()
def logs(http_servers):
    """Positions in both servers' logs before the test: a test reads only its own records."""
    start = {h: len(s.records()) for h, s in http_servers.items()}

    def new(host: str, n: int = 0, timeout: float = 15.0):
        s = http_servers[host]
        recs = s.wait_records(start[host] + n, timeout) if n else s.records()
        return recs[start[host]:]

    return new
