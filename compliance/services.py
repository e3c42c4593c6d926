"""Start and stop the programs a compliance run needs (Prometheus 2.42, gob-metrics), each
bound to 127.0.0.1 in its own directory and stopped by its PID.

Self-contained on purpose: ``python -m compliance`` runs outside pytest, so it does not
import the test suite's helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ServiceError(RuntimeError):
    """A program could not be found or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_prometheus() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(path, os.X_OK):
        raise ServiceError("prometheus (2.42) is not installed: apt-get install prometheus, "
                           "or put it on PATH")
    return path


@dataclass
class Service:
    """One started program: PID, port, directory, log."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    ready_path: str = "/-/ready"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Service:
        """Start the program and wait until ``ready_path`` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode} "
                                   f"before it was ready:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"{self.name} was not ready within {timeout}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def prometheus(workdir: Path, name: str, *, receiver: bool = False,
               remote_read: Sequence[dict[str, Any]] = ()) -> Service:
    """A Prometheus 2.42 that scrapes nothing: a remote_write receiver with a retention
    long enough for 2024 data, and/or a reader of ``remote_read`` endpoints."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                              "scrape_configs": []}
    if remote_read:
        config["remote_read"] = list(remote_read)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        find_prometheus(),
        f"--config.file={config_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'data'}",
        # Retention counts from the newest block, but a long one makes the intent plain.
        "--storage.tsdb.retention.time=100y",
        "--log.level=warn",
    ]
    if receiver:
        argv.append("--web.enable-remote-write-receiver")
    return Service(name, argv, port, workdir)


def gob_metrics(workdir: Path, name: str = "gob-metrics", *,
                extra_args: Sequence[str] = ()) -> Service:
    """gob-metrics on the embedded engine, with its data under ``workdir``."""
    port = free_port()
    argv = [sys.executable, "-m", "gob_metrics", "serve", "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(workdir / "data"), "--log-level", "warning", *extra_args]
    return Service(name, argv, port, workdir)
