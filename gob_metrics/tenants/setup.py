"""Wire tenancy, limits and the Redis layer into the app: objects under typed app keys,
and one cleanup context that starts and stops them in order (after storage, before the
batcher, so the writer can register series until the last batch is flushed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gob_metrics.keys import (
    AUTH,
    CONFIG,
    LOOKUP_CACHE,
    METRICS,
    OVERRIDES,
    RATE_LIMITER,
    REDIS,
    SERIES_CACHE,
    SERIES_REGISTRY,
    STORAGE,
)
from gob_metrics.tenants.auth import Authenticator
from gob_metrics.tenants.limits import Overrides
from gob_metrics.tenants.lookup_cache import LookupCache
from gob_metrics.tenants.overrides import OverridesSync
from gob_metrics.tenants.ratelimit import RateLimiter
from gob_metrics.tenants.redis_layer import RedisLayer
from gob_metrics.tenants.series_limits import SeriesRegistry


def install(app: web.Application) -> None:
    """Create the tenancy objects and append their cleanup context (call after storage's)."""
    cfg = app[CONFIG]
    registry = app[METRICS].registry
    redis = RedisLayer(cfg.redis, registry)
    overrides = Overrides(cfg.limits)
    # Without Redis, lookups are cached in process only on the embedded engine, whose data
    # no other process writes (a ClickHouse server may have other replicas writing to it).
    lookups = LookupCache(redis, registry, cfg.redis.lookup_cache_ttl,
                          cfg.redis.lookup_cache_max_series,
                          local=not cfg.storage.clickhouse.url)
    app[AUTH] = Authenticator(cfg.tenancy)
    app[REDIS] = redis
    app[OVERRIDES] = overrides
    app[RATE_LIMITER] = RateLimiter(overrides, redis)
    app[LOOKUP_CACHE] = lookups
    app[SERIES_REGISTRY] = SeriesRegistry(app[SERIES_CACHE], overrides, redis, lookups,
                                          cfg.tenancy.series_count_refresh)
    app.cleanup_ctx.append(_tenants_ctx)


async def _tenants_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    redis = app[REDIS]
    sync = OverridesSync(app[OVERRIDES], redis, app[METRICS].registry,
                         cfg.tenancy.overrides_file, cfg.tenancy.overrides_reload_period)
    await redis.start()
    try:
        await sync.start()
        try:
            await app[SERIES_REGISTRY].start(app[STORAGE])
            try:
                yield
            finally:
                await app[SERIES_REGISTRY].close()
        finally:
            await sync.close()
    finally:
        await redis.close()
