#!/usr/bin/env python3
"""Digest what an offline bundle is built from, and say whether the one in
place was built from the same.

Usage: bundle_inputs.py PROJECT_DIR ROLE_DIR OUTPUT_DIR SETTINGS_JSON

The digest covers the engine's source tree as the wheel packs it
(pyproject.toml, README.md, pycopy_engine/ without caches and compiled
builds), this role's own files, and SETTINGS_JSON (the role's settings: Python
version, platforms, packages, suite, the controller's part), plus the dpkg
status file the settings name, by content. Prints one JSON object:

  {"digest": "<sha256>", "reusable": true|false, "why": "..."}

``reusable`` is true when OUTPUT_DIR holds pycopy-bundle.tar.gz and
pycopy-bundle.inputs (written after each build) holds the same digest. What
the package indexes would serve today is not part of it: a reused bundle
keeps the wheels and .debs it was built with.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

ARCHIVE = "pycopy-bundle.tar.gz"
RECORD = "pycopy-bundle.inputs"
# Not packed into the wheel, or rebuilt on the side (make accel).
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so")
SKIP_NAMES = {"_accel_manifest.json"}


def _files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES):
                continue
            yield Path(dirpath) / name


def digest(project: Path, role: Path, settings: dict) -> str:
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(b"%d:%s\n" % (len(label), label.encode()))
        h.update(b"%d\n" % len(data))
        h.update(data)

    add("settings", json.dumps(settings, sort_keys=True).encode())
    status = settings.get("debian_status") or ""
    if status:
        add("debian_status", Path(status).read_bytes())
    for name in ("pyproject.toml", "README.md"):
        path = project / name
        add(name, path.read_bytes() if path.exists() else b"")
    for base, label in ((project / "pycopy_engine", "engine"), (role, "role")):
        for path in _files(base):
            add(f"{label}/{path.relative_to(base).as_posix()}", path.read_bytes())
    return h.hexdigest()


def check(project: Path, role: Path, output: Path, settings: dict) -> dict:
    now = digest(project, role, settings)
    record = output / RECORD
    if not (output / ARCHIVE).is_file():
        why = f"no {ARCHIVE} in {output}"
    elif not record.is_file():
        why = f"no {RECORD} beside it (built before this check existed)"
    elif record.read_text().strip() != now:
        why = "built from other inputs (engine source, role or settings changed)"
    else:
        return {"digest": now, "reusable": True, "why": "built from these same inputs"}
    return {"digest": now, "reusable": False, "why": why}


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    project, role, output = Path(argv[1]), Path(argv[2]), Path(argv[3])
    try:
        settings = json.loads(argv[4])
    except ValueError as exc:
        print(f"SETTINGS_JSON is not JSON: {exc}", file=sys.stderr)
        return 2
    if not (project / "pycopy_engine").is_dir():
        print(f"{project} holds no pycopy_engine/ (offline_bundle_project_dir)", file=sys.stderr)
        return 2
    print(json.dumps(check(project, role, output, settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
