"""Label-lookup cache for reads: a matcher set of one tenant -> the ids of the series it
selects, so repeated queries (dashboards refreshing) skip the series-table scan.

Invalidation is by epoch, not by key: every tenant has an epoch number that goes up when
it gets new series or loses some (deletion), and the epoch is part of every cache key, so
one increment makes all of the tenant's cached lookups unreachable at once (they expire by
TTL). Reading the epoch and the entry is one Lua call, so a reader never pairs a new epoch
with an old entry. TTLs are jittered (up to 20% shorter) so entries written together do not
expire together.

Where it lives: in Redis when ``redis.url`` is set (shared by replicas); in process
otherwise. While a configured Redis is down, lookups bypass the cache (a process-local
cache could miss series another replica registered meanwhile).

Usage from a read path::

    ids = await cache.get_or_load(tenant, matchers, load)  # load() -> list of 16-byte ids
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from gob_metrics.tenants.redis_layer import RedisLayer, RedisUnavailable

# KEYS[1]: the tenant's epoch. ARGV[1]: entry key prefix, ARGV[2]: matcher hash.
# Returns {epoch, entry or false}.
_GET_LUA = """
local epoch = redis.call('GET', KEYS[1]) or '0'
return {epoch, redis.call('GET', ARGV[1] .. epoch .. ':' .. ARGV[2])}
"""
_LOCAL_ENTRIES = 10_000
_JITTER = 0.2

Matcher = tuple[str, str, str]  # (label name, "=" | "!=" | "=~" | "!~", value)


@dataclass(frozen=True)
class Lookup:
    """A cache probe: the tenant's epoch when probed, and the ids if they were cached."""

    epoch: int
    series_ids: list[bytes] | None


def matcher_key(matchers: Iterable[Matcher], scope: str = "") -> str:
    """A stable hash of a matcher set (order does not matter) plus anything else that
    changes the answer (``scope``, e.g. a time-range bucket)."""
    canonical = json.dumps([sorted(tuple(m) for m in matchers), scope], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class LookupCache:
    """matcher set -> series ids per tenant, invalidated by a per-tenant epoch."""

    def __init__(self, redis: RedisLayer, registry: CollectorRegistry, ttl: float,
                 max_series: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self.max_series = max_series
        self.namespace = "local"  # set to the storage's identity at start
        self._local: OrderedDict[tuple[str, int, str], tuple[float, list[bytes]]] = OrderedDict()
        self._epochs: dict[str, int] = {}
        self._get = None
        self.requests = Counter("gob_lookup_cache_requests_total",
                                "Label-lookup cache probes, by result (hit, miss, bypass: "
                                "Redis is down).", ["result"], registry=registry)

    def _epoch_key(self, tenant: str) -> str:
        return self.redis.key(self.namespace, "{" + tenant + "}", "epoch")

    def _entry_prefix(self, tenant: str) -> str:
        return self.redis.key(self.namespace, "{" + tenant + "}", "lookup", "")

    # -- the API the read path calls

    async def get(self, tenant: str, matchers: Iterable[Matcher], scope: str = "") -> Lookup:
        """Probe the cache. Pass the returned epoch to :meth:`put` with what was loaded."""
        key = matcher_key(matchers, scope)
        if not self.redis.enabled:
            epoch = self._epochs.get(tenant, 0)
            hit = self._local.get((tenant, epoch, key))
            if hit is not None and hit[0] > time.monotonic():
                self._local.move_to_end((tenant, epoch, key))
                self.requests.labels("hit").inc()
                return Lookup(epoch, hit[1])
            self.requests.labels("miss").inc()
            return Lookup(epoch, None)
        if self._get is None and self.redis.client is not None:
            self._get = self.redis.script(_GET_LUA)
        script = self._get
        try:
            epoch_raw, blob = await self.redis.call("lookup_get", lambda _c: script(
                keys=[self._epoch_key(tenant)], args=[self._entry_prefix(tenant), key]))
        except RedisUnavailable:
            self.requests.labels("bypass").inc()
            return Lookup(-1, None)
        epoch = int(epoch_raw)
        if blob is None:
            self.requests.labels("miss").inc()
            return Lookup(epoch, None)
        self.requests.labels("hit").inc()
        return Lookup(epoch, [blob[i:i + 16] for i in range(0, len(blob), 16)])

    async def put(self, tenant: str, matchers: Iterable[Matcher], epoch: int,
                  series_ids: Sequence[bytes], scope: str = "") -> None:
        """Remember what ``matchers`` selected when the tenant's epoch was ``epoch``."""
        if epoch < 0 or len(series_ids) > self.max_series:
            return
        key = matcher_key(matchers, scope)
        ttl = self.ttl * (1 - random.random() * _JITTER)
        if not self.redis.enabled:
            self._local[(tenant, epoch, key)] = (time.monotonic() + ttl, list(series_ids))
            if len(self._local) > _LOCAL_ENTRIES:
                self._local.popitem(last=False)
            return
        blob = b"".join(series_ids)
        entry = f"{self._entry_prefix(tenant)}{epoch}:{key}"
        with contextlib.suppress(RedisUnavailable):
            await self.redis.call("lookup_put", lambda c: c.set(entry, blob,
                                                                px=max(1, int(ttl * 1000))))

    async def get_or_load(self, tenant: str, matchers: Iterable[Matcher],
                          load: Callable[[], Awaitable[Sequence[bytes]]],
                          scope: str = "") -> list[bytes]:
        """The cached ids for ``matchers``, or ``await load()`` (then cached)."""
        matchers = list(matchers)
        probe = await self.get(tenant, matchers, scope)
        if probe.series_ids is not None:
            return probe.series_ids
        ids = list(await load())
        await self.put(tenant, matchers, probe.epoch, ids, scope)
        return ids

    async def invalidate(self, tenant: str) -> None:
        """Make every cached lookup of ``tenant`` unreachable (after a deletion)."""
        self.bump_local(tenant)
        if self.redis.enabled:
            # If Redis is down the cached entries still expire by TTL.
            with contextlib.suppress(RedisUnavailable):
                await self.redis.call("lookup_invalidate",
                                      lambda c: c.incr(self._epoch_key(tenant)))

    def bump_local(self, tenant: str) -> None:
        """The in-process half of an invalidation (new series registered here)."""
        self._epochs[tenant] = self._epochs.get(tenant, 0) + 1
