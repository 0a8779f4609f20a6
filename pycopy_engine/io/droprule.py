"""Own-address mode's drop rule: the target's answers to the pool's ports are
dropped before this host's TCP stack sees them (so it never answers them with
RST); AF_PACKET taps see a packet before netfilter, so tcpcopy still captures them.

nftables: a table of its own, ``ip pycopy_noassist``, with one chain hooked at
prerouting (priority -300, before conntrack) and one rule per target::

    ip saddr T tcp sport TP ip daddr { own } tcp dport { pool intervals } counter drop

iptables (where nft is absent): a chain ``PYCOPY_NOASSIST`` in the raw table,
jumped to from PREROUTING, with one rule per (target, own address, interval).

Nothing else on the host is touched.  :func:`install` first removes what an
earlier run left (a SIGKILL skips the removal at exit); :func:`remove` is
idempotent.  ``PYCOPY_DROP_BACKEND=iptables`` forces the iptables form (tests).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence

from ..errors import PycopyError

TABLE = "pycopy_noassist"
CHAIN = "PYCOPY_NOASSIST"
NFT_CHAIN = "answers"


class DropRuleError(PycopyError):
    pass


def backend() -> str | None:
    forced = os.environ.get("PYCOPY_DROP_BACKEND")
    if forced in ("nft", "iptables"):
        return forced if shutil.which(forced) else None
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    return None


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DropRuleError(f"{argv[0]}: {exc}") from None


def nft_present() -> bool:
    return bool(shutil.which("nft")) and _run(["nft", "list", "table", "ip", TABLE]).returncode == 0


def iptables_present() -> bool:
    return bool(shutil.which("iptables")) and _run(
        ["iptables", "-w", "-t", "raw", "-S", CHAIN]).returncode == 0


def present() -> bool:
    """Whether a pycopy drop rule (either form) is installed in this namespace."""
    return nft_present() or iptables_present()


def nft_script(targets: Sequence[tuple[str, int]], own: Sequence[str],
               intervals: Sequence[tuple[int, int]]) -> str:
    ports = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in intervals)
    daddr = ", ".join(own)
    rules = "".join(
        f"    ip saddr {t} tcp sport {tp} ip daddr {{ {daddr} }} tcp dport {{ {ports} }}"
        " counter drop\n" for t, tp in targets)
    # "add" then "delete" then the new table, in one transaction: a stale
    # table left by a killed run goes, and no moment is left without the rule
    return (f"add table ip {TABLE}\ndelete table ip {TABLE}\n"
            f"table ip {TABLE} {{\n  chain {NFT_CHAIN} {{\n"
            "    type filter hook prerouting priority -300; policy accept;\n"
            f"{rules}  }}\n}}\n")


def iptables_rules(targets: Sequence[tuple[str, int]], own: Sequence[str],
                   intervals: Sequence[tuple[int, int]]) -> list[list[str]]:
    return [["-A", CHAIN, "-s", t, "-d", o, "-p", "tcp", "--sport", str(tp),
             "--dport", f"{a}:{b}", "-j", "DROP"]
            for t, tp in targets for o in own for a, b in intervals]


def remove() -> bool:
    """Remove the rule in both forms; True if something was removed."""
    removed = False
    if shutil.which("nft") and _run(["nft", "delete", "table", "ip", TABLE]).returncode == 0:
        removed = True
    if shutil.which("iptables"):
        ipt = ["iptables", "-w", "-t", "raw"]
        while _run(ipt + ["-D", "PREROUTING", "-j", CHAIN]).returncode == 0:
            removed = True
        if _run(ipt + ["-F", CHAIN]).returncode == 0:
            _run(ipt + ["-X", CHAIN])
            removed = True
    return removed


def install(targets: Sequence[tuple[str, int]], own: Sequence[str],
            intervals: Sequence[tuple[int, int]]) -> tuple[str, bool]:
    """Install the rule; returns (backend, whether a stale rule was removed first)."""
    if not targets or not own or not intervals:
        raise DropRuleError("drop rule: nothing to match (no target, address or pool port)")
    which = backend()
    if which is None:
        raise DropRuleError("--no-assistant needs nft or iptables to drop the target's answers")
    stale = present()
    if which == "nft":
        if stale and iptables_present():
            remove()
        res = _run(["nft", "-f", "-"], nft_script(targets, own, intervals))
        if res.returncode != 0:
            raise DropRuleError(f"nft: cannot install table ip {TABLE}: {res.stderr.strip()}")
        return which, stale
    remove()
    ipt = ["iptables", "-w", "-t", "raw"]
    steps = [["-N", CHAIN], *iptables_rules(targets, own, intervals),
             ["-I", "PREROUTING", "1", "-j", CHAIN]]
    for step in steps:
        res = _run(ipt + step)
        if res.returncode != 0:
            remove()
            raise DropRuleError(f"iptables {' '.join(step)}: {res.stderr.strip()}")
    return which, stale


def installed_intervals() -> list[tuple[int, int]]:
    """The pool intervals of the installed rule (nft or iptables form), read back."""
    out: list[tuple[int, int]] = []
    if shutil.which("nft"):
        res = _run(["nft", "list", "table", "ip", TABLE])
        if res.returncode == 0:
            for line in res.stdout.splitlines():
                if "tcp dport" not in line:
                    continue
                spec = line.split("tcp dport", 1)[1].strip()
                spec = spec[1:spec.index("}")] if spec.startswith("{") else spec.split()[0]
                for item in spec.split(","):
                    a, _, b = item.strip().partition("-")
                    out.append((int(a), int(b or a)))
    if shutil.which("iptables"):
        res = _run(["iptables", "-w", "-t", "raw", "-S", CHAIN])
        if res.returncode == 0:
            for line in res.stdout.splitlines():
                words = line.split()
                if "--dport" in words:
                    a, _, b = words[words.index("--dport") + 1].partition(":")
                    out.append((int(a), int(b or a)))
    return out


LOCK_DIR = "/run/pycopy"


class InstanceLock:
    """One own-address tcpcopy per network namespace: a second one would replace the
    first's rule and remove it at its exit.  An flock, so a SIGKILLed holder
    releases it at once; the file (named after the namespace) also names the PID."""

    def __init__(self, lock_dir: str = LOCK_DIR) -> None:
        ns = os.stat("/proc/self/ns/net").st_ino
        self.path = os.path.join(lock_dir, f"noassist-netns{ns}.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DropRuleError(f"another own-address tcpcopy runs in this network namespace "
                                f"(pid {other}, lock {self.path}): only one may") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
