"""Start and stop the real programs the tests run against (Prometheus, vmagent,
redis-server, clickhouse-server), bound to 127.0.0.1, each stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def merge_config(config: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Overlay ``extra`` on a generated YAML config: lists (scrape_configs, remote_write)
    are extended, anything else replaced."""
    for key, value in (extra or {}).items():
        if isinstance(value, list) and isinstance(config.get(key), list):
            config[key] = [*config[key], *value]
        else:
            config[key] = value
    return config


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """Return the path of ``name``; fail (never skip) when the test command did not install it."""
    path = shutil.which(name)
    if path is None and os.path.exists(f"/usr/sbin/{name}"):
        path = f"/usr/sbin/{name}"
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run the README test command (scripts/test.sh), "
            "which installs it with apt-get"
        )
    return path


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:port accepts connections, or raise with the reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll ``check`` until it returns true; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # the service may still be starting
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Service:
    """A started program: its PID, port, working directory and log file."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self, ready_timeout: float = 30.0, env: dict[str, str] | None = None) -> Service:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            list(self.argv),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        try:
            wait_port(self.port, ready_timeout, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log_tail()}") from exc
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.proc.pid, sig)  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL by PID, as if the machine went away: sockets close at once."""
        if self.running:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)  # type: ignore[union-attr]

    def freeze(self) -> None:
        """SIGSTOP by PID: connections stay open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT by PID after freeze(); harmless otherwise."""
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process by PID (resuming it if frozen), then SIGKILL it if it
        lingers."""
        if not self.running:
            return
        self.resume()
        self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ServiceOwner:
    """Base of the test servers that own one :class:`Service` (clickhouse-server,
    redis-server): stopping, killing, freezing and resuming it by PID."""

    service: Service

    def stop(self) -> None:
        """SIGTERM by PID and wait for the exit (SIGKILL if it lingers)."""
        self.service.stop()

    def kill(self) -> None:
        """SIGKILL by PID, as if the machine went away: connections drop at once."""
        self.service.kill()

    def freeze(self) -> None:
        """SIGSTOP by PID: connections stay open but nothing answers (a hung server)."""
        self.service.freeze()

    def resume(self) -> None:
        """SIGCONT by PID after freeze(); harmless otherwise."""
        self.service.resume()
