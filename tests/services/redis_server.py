"""A real redis-server (Debian's 7.0 package) for tests, on a free 127.0.0.1 port with no
persistence, in one temporary directory.

It can be killed (SIGKILL) by PID and started again on the same port, which the fallback
and recovery tests need; the restarted server is empty, as after a crash without AOF.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.services.proc import Service, ServiceOwner, free_port, require_binary


class RedisServer(ServiceOwner):
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


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A started redis-server in ``workdir``, stopped by PID on exit."""
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
