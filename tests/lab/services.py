"""Helpers that run the lab's HTTP servers and client from tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.netns import Lab, LabError


class HttpServerProc:
    """One ``tests.lab.httpserver`` in a lab host; read its log with records()."""

    def __init__(
        self, lab: Lab, host: str, workdir: Path, port: int = 80, name: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.lab = lab
        self.host = host
        self.name = name or host
        self.port = port
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"http-{self.name}-{port}.jsonl"
        self.stderr_path = workdir / f"http-{self.name}-{port}.stderr"
        ready = workdir / f"http-{self.name}-{port}.ready"
        for p in (self.log_path, ready):
            if p.exists():
                p.unlink()
        self._err = open(self.stderr_path, "w")
        self.proc = lab.python(
            host,
            "tests.lab.httpserver",
            "--port",
            str(port),
            "--name",
            self.name,
            "--log",
            str(self.log_path),
            "--ready",
            str(ready),
            *extra,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self.proc.poll() is not None:
                raise LabError(f"http server on {host} exited: {self.stderr_path.read_text()}")
            if time.monotonic() > deadline:
                raise LabError(f"http server on {host} not ready after 15 s")
            time.sleep(0.02)

    def records(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        with open(self.log_path) as f:
            for line in f:
                if line.endswith("\n"):  # a partly written last line is skipped
                    out.append(json.loads(line))
        return out

    def wait_records(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the log holds at least ``n`` records (or time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= n or time.monotonic() > deadline:
                return recs
            time.sleep(0.05)

    def stop(self) -> int:
        code = self.lab.stop(self.proc)
        self._err.close()
        return code


def run_client(
    lab: Lab,
    server_host: str = "online",
    *,
    requests: int = 100,
    connections: int = 4,
    mode: str = "keepalive",
    kind: str = "get",
    tag: str = "t",
    expect_server: str | None = None,
    port: int = 80,
    upload_size: int = 100 * 1024,
    download_size: int = 1 << 20,
    delay: float = 0.0,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run tests.lab.client in the client namespace; returns its JSON result
    (``ok``, ``failed``, ``errors``, ``elapsed``, ``requests``)."""
    argv = [
        sys.executable,
        "-m",
        "tests.lab.client",
        "--host",
        lab.ip[server_host],
        "--port",
        str(port),
        "--requests",
        str(requests),
        "--connections",
        str(connections),
        "--mode",
        mode,
        "--kind",
        kind,
        "--tag",
        tag,
        "--upload-size",
        str(upload_size),
        "--download-size",
        str(download_size),
        "--delay",
        str(delay),
        "--expect-server",
        expect_server if expect_server is not None else server_host,
    ]
    res = lab.run("client", argv, check=False, timeout=timeout)
    if not res.stdout.strip():
        raise LabError(f"client printed nothing (exit {res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def sent_keys(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, sha256) of every request the client sent, sorted."""
    return sorted((m, p, s) for m, p, s in result["requests"])


def logged_keys(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((r["method"], r["path"], r["body_sha256"]) for r in records)


__all__ = ["HttpServerProc", "run_client", "sent_keys", "logged_keys"]
