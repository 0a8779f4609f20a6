#!/usr/bin/env python3
"""Pack installed Ansible collections as installable artifacts, for the controller's offline install.

Usage: pack_collections.py DEST_DIR NAMESPACE.NAME...

Each collection is taken from where this machine's ansible-galaxy finds it
(for example the `ansible` pip package) and written to
DEST_DIR/<namespace>-<name>-<version>.tar.gz with the layout that
`ansible-galaxy collection build` produces: MANIFEST.json, FILES.json and the
files FILES.json lists, each checked against its recorded sha256 first.
Installed copies lack some listed files (the pip package leaves out CI and test
files): those entries are dropped from FILES.json, and MANIFEST.json records
the new FILES.json's sha256. Such an archive installs with
`ansible-galaxy collection install --offline FILE`.
Prints one JSON line per collection. Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path


def installed(name: str) -> tuple[Path, str]:
    listing = subprocess.run(
        ["ansible-galaxy", "collection", "list", "--format", "json", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for path, collections in json.loads(listing).items():
        if name in collections:
            namespace, short = name.split(".")
            return Path(path) / namespace / short, collections[name]["version"]
    raise SystemExit(
        f"collection {name} is not installed on this machine (ansible-galaxy collection list)"
    )


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def pack(source: Path, dest: Path) -> int:
    files = json.loads((source / "FILES.json").read_text(encoding="utf-8"))
    kept = []
    for entry in files["files"]:
        path = source / entry["name"]
        if entry["name"] == "." or (path.is_dir() if entry["ftype"] == "dir" else path.is_file()):
            kept.append(entry)
    files["files"] = kept
    files_json = json.dumps(files, indent=4).encode()
    manifest = json.loads((source / "MANIFEST.json").read_text(encoding="utf-8"))
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    count = 0
    with tarfile.open(dest, "w:gz") as archive:
        add_bytes(archive, "MANIFEST.json", json.dumps(manifest, indent=4).encode())
        add_bytes(archive, "FILES.json", files_json)
        for entry in kept:
            name = entry["name"]
            if name == ".":
                continue
            path = source / name
            if entry["ftype"] == "dir":
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                archive.addfile(info)
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["chksum_sha256"]:
                raise SystemExit(
                    f"{path}: sha256 {digest} differs from FILES.json; reinstall the collection"
                )
            add_bytes(archive, name, data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
            count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    for name in argv[2:]:
        source, version = installed(name)
        target = dest / f"{name.replace('.', '-')}-{version}.tar.gz"
        count = pack(source, target)
        print(json.dumps({"name": name, "version": version, "file": target.name, "files": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
