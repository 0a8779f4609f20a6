"""Build the optional compiled engine in place (``make accel``).

    python3 scripts/build_accel.py          # compile pycopy_engine.accel.MODULES with mypyc
    python3 scripts/build_accel.py --clean  # remove the build: pure Python again
    python3 scripts/build_accel.py --status [--json]   # which engine modules run compiled

Needs mypy (its mypyc; requirements-dev.txt), a C compiler and the
interpreter's headers (Debian: gcc, python3-dev).  CPython only.  The
extension modules land next to their ``.py`` files, mypyc's shared runtime as
``pycopy_engine/_accel__mypyc*.so``, and ``pycopy_engine/_accel_manifest.json``
records what they were built from (pycopy_engine/accel.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pycopy_engine import accel  # noqa: E402


def clean() -> int:
    gone = accel.built_extensions()
    for p in gone:
        p.unlink()
    if accel.MANIFEST.exists():
        accel.MANIFEST.unlink()
    print("removed %d compiled file(s): the engine is pure Python" % len(gone))
    return 0


SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="pycopy-accel", script_args=["build_ext", "--inplace", "--build-temp", sys.argv[1],
                                         "--build-lib", sys.argv[1] + "/lib"],
      ext_modules=mypycify(sys.argv[2:], group_name=%r, opt_level="3",
                           target_dir=sys.argv[1] + "/c"))
"""


def build() -> int:
    if sys.implementation.name != "cpython":
        sys.exit("build_accel: mypyc builds for CPython only (this is %s)"
                 % sys.implementation.name)
    try:
        import mypyc  # noqa: F401
    except ImportError:
        sys.exit("build_accel: mypyc is not installed (pip install mypy)")
    clean()
    paths = [str(accel.source_path(m).relative_to(ROOT)) for m in accel.MODULES]
    with tempfile.TemporaryDirectory(prefix="pycopy-accel-") as tmp:
        # setup() runs in a folder of its own (the project's pyproject.toml is
        # not its business); module names come from paths relative to ROOT
        setup_py = Path(tmp) / "setup_accel.py"
        setup_py.write_text(SETUP % accel.GROUP)
        env = dict(os.environ, PYCOPY_PURE="1")  # compile from source, never import a build
        r = subprocess.run([sys.executable, str(setup_py), str(Path(tmp) / "build"), *paths],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        for p in accel.built_extensions():
            p.unlink()
        sys.exit("build_accel: the build failed (output above); the engine stays pure Python")
    accel.write_manifest()
    check = subprocess.run([sys.executable, __file__, "--status"], cwd=ROOT,
                           capture_output=True, text=True)
    print(check.stdout.strip() or check.stderr.strip())
    return 0 if "compiled with mypyc (" in check.stdout else 1


def status(as_json: bool) -> int:
    if as_json:
        print(json.dumps(accel.status(load=True), indent=1))
    else:
        print(accel.describe(load=True))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--clean" in args:
        sys.exit(clean())
    if "--status" in args:
        sys.exit(status("--json" in args))
    sys.exit(build())
