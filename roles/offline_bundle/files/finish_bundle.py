#!/usr/bin/env python3
"""Finish a pycopy offline bundle: apt index for the .debs, manifest, checksums.

Usage: finish_bundle.py STAGING_DIR [--distribution Debian --release 12 --codename bookworm]

STAGING_DIR holds wheels/, debs/ and optionally controller/ (collections/ and
wheels/ for the controller's offline install). Writes:
  debs/Packages       flat apt repository index (deb [trusted=yes] file:DIR ./)
  manifest.json       engine version, wheels, the OS packages with the exact
                      release and architecture they fit, the controller's part,
                      sha256 per file
  SHA256SUMS          the same checksums, for `sha256sum -c` on the hosts
The hosts' wheels must be pure Python (py3-none-any): they serve every
platform. The .debs must all be of one architecture (or "all"); the manifest
records it, and host_prep installs them only on that release and architecture.
Only the standard library and dpkg-deb are used.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_stanza(deb: Path) -> tuple[str, dict[str, str]]:
    control = subprocess.run(
        ["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True
    ).stdout.rstrip("\n")
    md5 = hashlib.md5(deb.read_bytes(), usedforsecurity=False).hexdigest()
    extra = (
        f"Filename: ./{deb.name}\nSize: {deb.stat().st_size}\nMD5sum: {md5}\nSHA256: {sha256(deb)}"
    )
    fields = {}
    for line in control.splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return control + "\n" + extra + "\n", fields


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    parts = wheel.name.split("-")
    return parts[0], parts[1]


# dpkg architecture -> the machine name Ansible reports (ansible_architecture).
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Finish a pycopy offline bundle.")
    parser.add_argument("staging", type=Path)
    parser.add_argument("--distribution", default="Debian")
    parser.add_argument("--release", default="12")
    parser.add_argument("--codename", default="bookworm")
    return parser.parse_args(argv[1:])


def controller_part(root: Path) -> dict[str, object]:
    part: dict[str, object] = {"collections": [], "wheels": []}
    for collection in sorted((root / "controller" / "collections").glob("*.tar.gz")):
        namespace, name, version = collection.name[: -len(".tar.gz")].rsplit("-", 2)
        part["collections"].append(  # type: ignore[union-attr]
            {
                "name": f"{namespace}.{name}",
                "version": version,
                "file": f"controller/collections/{collection.name}",
            }
        )
    for wheel in sorted((root / "controller" / "wheels").glob("*.whl")):
        name, version = wheel_name_version(wheel)
        part["wheels"].append(  # type: ignore[union-attr]
            {"name": name, "version": version, "file": f"controller/wheels/{wheel.name}"}
        )
    return part


def main(argv: list[str]) -> int:
    args = parse(argv)
    root = args.staging
    wheels = sorted((root / "wheels").glob("*.whl"))
    debs = sorted((root / "debs").glob("*.deb"))
    if not any(wheel_name_version(w)[0] == "pycopy_engine" for w in wheels):
        print("no pycopy_engine wheel in the bundle", file=sys.stderr)
        return 1
    impure = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if impure:
        print(
            f"wheels that are not pure Python (they would serve one platform only): {', '.join(impure)}",
            file=sys.stderr,
        )
        return 1

    stanzas, deb_list = [], []
    for deb in debs:
        stanza, fields = deb_stanza(deb)
        stanzas.append(stanza)
        deb_list.append(
            {
                "package": fields.get("Package", ""),
                "version": fields.get("Version", ""),
                "architecture": fields.get("Architecture", ""),
                "file": f"debs/{deb.name}",
            }
        )
    (root / "debs" / "Packages").write_text("\n".join(stanzas), encoding="utf-8")
    architectures = sorted({d["architecture"] for d in deb_list} - {"all"})
    if len(architectures) > 1 or (architectures and architectures[0] not in MACHINE):
        print(f".debs of several or unknown architectures: {architectures}", file=sys.stderr)
        return 1
    dpkg_arch = architectures[0] if architectures else ""

    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    )
    checksums = {str(p.relative_to(root)): sha256(p) for p in files}
    engine = next(w for w in wheels if wheel_name_version(w)[0] == "pycopy_engine")
    manifest = {
        "format": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": {
            "version": wheel_name_version(engine)[1],
            "wheel": f"wheels/{engine.name}",
            "sha256": checksums[f"wheels/{engine.name}"],
        },
        "wheels": [
            {"name": n, "version": v, "file": f"wheels/{w.name}"}
            for w in wheels
            for n, v in [wheel_name_version(w)]
        ],
        "os": {
            "distribution": args.distribution,
            "release": args.release,
            "codename": args.codename,
            "architecture": MACHINE.get(dpkg_arch, ""),
            "dpkg_architecture": dpkg_arch,
            "packages": deb_list,
        },
        "controller": controller_part(root),
        "sha256": checksums,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (root / "SHA256SUMS").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in checksums.items()), encoding="utf-8"
    )
    print(
        json.dumps(
            {
                "engine": manifest["engine"]["version"],
                "wheels": len(wheels),
                "debs": len(debs),
                "os": f"{args.distribution} {args.release} ({args.codename}) {MACHINE.get(dpkg_arch, '')}",
                "files": len(checksums),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
