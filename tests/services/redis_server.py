"""A real redis-server (Debian's 7.0 package) for tests, on a free 127.0.0.1 port with no
persistence, in one temporary directory.

It can be killed (SIGKILL) by PID and started again on the same port, which the fallback
and recovery tests need; the restarted server is empty, as after a crash without AOF.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.services.proc import Service, free_port, require_binary


class RedisServer:
    """One redis-server process; restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        binary = require_binary("redis-server")
        self.service = Service("redis-server", [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes",
        ], self.port, workdir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.service.start(ready_timeout=timeout)
        return self

    def stop(self) -> None:
        """SIGTERM by PID and wait (SIGKILL if it lingers)."""
        self.resume()
        self.service.stop()

    def kill(self) -> None:
        """SIGKILL by PID: connections drop at once, nothing is saved."""
        proc = self.service.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP by PID: connections stay open but nothing answers (a hung Redis)."""
        if self.service.proc is not None and self.service.proc.poll() is None:
            os.kill(self.service.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT by PID after freeze(); harmless otherwise."""
        if self.service.proc is not None and self.service.proc.poll() is None:
            os.kill(self.service.proc.pid, signal.SIGCONT)


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A started redis-server in ``workdir``, stopped by PID on exit."""
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
