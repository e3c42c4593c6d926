"""Typed application keys: every shared resource of the aiohttp app."""

from __future__ import annotations

from aiohttp import web

from gob_metrics.config import Config
from gob_metrics.metrics import Metrics
from gob_metrics.storage.base import Storage
from gob_metrics.write.batcher import Batcher
from gob_metrics.write.series import SeriesCache

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
BATCHER = web.AppKey("batcher", Batcher)
SERIES_CACHE = web.AppKey("series_cache", SeriesCache)
