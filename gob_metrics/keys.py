"""Typed application keys: every shared resource of the aiohttp app."""

from __future__ import annotations

from aiohttp import web

from gob_metrics.config import Config
from gob_metrics.metrics import Metrics
from gob_metrics.storage.base import Storage
from gob_metrics.tenants.auth import Authenticator
from gob_metrics.tenants.limits import Overrides
from gob_metrics.tenants.lookup_cache import LookupCache
from gob_metrics.tenants.ratelimit import RateLimiter
from gob_metrics.tenants.redis_layer import RedisLayer
from gob_metrics.tenants.series_limits import SeriesRegistry
from gob_metrics.write.batcher import Batcher
from gob_metrics.write.series import SeriesCache

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
BATCHER = web.AppKey("batcher", Batcher)
SERIES_CACHE = web.AppKey("series_cache", SeriesCache)
# Tenancy (gob_metrics/tenants/): who a request acts for, and what each tenant may do.
AUTH = web.AppKey("auth", Authenticator)
#: per-tenant limits, one accessor per limit: app[OVERRIDES].max_query_length(tenant).
OVERRIDES = web.AppKey("overrides", Overrides)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
SERIES_REGISTRY = web.AppKey("series_registry", SeriesRegistry)
#: matcher set -> series ids, per tenant: app[LOOKUP_CACHE].get_or_load(tenant, ms, load).
LOOKUP_CACHE = web.AppKey("lookup_cache", LookupCache)
REDIS = web.AppKey("redis", RedisLayer)
