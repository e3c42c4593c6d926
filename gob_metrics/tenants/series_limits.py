"""Series registration and the per-tenant series limits.

Registration: which series are already in the series table, so it is written once per new
series. The in-process ``SeriesCache`` answers first (by raw label bytes); a series it does
not know is decoded and hashed, then — with Redis — looked up in the tenant's Redis set of
registered ids, shared by every replica on the same storage. Only series whose row is
durable go into either (``registered()`` is called by the writer after the insert).

Limits: ``max_global_series_per_user`` and ``max_global_series_per_metric`` count the
tenant's series in the series table. Each replica keeps counts seeded from the table at
start and re-read every ``tenancy.series_count_refresh`` (which corrects drift), plus the
series it admitted since; with Redis, the Redis counts (incremented exactly once per id
added to the set) are consulted too and the larger count wins. New series beyond a limit
are discarded (400) with every sample; known series are never refused. Across replicas the
limit can be overshot by the new series admitted at the same instant (as in Mimir).

Redis keys live under the storage's identity (its series table's UUID): replicas writing to
different storages never share registrations (which would leave series rows unwritten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter, deque
from collections.abc import Sequence

from gob_metrics.storage import schema
from gob_metrics.storage.base import Storage, StorageError
from gob_metrics.tenants.limits import Overrides, limit_message
from gob_metrics.tenants.lookup_cache import LookupCache
from gob_metrics.tenants.redis_layer import RedisLayer, RedisUnavailable
from gob_metrics.write.prepare import NewSeries, Prepared, describe_series
from gob_metrics.write.series import SeriesCache

log = logging.getLogger(__name__)

REASON_PER_USER = "per_user_series_limit"
REASON_PER_METRIC = "per_metric_series_limit"

# KEYS: the tenant's set of ids, per-metric counts (hash), total count.
# ARGV: id, metric name, id, metric name, ... Adds each id once; counts only the new ones.
# (The lookup epoch is moved by registered() before the write is acknowledged, not here:
# this push runs in the background, after the writer has answered.)
_REGISTER_LUA = """
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    added = added + 1
  end
end
if added > 0 then
  redis.call('INCRBY', KEYS[3], added)
end
return added
"""
_BACKLOG = 200_000  # series registered while Redis was down, pushed when it is back
_PUSH_CHUNK = 5_000


class SeriesRegistry:
    """Which series are registered, and how many each tenant has."""

    def __init__(self, cache: SeriesCache, overrides: Overrides, redis: RedisLayer,
                 lookups: LookupCache, refresh_interval: float) -> None:
        self.cache = cache
        self.overrides = overrides
        self.redis = redis
        self.lookups = lookups
        self.refresh_interval = refresh_interval
        self.namespace = "local"
        self.totals: Counter[str] = Counter()
        self.per_metric: Counter[tuple[str, str]] = Counter()
        # ids admitted since the last refresh, so a new series sent again before its row is
        # durable (or after eviction from the cache) is counted once.
        self._admitted: dict[str, set[bytes]] = {}
        self._backlog: deque[tuple[str, bytes, str]] = deque(maxlen=_BACKLOG)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._storage: Storage | None = None
        self._register = None

    # -- lifecycle

    async def start(self, storage: Storage) -> None:
        self._storage = storage
        self.namespace = await storage_identity(storage)
        self.lookups.namespace = self.namespace
        await self.refresh_counts()
        self.redis.on_recover.append(self._push_backlog)
        self._tasks = [asyncio.create_task(self._refresh_loop(), name="series-count-refresh")]
        if self.redis.enabled:
            self._register = self.redis.script(_REGISTER_LUA)
            self._tasks.append(asyncio.create_task(self._push_loop(), name="series-push"))

    async def close(self) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self._push_backlog()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh_counts(self) -> None:
        """Re-read every tenant's series counts from the series table."""
        if self._storage is None:
            return
        db = self._storage.database
        try:
            table = await self._storage.query(
                f"SELECT tenant, metric_name, uniqExact(series_id) AS n FROM {db}.{schema.SERIES} "
                "GROUP BY tenant, metric_name")
        except StorageError as exc:
            log.warning("could not count series per tenant; keeping the previous counts",
                        extra={"error": str(exc)})
            return
        totals: Counter[str] = Counter()
        per_metric: Counter[tuple[str, str]] = Counter()
        for row in table.to_pylist():
            totals[row["tenant"]] += row["n"]
            per_metric[(row["tenant"], row["metric_name"])] = row["n"]
        self.totals, self.per_metric = totals, per_metric
        self._admitted = {}

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh_counts()

    def series_count(self, tenant: str) -> int:
        """Series of ``tenant`` as this replica counts them."""
        return self.totals[tenant]

    # -- the write path

    async def admit(self, part: Prepared) -> None:
        """Drop from ``part`` the new series already registered elsewhere (they need no row)
        and those over the tenant's series limits (with their samples, reason and message)."""
        if not part.new_series:
            return
        tenant = part.tenant
        unique: dict[bytes, NewSeries] = {}
        for s in part.new_series:
            unique.setdefault(s.series_id, s)
        remote_total, remote_metric = await self._known_remotely(tenant, unique)
        if not unique:
            part.new_series = []
            return
        limits = self.overrides.for_tenant(tenant)
        max_user = limits.max_global_series_per_user
        max_metric = limits.max_global_series_per_metric
        admitted = self._admitted.setdefault(tenant, set())
        user_offset = max(0, remote_total - self.totals[tenant])
        bad: dict[bytes, tuple[str, str]] = {}
        for sid, s in unique.items():
            if sid in admitted:
                continue
            total = self.totals[tenant] + user_offset
            if max_user and total >= max_user:
                bad[sid] = (REASON_PER_USER, (
                    f"series {s.index} ({describe_series(s.metric_name, s.labels)}): tenant has "
                    f"{total} series, the limit is "
                    f"{limit_message('max_global_series_per_user', max_user, tenant)}"))
                continue
            mkey = (tenant, s.metric_name)
            in_metric = max(self.per_metric[mkey], remote_metric.get(s.metric_name, 0))
            if max_metric and in_metric >= max_metric:
                bad[sid] = (REASON_PER_METRIC, (
                    f"series {s.index} ({describe_series(s.metric_name, s.labels)}): metric "
                    f"{s.metric_name!r} has {in_metric} series, the limit is "
                    f"{limit_message('max_global_series_per_metric', max_metric, tenant)}"))
                continue
            admitted.add(sid)
            self.totals[tenant] += 1
            self.per_metric[mkey] = in_metric + 1
        if bad:
            # Over a limit is the rare path: make sure these series are really new (this
            # process may just not know them yet, e.g. after a restart) before refusing.
            for sid in await self._in_series_table(tenant, list(bad)):
                del bad[sid]
                self.cache.add_many([(unique[sid].key, unique.pop(sid).series_id)])
        part.new_series = [s for s in part.new_series if s.series_id in unique]
        if bad:
            part.drop_series(bad)

    async def _in_series_table(self, tenant: str, ids: list[bytes]) -> list[bytes]:
        if self._storage is None:
            return []
        db = self._storage.database
        # The ids as a subquery over the array: a constant set of more than ~60,000 ids on
        # a key column stalls the embedded engine for minutes (see read.select.id_set).
        table = await self._storage.query(
            f"SELECT DISTINCT series_id FROM {db}.{schema.SERIES} WHERE tenant = "
            "{tenant:String} AND series_id IN (SELECT arrayJoin({ids:Array(UInt128)}))",
            {"tenant": tenant, "ids": [int.from_bytes(i, "little") for i in ids]})
        found = set(table.column("series_id").to_pylist()) if table.num_rows else set()
        return [i for i in ids if i in found]

    async def _known_remotely(self, tenant: str, unique: dict[bytes, NewSeries]
                              ) -> tuple[int, dict[str, int]]:
        """Remove from ``unique`` the ids in the Redis set (caching them locally); return
        the Redis series counts (0 and {} without Redis)."""
        if not self.redis.enabled:
            return 0, {}
        ids = list(unique)
        metrics = sorted({s.metric_name for s in unique.values()})
        keys = self._keys(tenant)

        async def probe(client):  # type: ignore[no-untyped-def]
            pipe = client.pipeline(transaction=False)
            pipe.smismember(keys[0], ids)
            pipe.hmget(keys[1], metrics)
            pipe.get(keys[2])
            return await pipe.execute()

        try:
            member, metric_counts, total = await self.redis.call("series_lookup", probe)
        except RedisUnavailable:
            return 0, {}
        known = [(unique[sid].key, unique.pop(sid).series_id)
                 for sid, hit in zip(ids, member, strict=True) if hit]
        if known:
            self.cache.add_many(known)
        remote_metric = {m: int(c) for m, c in zip(metrics, metric_counts, strict=True) if c}
        return int(total or 0), remote_metric

    async def registered(self, series: Sequence[NewSeries]) -> None:
        """Called by the writer once the rows of ``series`` are durable, before the write
        is acknowledged: a query sent after the answer must not get a cached lookup made
        before these series existed (read-your-writes through the lookup cache)."""
        self.cache.add_many([(s.key, s.series_id) for s in series])
        await self.lookups.new_series({s.key[0] for s in series})
        if self.redis.enabled:
            self._backlog.extend((s.key[0], s.series_id, s.metric_name) for s in series)
            self._wake.set()

    async def invalidate_tenant(self, tenant: str) -> None:
        """Forget that any series of ``tenant`` is registered (after a deletion), so the
        next sample of a deleted series registers it again; invalidates its lookups."""
        self.cache.forget_tenant(tenant)
        await self.lookups.invalidate(tenant)
        if self.redis.enabled:
            keys = self._keys(tenant)
            with contextlib.suppress(RedisUnavailable):
                await self.redis.call("series_forget", lambda c: c.delete(*keys))
        await self.refresh_counts()

    # -- pushing registrations to Redis (in the background: never on the request's path)

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        base = (self.namespace, "{" + tenant + "}")
        k = self.redis.key
        return k(*base, "series"), k(*base, "series_per_metric"), k(*base, "series_total")

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(RedisUnavailable):
                await self._push_backlog()

    async def _push_backlog(self) -> None:
        while self._backlog and self._register is not None:
            chunk = [self._backlog.popleft()
                     for _ in range(min(_PUSH_CHUNK, len(self._backlog)))]
            by_tenant: dict[str, list[bytes | str]] = {}
            for tenant, sid, metric in chunk:
                by_tenant.setdefault(tenant, []).extend((sid, metric))
            script = self._register
            try:
                for tenant, args in by_tenant.items():
                    keys = list(self._keys(tenant))
                    await self.redis.call("series_register",
                                          lambda _c, k=keys, a=args, f=script: f(keys=k, args=a))
            except RedisUnavailable:
                # Keep them for when Redis is back (re-adding a pushed id is harmless).
                self._backlog.extendleft(reversed(chunk))
                raise


async def storage_identity(storage: Storage) -> str:
    """A short id of the storage (its series table's UUID): Redis keys of replicas on
    different storages never meet."""
    try:
        table = await storage.query(
            "SELECT toString(uuid) AS u FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            {"db": storage.database, "t": schema.SERIES})
        rows = table.column("u").to_pylist() if table.num_rows else []
    except StorageError:
        rows = []
    uuid = (rows[0] if rows else "").replace("-", "")
    if not uuid or set(uuid) == {"0"}:
        # No UUID (an Ordinary database): share nothing rather than risk a wrong answer.
        return "p" + os.urandom(8).hex()
    return uuid[:16]
