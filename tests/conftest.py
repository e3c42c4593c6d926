"""Shared fixtures: a configured app on the real embedded ClickHouse engine (or on the
ClickHouse server named by GOB_TEST_CLICKHOUSE_URL), as a test client or a real server."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_sync

from gob_metrics.app import build_app
from gob_metrics.cli import main as cli_main
from gob_metrics.config import Config, load_config
from tests.services.redis_server import RedisServer

CLICKHOUSE_URL = os.environ.get("GOB_TEST_CLICKHOUSE_URL", "")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a validated Config for a test; keyword args are dotted-key overrides
    (``make_config(**{"write.batch_max_age": "10ms"})``)."""

    def make(**overrides: Any) -> Config:
        base: dict[str, Any] = {
            "server.data_dir": str(tmp_path / "data"),
            "server.log_level": "warning",
            "write.batch_max_age": "20ms",
        }
        if CLICKHOUSE_URL:
            # A fresh database per test keeps server runs as isolated as embedded ones.
            db = f"gob_test_{uuid.uuid4().hex[:12]}"
            base["storage.clickhouse.url"] = urlunsplit(urlsplit(CLICKHOUSE_URL)._replace(
                path="/" + db))
        base.update(overrides)
        return load_config(env={}, overrides=base)

    return make


@pytest.fixture
async def gob_client(aiohttp_client: Any, make_config: Callable[..., Config]) -> Any:
    """A test client of an app with default test settings (storage open and migrated)."""
    return await aiohttp_client(build_app(make_config()))


@pytest.fixture
async def gob_server(aiohttp_server: Any, make_config: Callable[..., Config]) -> Any:
    """The app on a real 127.0.0.1 port, for external senders (Prometheus, vmagent).

    ``server.make_url("/api/v1/write")`` is the remote_write URL and
    ``server.app[STORAGE]`` the storage to check what arrived."""
    return await aiohttp_server(build_app(make_config()), host="127.0.0.1")


def cli(*args: str) -> int:
    """Run the gob-metrics command in this process, keeping pytest's logging setup."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return cli_main(list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for one test module, stopped by PID after it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    """The module's redis-server, running (restarted or resumed if a test stopped or froze
    it) and empty."""
    redis_srv.resume()
    if redis_srv.service.proc is None or redis_srv.service.proc.poll() is not None:
        redis_srv.start()
    client = redis_sync.Redis.from_url(redis_srv.url)
    client.flushall()
    client.close()
    return redis_srv.url
