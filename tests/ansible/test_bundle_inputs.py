"""bundle_inputs.py: the digest that lets bundle.yml keep a bundle built from
the same engine source, role and settings (offline_bundle_reuse), and rebuild
after any change to them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "roles" / "offline_bundle" / "files" / "bundle_inputs.py"
SETTINGS = {"python_version": "3.9", "debian_packages": ["libpcap0.8", "chrony"],
            "debian_status": ""}


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    project, role, out = tmp_path / "project", tmp_path / "role", tmp_path / "out"
    (project / "pycopy_engine" / "wire").mkdir(parents=True)
    (project / "pycopy_engine" / "__init__.py").write_text("__version__ = '1'\n")
    (project / "pycopy_engine" / "wire" / "tcpip.py").write_text("X = 1\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text("---\n")
    out.mkdir()
    return {"project": project, "role": role, "out": out}


def check(t: dict[str, Path], settings: dict = SETTINGS) -> dict:
    res = subprocess.run([sys.executable, str(SCRIPT), str(t["project"]), str(t["role"]),
                          str(t["out"]), json.dumps(settings)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def built(t: dict[str, Path]) -> str:
    """What build.yml leaves: the archive and the record of its inputs."""
    first = check(t)
    (t["out"] / "pycopy-bundle.tar.gz").write_bytes(b"archive")
    (t["out"] / "pycopy-bundle.inputs").write_text(first["digest"] + "\n")
    return first["digest"]


def test_no_bundle_or_no_record_is_not_reusable(tree):
    first = check(tree)
    assert not first["reusable"] and "no pycopy-bundle.tar.gz" in first["why"]
    (tree["out"] / "pycopy-bundle.tar.gz").write_bytes(b"archive")
    second = check(tree)
    assert not second["reusable"] and "no pycopy-bundle.inputs" in second["why"]
    assert first["digest"] == second["digest"]


def test_same_inputs_are_reusable_and_caches_do_not_count(tree):
    digest = built(tree)
    # what neither the wheel nor the role uses: bytecode, a compiled build
    cache = tree["project"] / "pycopy_engine" / "__pycache__"
    cache.mkdir()
    (cache / "tcpip.cpython-311.pyc").write_bytes(b"\0")
    (tree["project"] / "pycopy_engine" / "_accel_manifest.json").write_text("{}")
    (tree["project"] / "pycopy_engine" / "wire" / "tcpip.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    assert check(tree) == {"digest": digest, "reusable": True, "why": "built from these same inputs"}


@pytest.mark.parametrize("change", ["engine_edit", "engine_new_file", "engine_rename", "role", "pyproject",
                                    "readme", "settings", "status_content"])
def test_any_change_of_the_inputs_rebuilds(tree, change, tmp_path):
    settings = dict(SETTINGS)
    status = tmp_path / "status"
    status.write_text("Package: a\n")
    settings["debian_status"] = str(status)
    first = check(tree, settings)
    (tree["out"] / "pycopy-bundle.tar.gz").write_bytes(b"archive")
    (tree["out"] / "pycopy-bundle.inputs").write_text(first["digest"] + "\n")
    assert check(tree, settings)["reusable"]
    engine = tree["project"] / "pycopy_engine"
    if change == "engine_edit":
        (engine / "wire" / "tcpip.py").write_text("X = 2\n")
    elif change == "engine_new_file":
        (engine / "wire" / "new.py").write_text("")
    elif change == "engine_rename":
        shutil.move(engine / "wire" / "tcpip.py", engine / "tcpip.py")
    elif change == "role":
        (tree["role"] / "tasks" / "build.yml").write_text("---\n")
    elif change == "pyproject":
        (tree["project"] / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    elif change == "readme":
        (tree["project"] / "README.md").write_text("# x\n")
    elif change == "settings":
        settings["debian_packages"] = ["libpcap0.8"]
    elif change == "status_content":
        status.write_text("Package: b\n")
    after = check(tree, settings)
    assert not after["reusable"] and after["digest"] != first["digest"]
    assert "other inputs" in after["why"]


def test_bad_arguments_exit_non_zero_naming_the_problem(tree, tmp_path):
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(tree["role"]),
                          str(tree["out"]), "{}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "holds no pycopy_engine/" in bad.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tree["project"]), str(tree["role"]),
                          str(tree["out"]), "{not json"], capture_output=True, text=True)
    assert bad.returncode == 2 and "SETTINGS_JSON is not JSON" in bad.stderr
