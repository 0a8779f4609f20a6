from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def workdir(lab_workdir: Path) -> Path:
    return lab_workdir
