"""One app per test module for read-only table cases: created and loaded once, so a table
of dozens of queries does not pay for an app, a storage and a load per line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp.test_utils import TestClient, TestServer

from gob_metrics.app import build_app
from gob_metrics.config import load_config
from tests.conftest import CLICKHOUSE_URL


async def module_client(directory: Path, load: Callable[[Any], Awaitable[None]]
                        ) -> AsyncIterator[Any]:
    """Yield a test client of an app with the default test settings (as ``gob_client``)
    after ``load(client)`` ran; close it at the end."""
    overrides: dict[str, Any] = {"server.data_dir": str(directory / "data"),
                                 "server.log_level": "warning", "write.batch_max_age": "20ms"}
    if CLICKHOUSE_URL:
        db = f"gob_test_{uuid.uuid4().hex[:12]}"
        overrides["storage.clickhouse.url"] = urlunsplit(urlsplit(CLICKHOUSE_URL)._replace(
            path="/" + db))
    client = TestClient(TestServer(build_app(load_config(env={}, overrides=overrides))))
    await client.start_server()
    try:
        await load(client)
        yield client
    finally:
        await client.close()
