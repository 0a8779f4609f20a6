"""The controller's collections travel in the bundle and install with no network.

pack_collections.py packs this machine's installed ansible.posix; the archive
is installed with `ansible-galaxy collection install --offline` into an empty
collections path (the installed copies on sys.path hidden), and ansible-doc
then finds the firewalld module there, as on a controller inside the site.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO, tool_env

SCRIPT = REPO / "roles" / "offline_bundle" / "files" / "pack_collections.py"


def test_packed_collection_installs_offline_and_is_usable(tmp_path):
    packed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "out"), "ansible.posix"],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    assert packed.returncode == 0, packed.stderr
    record = json.loads(packed.stdout.splitlines()[0])
    archive = tmp_path / "out" / record["file"]
    assert record["name"] == "ansible.posix" and archive.exists() and record["files"] > 10

    isolated = {**tool_env(), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    target = tmp_path / "collections"
    before = subprocess.run(
        ["ansible-doc", "-t", "module", "ansible.posix.firewalld"],
        capture_output=True,
        text=True,
        env={**isolated, "ANSIBLE_COLLECTIONS_PATH": str(target)},
        timeout=120,
    )
    assert (
        "ansible.posix.firewalld" not in before.stdout
    )  # hidden: the install below is what counts
    install = subprocess.run(
        ["ansible-galaxy", "collection", "install", "--offline", "-p", str(target), str(archive)],
        capture_output=True,
        text=True,
        env=isolated,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert f"ansible.posix:{record['version']} was installed successfully" in install.stdout
    doc = subprocess.run(
        ["ansible-doc", "-t", "module", "ansible.posix.firewalld"],
        capture_output=True,
        text=True,
        env={**isolated, "ANSIBLE_COLLECTIONS_PATH": str(target)},
        timeout=120,
    )
    assert doc.returncode == 0, doc.stderr
    assert str(target) in doc.stdout


def test_a_collection_that_is_not_installed_is_named(tmp_path):
    packed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "nosuch.collection"],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    assert packed.returncode != 0
    assert "nosuch.collection is not installed" in packed.stderr
