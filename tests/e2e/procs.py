"""Start pycopy's own commands in lab hosts and read their JSON statistics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from tests.lab.netns import Lab, LabError


class Proc:
    def __init__(self, lab: Lab, host: str, prog: str, args: List[str], workdir: Path,
                 name: str, ready: bool = True, python: str = sys.executable) -> None:
        self.lab = lab
        self.name = name
        self.stats_path = workdir / f"{name}.stats.json"
        self.log_path = workdir / f"{name}.log"
        if self.stats_path.exists():
            self.stats_path.unlink()
        self._log = open(self.log_path, "w")
        argv = [python, "-m", f"pycopy_engine.cli.{prog}", *args,
                "--stats-json", str(self.stats_path), "--stats-interval", "0.2"]
        self.proc = lab.popen(host, argv, stdout=self._log, stderr=subprocess.STDOUT)
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.stats_path.exists():
            if self.proc.poll() is not None:
                raise LabError(f"{self.name} exited {self.proc.returncode}: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} not ready after {timeout}s: {self.log()[-3000:]}")
            time.sleep(0.05)

    def stats(self) -> Dict[str, Any]:
        for _ in range(20):
            try:
                data = json.loads(self.stats_path.read_text())
                return data.get("counters", data)
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def wait_stat(self, key: str, at_least: float = 1, timeout: float = 5.0) -> float:
        """The counter ``key`` once it reached ``at_least`` (or its value at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.stats().get(key, 0) or 0
            if v >= at_least or time.monotonic() > deadline:
                return v
            time.sleep(0.1)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        code = self.lab.stop(self.proc)
        self._log.close()
        return code


def intercept(lab: Lab, workdir: Path, port: int = 80, extra: Optional[List[str]] = None,
              name: str = "intercept", python: str = sys.executable) -> Proc:
    return Proc(lab, "assistant", "intercept",
                ["-i", "eth0", "-F", f"tcp and src port {port}", *(extra or [])], workdir, name,
                python=python)


def tcpcopy(lab: Lab, workdir: Path, extra: Optional[List[str]] = None, port: int = 80,
            name: str = "tcpcopy", ready: bool = True, python: str = sys.executable) -> Proc:
    t, a = lab.ip["target"], lab.ip["assistant"]
    return Proc(lab, "online", "tcpcopy",
                ["-x", f"{port}-{t}:{port}", "-s", a, *(extra or [])], workdir, name, ready,
                python=python)
