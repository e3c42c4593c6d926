"""Storage transports behind one interface; ``create_storage`` picks one from config."""

from __future__ import annotations

from urllib.parse import urlsplit

from gob_metrics.config import Config
from gob_metrics.storage.base import Storage, StorageError

__all__ = ["Storage", "StorageError", "create_storage"]


def create_storage(cfg: Config) -> Storage:
    """The ClickHouse server transport when storage.clickhouse.url is set, else embedded."""
    ch = cfg.storage.clickhouse
    if ch.url:
        from gob_metrics.storage.clickhouse import ClickHouseStorage

        # The URL's /database wins; without one, storage.database names it.
        has_db = urlsplit(ch.url).path.strip("/") != ""
        return ClickHouseStorage(
            ch.url,
            database=None if has_db else cfg.storage.database,
            cluster=ch.cluster,
            pool_size=ch.pool_size,
            connect_timeout=ch.connect_timeout,
            send_receive_timeout=ch.send_receive_timeout,
            max_retries=ch.max_retries,
        )
    from gob_metrics.storage.embedded import EmbeddedStorage

    return EmbeddedStorage(cfg.server.data_dir, cfg.storage.database,
                           threads=cfg.storage.embedded.query_threads)
