"""Label-lookup cache for reads: a matcher set of one tenant -> the ids of the series it
selects, so repeated queries (dashboards refreshing) skip the series-table scan.

Invalidation is by epoch, not by key: every tenant has an epoch number that goes up when
it gets new series or loses some (deletion), and the epoch is part of every cache key, so
one increment makes all of the tenant's cached lookups unreachable at once (they expire by
TTL). Reading the epoch and the entry is one Lua call, so a reader never pairs a new epoch
with an old entry. TTLs are jittered (up to 20% shorter) so entries written together do not
expire together.

Where it lives: in Redis when ``redis.url`` is set (shared by replicas); without Redis in
process, but only when this process is the only writer (the embedded engine): with a
ClickHouse server and no Redis another replica's new series would not move this process'
epoch, so the cache is off. While a configured Redis is down, lookups bypass the cache.

A new series moves the epoch before its write is acknowledged (:meth:`new_series`, called
by the writer once the series row is durable), so a query sent after a write that created
a series never gets an entry made before it. If Redis cannot be told, the tenant is marked
stale here: this process bypasses the cache for it until the increment succeeds (at its
next lookup or when Redis is back).

A selection of more than ``max_series`` series is remembered as "too many" (a marker, not
the ids), so a huge selector costs one probe instead of a wasted id load every time.

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
# Returns {epoch, entry or false}; an entry is the ids' 16-byte strings concatenated, or
# _TOO_MANY.
_GET_LUA = """
local epoch = redis.call('GET', KEYS[1]) or '0'
return {epoch, redis.call('GET', ARGV[1] .. epoch .. ':' .. ARGV[2])}
"""
_LOCAL_ENTRIES = 10_000
_JITTER = 0.2
_TOO_MANY = b"+"  # never a multiple of 16 bytes, so never a list of ids

Matcher = tuple[str, str, str]  # (label name, "=" | "!=" | "=~" | "!~", value)


@dataclass(frozen=True)
class Lookup:
    """A cache probe: the tenant's epoch when probed (-1: the cache is bypassed), and the
    ids if they were cached (``too_many`` if the selection had more than max_series)."""

    epoch: int
    series_ids: list[bytes] | None
    too_many: bool = False


def matcher_key(matchers: Iterable[Matcher], scope: str = "") -> str:
    """A stable hash of a matcher set (order does not matter) plus anything else that
    changes the answer (``scope``, e.g. a time-range bucket)."""
    canonical = json.dumps([sorted(tuple(m) for m in matchers), scope], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class LookupCache:
    """matcher set -> series ids per tenant, invalidated by a per-tenant epoch."""

    def __init__(self, redis: RedisLayer, registry: CollectorRegistry, ttl: float,
                 max_series: int, local: bool = True) -> None:
        self.redis = redis
        self.ttl = ttl
        self.max_series = max_series
        #: without Redis, cache in process (only safe when this process is the only writer).
        self.local = local
        self.namespace = "local"  # set to the storage's identity at start
        self._local: OrderedDict[tuple[str, int, str], tuple[float, list[bytes] | None]] = \
            OrderedDict()
        self._epochs: dict[str, int] = {}
        # Tenants with new series (or deletions) Redis has not been told of yet.
        self._stale: set[str] = set()
        self._get = None
        self.requests = Counter("gob_lookup_cache_requests_total",
                                "Label-lookup cache probes, by result (hit, miss, too_many: "
                                "remembered as selecting more than redis.lookup_cache_max_series "
                                "series, bypass: Redis is down).", ["result"], registry=registry)
        if redis.enabled:
            redis.on_recover.append(self._flush_stale)

    @property
    def enabled(self) -> bool:
        """Whether lookups can be cached at all (configured, and safe where it would live)."""
        return self.ttl > 0 and self.max_series > 0 and (self.redis.enabled or self.local)

    def _epoch_key(self, tenant: str) -> str:
        return self.redis.key(self.namespace, "{" + tenant + "}", "epoch")

    def _entry_prefix(self, tenant: str) -> str:
        return self.redis.key(self.namespace, "{" + tenant + "}", "lookup", "")

    # -- the API the read path calls

    async def get(self, tenant: str, matchers: Iterable[Matcher], scope: str = "") -> Lookup:
        """Probe the cache. Pass the returned epoch to :meth:`put` with what was loaded."""
        key = matcher_key(matchers, scope)
        if not self.enabled:
            return Lookup(-1, None)
        if not self.redis.enabled:
            epoch = self._epochs.get(tenant, 0)
            hit = self._local.get((tenant, epoch, key))
            if hit is not None and hit[0] > time.monotonic():
                self._local.move_to_end((tenant, epoch, key))
                return self._found(epoch, hit[1])
            self.requests.labels("miss").inc()
            return Lookup(epoch, None)
        if tenant in self._stale:
            # Tell Redis of this tenant's new series first; its new epoch has no entries.
            try:
                epoch = await self.redis.call("lookup_invalidate",
                                              lambda c: c.incr(self._epoch_key(tenant)))
            except RedisUnavailable:
                self.requests.labels("bypass").inc()
                return Lookup(-1, None)
            self._stale.discard(tenant)
            self.requests.labels("miss").inc()
            return Lookup(int(epoch), None)
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
        return self._found(epoch, None if blob == _TOO_MANY else
                           [blob[i:i + 16] for i in range(0, len(blob), 16)])

    def _found(self, epoch: int, ids: list[bytes] | None) -> Lookup:
        if ids is None:
            self.requests.labels("too_many").inc()
            return Lookup(epoch, None, too_many=True)
        self.requests.labels("hit").inc()
        return Lookup(epoch, ids)

    async def put(self, tenant: str, matchers: Iterable[Matcher], epoch: int,
                  series_ids: Sequence[bytes], scope: str = "") -> None:
        """Remember what ``matchers`` selected when the tenant's epoch was ``epoch`` (more
        than ``max_series`` ids are remembered as too many, without the ids)."""
        if epoch < 0 or not self.enabled:
            return
        too_many = len(series_ids) > self.max_series
        key = matcher_key(matchers, scope)
        ttl = self.ttl * (1 - random.random() * _JITTER)
        if not self.redis.enabled:
            self._local[(tenant, epoch, key)] = (time.monotonic() + ttl,
                                                 None if too_many else list(series_ids))
            if len(self._local) > _LOCAL_ENTRIES:
                self._local.popitem(last=False)
            return
        blob = _TOO_MANY if too_many else b"".join(series_ids)
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
        if not probe.too_many:
            await self.put(tenant, matchers, probe.epoch, ids, scope)
        return ids

    async def new_series(self, tenants: Iterable[str]) -> None:
        """Move the epochs of ``tenants``: they got new series (or lost some). Called before
        the write is acknowledged; if Redis cannot be told, the tenants are stale here."""
        tenants = sorted(set(tenants))
        for tenant in tenants:
            self.bump_local(tenant)
        if not self.redis.enabled or not tenants:
            return

        async def incr(client):  # type: ignore[no-untyped-def]
            pipe = client.pipeline(transaction=False)
            for tenant in tenants:
                pipe.incr(self._epoch_key(tenant))
            return await pipe.execute()

        try:
            await self.redis.call("lookup_invalidate", incr)
        except RedisUnavailable:
            self._stale.update(tenants)
        else:
            self._stale.difference_update(tenants)

    async def invalidate(self, tenant: str) -> None:
        """Make every cached lookup of ``tenant`` unreachable (after a deletion)."""
        await self.new_series([tenant])

    def bump_local(self, tenant: str) -> None:
        """The in-process half of an invalidation."""
        self._epochs[tenant] = self._epochs.get(tenant, 0) + 1

    async def _flush_stale(self) -> None:
        """Redis is back: move the epochs of the tenants it missed while it was away."""
        if self._stale:
            await self.new_series(list(self._stale))
