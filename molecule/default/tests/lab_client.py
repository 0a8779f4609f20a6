"""Send real HTTP requests from the lab's client host and read the target's log."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import testinfra
from testinfra.host import Host

KEY = "/var/lib/pycopy-lab/pcm/ssh/id_ed25519"
MGMT = {
    "client": "10.242.0.10",
    "online": "10.242.0.11",
    "target": "10.242.0.12",
    "assistant": "10.242.0.13",
}
DATA = {
    "client": "10.242.1.10",
    "online": "10.242.1.11",
    "target": "10.242.1.12",
    "assistant": "10.242.1.13",
}
ONLINE_PORT = 80
TARGET_PORT = 8080
INTERCEPT_PORT = 36524
TARGET_LOG = "/var/log/pycopy-lab/http.log"


def lab_hosts(addresses: dict[str, str], workdir: Path) -> dict[str, Host]:
    """testinfra hosts by name: root over SSH (paramiko) with the lab's key.

    The verify fixtures of every scenario build their ``lab`` from this (the
    scenarios' tests put this folder on PYTHONPATH: their molecule.yml).
    """
    config = workdir / "ssh_config"
    config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return {
        name: testinfra.get_host(
            f"paramiko://root@{addr}", ssh_identity_file=KEY, ssh_config=str(config), timeout=10
        )
        for name, addr in addresses.items()
    }


def phase() -> str:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")
    marker = Path(ephemeral, "pycopy-phase")
    return marker.read_text().strip() if ephemeral and marker.exists() else "running"


# Runs on the client host (Debian 12, standard library only): one connection
# per request, prints {"path": body-or-null} as JSON.
CLIENT_SCRIPT = r"""
import json, sys, urllib.request
base, count = sys.argv[1], int(sys.argv[2])
out = {}
for n in range(count):
    path = "%s-%d" % (base.split("/", 3)[3], n)
    try:
        with urllib.request.urlopen("%s-%d" % (base, n), timeout=5) as resp:
            out["/" + path] = resp.read().decode()
    except OSError as exc:
        out["/" + path] = None
print(json.dumps(out))
"""


def send_requests(client: Host, url_prefix: str, count: int) -> tuple[str, dict[str, str | None]]:
    """Send count GETs to url_prefix/<tag>-<n>; return the tag and {path: body}."""
    tag = f"verify-{uuid.uuid4().hex[:12]}"
    result = client.run("python3 -c %s %s %s", CLIENT_SCRIPT, f"{url_prefix}/{tag}", str(count))
    assert result.rc == 0, result.stderr
    return tag, json.loads(result.stdout)


def logged_paths(target: Host, log: str, tag: str, expected: int, wait: float) -> list[str]:
    """Lines of the target's request log for tag; waits up to `wait` s for `expected`."""
    deadline = time.monotonic() + wait
    while True:
        result = target.run("grep -F -- %s %s || true", tag, log)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)
