"""finish_bundle.py records what the bundle's OS packages fit and refuses what fits no platform.

Real .deb files are built here with dpkg-deb; the wheels are named files
(finish_bundle.py reads only their names and checksums).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "roles" / "offline_bundle" / "files" / "finish_bundle.py"
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is needed")


def deb(debs: Path, package: str, arch: str) -> None:
    tree = debs.parent / f"tree-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: {arch}\n"
        "Maintainer: pycopy tests <tests@example.invalid>\nDescription: test package\n"
    )
    subprocess.run(
        [
            "dpkg-deb",
            "--build",
            "--root-owner-group",
            str(tree),
            str(debs / f"{package}_1.0_{arch}.deb"),
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)


def staging(tmp_path: Path, wheels: list[str], debs: list[tuple[str, str]]) -> Path:
    root = tmp_path / "staging"
    for sub in ("wheels", "debs", "controller/collections", "controller/wheels"):
        (root / sub).mkdir(parents=True)
    for name in wheels:
        (root / "wheels" / name).write_bytes(name.encode())
    for package, arch in debs:
        deb(root / "debs", package, arch)
    return root


def finish(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(root),
            "--distribution",
            "Debian",
            "--release",
            "12",
            "--codename",
            "bookworm",
        ],
        capture_output=True,
        text=True,
    )


PURE = [
    "pycopy_engine-0.1.0-py3-none-any.whl",
    "scapy-2.6.1-py3-none-any.whl",
    "pip-25.0-py3-none-any.whl",
]


def test_manifest_records_release_and_architecture_of_the_os_packages(tmp_path):
    root = staging(tmp_path, PURE, [("libpcap0.8", "amd64"), ("tzdata", "all")])
    (root / "controller" / "collections" / "ansible-posix-2.1.0.tar.gz").write_bytes(b"x")
    (root / "controller" / "wheels" / "ansible_core-2.19.14-py3-none-any.whl").write_bytes(b"y")
    result = finish(root)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((root / "manifest.json").read_text())
    os_part = manifest["os"]
    assert {
        k: os_part[k]
        for k in ("distribution", "release", "codename", "architecture", "dpkg_architecture")
    } == {
        "distribution": "Debian",
        "release": "12",
        "codename": "bookworm",
        "architecture": "x86_64",
        "dpkg_architecture": "amd64",
    }
    assert {p["package"] for p in os_part["packages"]} == {"libpcap0.8", "tzdata"}
    assert manifest["controller"]["collections"] == [
        {
            "name": "ansible.posix",
            "version": "2.1.0",
            "file": "controller/collections/ansible-posix-2.1.0.tar.gz",
        }
    ]
    assert manifest["controller"]["wheels"][0]["name"] == "ansible_core"
    assert "controller/collections/ansible-posix-2.1.0.tar.gz" in manifest["sha256"]
    assert "Debian 12 (bookworm) x86_64" in result.stdout


def test_arm64_packages_are_recorded_as_aarch64(tmp_path):
    root = staging(tmp_path, PURE, [("libpcap0.8", "arm64")])
    assert finish(root).returncode == 0
    assert json.loads((root / "manifest.json").read_text())["os"]["architecture"] == "aarch64"


def test_a_wheel_that_is_not_pure_python_is_refused(tmp_path):
    root = staging(tmp_path, [*PURE, "cryptography-44.0.0-cp39-abi3-manylinux_2_28_x86_64.whl"], [])
    result = finish(root)
    assert result.returncode == 1
    assert "not pure Python" in result.stderr and "cryptography-44.0.0" in result.stderr
    assert not (root / "manifest.json").exists()


def test_os_packages_of_two_architectures_are_refused(tmp_path):
    root = staging(tmp_path, PURE, [("libpcap0.8", "amd64"), ("chrony", "arm64")])
    result = finish(root)
    assert result.returncode == 1
    assert "several or unknown architectures: ['amd64', 'arm64']" in result.stderr
