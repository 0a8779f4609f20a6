"""Shared pytest fixtures: the four-namespace lab and its HTTP servers.

``lab`` (module scope) builds a fresh lab with a unique prefix ``pt<3 hex>``
and a subnet ``10.231.<100-199>`` derived from it; it skips with a reason when
not root or when network namespaces cannot be made.  ``http_servers`` starts
the HTTP server on online and target (names "online" and "target") and
returns them by host name; see tests/lab/services.py for reading their logs
and for ``run_client``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.lab.netns import (  # noqa: E402
    Lab,
    cleanup_prefix,
    lab_unavailable,
    new_lab_prefix,
    reap_orphans,
)
from tests.lab.services import HttpServerProc  # noqa: E402


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    reap_orphans("pt")  # labs of earlier runs that crashed
    prefix, subnet = new_lab_prefix()
    the_lab = Lab(prefix, subnet)
    try:
        the_lab.setup()
        yield the_lab
    finally:
        the_lab.close()
        cleanup_prefix(prefix)


@pytest.fixture(scope="module")
def lab_workdir(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"lab-{lab.prefix}")


@pytest.fixture(scope="module")
def http_servers(lab: Lab, lab_workdir: Path) -> Iterator[dict[str, HttpServerProc]]:
    servers = {h: HttpServerProc(lab, h, lab_workdir) for h in ("online", "target")}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With a compiled engine in this tree (make accel), the tests that replace
    an engine method cannot run: they are skipped, saying so."""
    marked = [i for i in items if i.get_closest_marker("pure_only")]
    if not marked:
        return
    from pycopy_engine import accel

    if not accel.status(load=True)["compiled"]:
        return
    skip = pytest.mark.skip(reason="replaces an engine method: the engine here is compiled"
                                   " (make accel); PYCOPY_PURE=1 runs it")
    for item in marked:
        item.add_marker(skip)
