"""playbooks/bundle.yml builds a complete, self-checking offline bundle.

Needs the package indexes (PyPI and Debian 12) on the controller, as the
operator's build machine has.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile

import pytest

from .conftest import REPO, run, tail

ARCHIVE = REPO / "out" / "bundle" / "pycopy-bundle.tar.gz"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is needed to gather the Debian packages")
    # a full build, whatever is in place (the other tests reuse it: tool_env)
    result = run(["ansible-playbook", "playbooks/bundle.yml", "-e", "offline_bundle_reuse=false"],
                 timeout=600)
    assert result.returncode == 0, tail(result)
    assert ": reused, built from" not in result.stdout
    root = tmp_path_factory.mktemp("bundle")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def test_a_second_build_from_the_same_inputs_reuses_the_bundle(bundle):
    before = (ARCHIVE.stat().st_mtime_ns, hashlib.sha256(ARCHIVE.read_bytes()).hexdigest())
    record = (ARCHIVE.parent / "pycopy-bundle.inputs").read_text().strip()
    result = run(["ansible-playbook", "playbooks/bundle.yml", "-e", "offline_bundle_reuse=true"],
                 timeout=120)
    assert result.returncode == 0, tail(result)
    out = " ".join(result.stdout.split())
    assert f"pycopy-bundle.tar.gz: reused, built from these same inputs (offline_bundle_reuse; inputs {record[:12]})" in out
    assert "Build the engine wheel" not in out
    assert (ARCHIVE.stat().st_mtime_ns, hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()) == before


def test_manifest_checksums_match_every_file(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = manifest["sha256"]
    on_disk = {
        str(p.relative_to(bundle))
        for p in bundle.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    }
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(listed)


def test_engine_wheel_and_its_dependencies_are_inside(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {w["name"] for w in manifest["wheels"]}
    assert {"pycopy_engine", "scapy", "pip"} <= names
    assert (bundle / manifest["engine"]["wheel"]).exists()
    # Installable with no index at all (pip resolves only from the bundle).
    target = bundle / "site"
    result = run(
        [
            "python3",
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--dry-run",
            "--find-links",
            str(bundle / "wheels"),
            "--target",
            str(target),
            str(bundle / manifest["engine"]["wheel"]),
            "scapy",
        ],
        timeout=120,
    )
    assert result.returncode == 0, tail(result)


def test_debian_packages_with_dependencies_and_apt_index(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    packages = {p["package"] for p in manifest["os"]["packages"]}
    assert {"libpcap0.8", "chrony"} <= packages
    # Dependencies travel too (resolved against an empty system).
    assert {"libc6", "libedit2", "libgnutls30"} <= packages
    index = (bundle / "debs" / "Packages").read_text()
    for package in packages:
        assert f"Package: {package}\n" in index
    assert index.count("SHA256: ") == len(packages)
