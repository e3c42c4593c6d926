"""Per-tenant rate limits as token buckets: the ingestion rate limit (a bucket of
``ingestion_burst_size`` tokens filled at ``ingestion_rate`` per second; a request takes one
token per sample and metadata entry, all or nothing, as Mimir's distributor) and the SQL
gateway's query rate (``sql_query_rate``, one token per query; gateway/limits.py).

With Redis the buckets live there and one Lua script takes tokens atomically, so N replicas
enforce one limit together. Without Redis, or while it is down, each replica keeps its own
bucket with the full limit (so N replicas admit up to N times the rate until Redis is back).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gob_metrics.errors import TooManyRequests
from gob_metrics.tenants.limits import Overrides, limit_message
from gob_metrics.tenants.redis_layer import RedisLayer, RedisUnavailable

# KEYS[1]: the tenant's bucket (hash: tokens, ts in ms). ARGV: rate per second, burst,
# tokens wanted. Redis' own clock is used so replicas with skewed clocks agree.
# Returns {1, 0} when taken, or {0, ms to wait} (-1: never, the request exceeds the burst).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
end
tokens = math.min(tokens, burst)
if n > burst then
  return {0, -1}
end
local wait = 0
if n <= tokens then
  tokens = tokens - n
else
  wait = math.ceil((n - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', math.max(now, ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
if wait > 0 then
  return {0, wait}
end
return {1, 0}
"""


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalBuckets:
    """In-process token buckets: the default without Redis and the fallback when it is down."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._clock = clock

    def take(self, tenant: str, n: int, rate: float, burst: int) -> float:
        """Take ``n`` tokens; return 0 if taken, else seconds to wait (inf: never)."""
        now = self._clock()  # type: ignore[operator]
        b = self._buckets.get(tenant)
        if b is None:
            b = self._buckets[tenant] = _Bucket(float(burst), now)
        b.tokens = min(float(burst), b.tokens + (now - b.at) * rate)
        b.at = now
        if n > burst:
            return math.inf
        if n <= b.tokens:
            b.tokens -= n
            return 0.0
        return (n - b.tokens) / rate


class TokenBuckets:
    """One token bucket per tenant for one kind of limit: in Redis when it is configured
    and up (keys ``<prefix><kind>:{<tenant>}``), else in this process. ``operation`` labels
    its Redis calls in gob_redis_errors_total and gob_redis_fallbacks_total."""

    def __init__(self, redis: RedisLayer, kind: str, operation: str,
                 clock: object = time.monotonic) -> None:
        self.redis = redis
        self.kind = kind
        self.operation = operation
        self.local = LocalBuckets(clock)
        self._script = None

    async def take(self, tenant: str, n: int, rate: float, burst: int) -> float:
        """Take ``n`` tokens; return 0 if taken, else seconds to wait (inf: never)."""
        wait = await self._take_shared(tenant, n, rate, burst)
        if wait is None:
            wait = self.local.take(tenant, n, rate, burst)
        return wait

    async def _take_shared(self, tenant: str, n: int, rate: float, burst: int) -> float | None:
        if not self.redis.enabled:
            return None
        if self._script is None and self.redis.client is not None:
            self._script = self.redis.script(TOKEN_BUCKET_LUA)
        script = self._script
        key = self.redis.key(self.kind, "{" + tenant + "}")
        try:
            ok, wait_ms = await self.redis.call(
                self.operation, lambda _c: script(keys=[key], args=[repr(float(rate)), burst, n]))
        except RedisUnavailable:
            return None
        if ok:
            return 0.0
        return math.inf if wait_ms < 0 else wait_ms / 1000


class RateLimiter:
    """Admits or refuses whole write requests per tenant; raises TooManyRequests (429)."""

    def __init__(self, overrides: Overrides, redis: RedisLayer) -> None:
        self.overrides = overrides
        self.buckets = TokenBuckets(redis, "rate", "rate_limit")

    async def admit(self, tenant: str, n: int) -> None:
        """Take ``n`` tokens for ``tenant`` or raise TooManyRequests with Retry-After."""
        limits = self.overrides.for_tenant(tenant)
        rate, burst = limits.ingestion_rate, limits.ingestion_burst_size
        if n <= 0 or rate <= 0 or burst <= 0:  # 0 disables the limit
            return
        wait = await self.buckets.take(tenant, n, rate, burst)
        if wait == 0:
            return
        what = (f"ingestion rate limit {limit_message('ingestion_rate', rate, tenant)} "
                f"with ingestion_burst_size={burst} exceeded by a request of {n} samples "
                "and metadata")
        if math.isinf(wait):
            raise TooManyRequests(f"{what}: the request is larger than the burst size; send "
                                  "smaller requests or raise ingestion_burst_size",
                                  retry_after=max(1.0, burst / rate))
        raise TooManyRequests(f"{what}; retry after {wait:.2f}s", retry_after=wait)
