"""The label-lookup cache on the read path (remote_read, the metadata API, PromQL): a
repeated selector takes its series ids from the cache and costs one SQL round trip; a series
written after an entry was made is in the very next answer (read-your-writes); the query
limits and the cache's max-series bound hold; and with the cache off, bypassed or with
Redis down the answers are the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import pytest
import redis as redis_sync
import snappy
from prometheus_client import CollectorRegistry

from gob_metrics.app import build_app
from gob_metrics.config import RedisConfig
from gob_metrics.keys import LOOKUP_CACHE, REDIS, STORAGE
from gob_metrics.proto.prometheus import remote_pb2, types_pb2
from gob_metrics.read import codec, select
from gob_metrics.read.matchers import MatchType, new_matcher
from gob_metrics.tenants.lookup_cache import LookupCache
from gob_metrics.tenants.redis_layer import RedisLayer
from tests.conftest import CLICKHOUSE_URL
from tests.services.redis_server import RedisServer
from tests.test_remote_read import _frames_by_query
from tests.writes import HEADERS, body

NOW = int(time.time() * 1000)
READ_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Read-Version": "0.1.0"}
SELECTOR = 'cpu{job="node"}'
local_only = pytest.mark.skipif(
    bool(CLICKHOUSE_URL), reason="without Redis the cache is in process on the embedded engine "
    "only (a ClickHouse server may have other writers)")


def cpu(instance: str, job: str = "node") -> dict[str, str]:
    return {"__name__": "cpu", "job": job, "instance": instance}


async def write(client: Any, *series: dict[str, str]) -> None:
    resp = await client.post("/api/v1/write", headers=HEADERS,
                             data=body([(s, [(NOW - 1000, 1.0)]) for s in series]))
    assert resp.status == 204, await resp.text()


# ---------------------------------------------------- readers: instances of SELECTOR

def _read_request(response_type: int) -> bytes:
    req = remote_pb2.ReadRequest(accepted_response_types=[response_type])
    q = req.queries.add(start_timestamp_ms=NOW - 3_600_000, end_timestamp_ms=NOW)
    q.matchers.add(type=types_pb2.LabelMatcher.EQ, name="__name__", value="cpu")
    q.matchers.add(type=types_pb2.LabelMatcher.EQ, name="job", value="node")
    return snappy.compress(req.SerializeToString())


async def remote_read_samples(client: Any) -> set[str]:
    resp = await client.post("/api/v1/read", data=_read_request(codec.SAMPLES),
                             headers=READ_HEADERS)
    assert resp.status == 200, await resp.text()
    out = remote_pb2.ReadResponse()
    out.ParseFromString(snappy.uncompress(await resp.read()))
    return {lb.value for ts in out.results[0].timeseries for lb in ts.labels
            if lb.name == "instance"}


async def remote_read_streamed(client: Any) -> set[str]:
    resp = await client.post("/api/v1/read", data=_read_request(codec.STREAMED_XOR_CHUNKS),
                             headers=READ_HEADERS)
    assert resp.status == 200, await resp.text()
    found = _frames_by_query(await resp.read())
    return {labels["instance"] for labels, _ in (found[0] if found else [])}


async def _api(client: Any, path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params)
    payload = await resp.json()
    assert resp.status == 200, payload
    return payload["data"]


async def series_api(client: Any) -> set[str]:
    data = await _api(client, "/api/v1/series", **{"match[]": SELECTOR})
    return {s["instance"] for s in data}


async def series_api_in_range(client: Any) -> set[str]:
    data = await _api(client, "/api/v1/series", **{"match[]": SELECTOR},
                      start=str((NOW - 3_600_000) / 1000), end=str(NOW / 1000))
    return {s["instance"] for s in data}


async def label_values_api(client: Any) -> set[str]:
    return set(await _api(client, "/api/v1/label/instance/values", **{"match[]": SELECTOR}))


async def promql_instant(client: Any) -> set[str]:
    data = await _api(client, "/api/v1/query", query=SELECTOR, time=str(NOW / 1000))
    return {r["metric"]["instance"] for r in data["result"]}


async def promql_range(client: Any) -> set[str]:
    data = await _api(client, "/api/v1/query_range", query=f"sum by (instance) ({SELECTOR})",
                      start=str((NOW - 600_000) / 1000), end=str(NOW / 1000), step="60")
    return {r["metric"]["instance"] for r in data["result"]}


Reader = Callable[[Any], Awaitable[set[str]]]
READERS: list[Any] = [
    pytest.param(remote_read_samples, id="remote_read-samples"),
    pytest.param(remote_read_streamed, id="remote_read-streamed"),
    pytest.param(series_api, id="api-series"),
    pytest.param(series_api_in_range, id="api-series-start-end"),
    pytest.param(label_values_api, id="api-label-values"),
    pytest.param(promql_instant, id="promql-query"),
    pytest.param(promql_range, id="promql-query_range"),
]


def lookups(client: Any, result: str) -> float:
    value = client.app[LOOKUP_CACHE].requests.labels(result)._value.get()
    return float(value)


def count_queries(client: Any) -> list[str]:
    """Record the SQL of every storage query the app runs from now on."""
    storage = client.app[STORAGE]
    seen: list[str] = []
    original = storage.query

    async def query(sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return await original(sql, params)

    storage.query = query
    original_native = storage.query_native

    async def query_native(sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return await original_native(sql, params)

    storage.query_native = query_native
    return seen


async def check_read_your_writes(client: Any, read: Reader) -> None:
    await write(client, cpu("a"), cpu("x", job="api"))
    assert await read(client) == {"a"}
    hits = lookups(client, "hit")
    assert await read(client) == {"a"}
    assert lookups(client, "hit") > hits, "the repeated selector did not hit the cache"
    # A new matching series, queried at once: the cached entry must not hide it.
    await write(client, cpu("b"))
    assert await read(client) == {"a", "b"}
    assert await read(client) == {"a", "b"}
    await write(client, cpu("c", job="api"))  # new, not matching
    assert await read(client) == {"a", "b"}


# ------------------------------------------------------- in process (no Redis)

@local_only
@pytest.mark.parametrize("read", READERS)
async def test_read_your_writes_local(gob_client: Any, read: Reader) -> None:
    await check_read_your_writes(gob_client, read)


@local_only
@pytest.mark.parametrize(("read", "miss", "hit"), [
    pytest.param(remote_read_samples, 2, 1, id="remote_read-samples"),
    pytest.param(promql_instant, 2, 1, id="promql-query"),
    pytest.param(series_api, 2, 1, id="api-series"),
])
async def test_one_round_trip_on_a_hit(gob_client: Any, read: Reader, miss: int,
                                       hit: int) -> None:
    await write(gob_client, cpu("a"), cpu("b"), cpu("x", job="api"))
    seen = count_queries(gob_client)
    assert await read(gob_client) == {"a", "b"}
    assert len(seen) == miss, seen  # the ids are loaded, then used
    seen.clear()
    assert await read(gob_client) == {"a", "b"}
    assert len(seen) == hit, seen
    assert "Array(UInt128)" in seen[0] and "match(" not in seen[0]


@local_only
async def test_limit_holds_on_a_hit(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(
        **{"limits.max_fetched_series_per_query": "1"})))
    await write(client, cpu("a"), cpu("b"))
    for _ in range(2):  # a miss, then a hit
        resp = await client.get("/api/v1/query", params={"query": SELECTOR,
                                                          "time": str(NOW / 1000)})
        assert resp.status == 422, await resp.text()
        assert "max_fetched_series_per_query=1" in await resp.text()
    assert lookups(client, "hit") == 1


@local_only
async def test_selection_over_the_max_series_bound(aiohttp_client: Any,
                                                   make_config: Any) -> None:
    """More series than redis.lookup_cache_max_series: answered by the matchers in SQL,
    and remembered as too many so the ids are not loaded again."""
    client = await aiohttp_client(build_app(make_config(
        **{"redis.lookup_cache_max_series": "2"})))
    await write(client, cpu("a"), cpu("b"), cpu("c"))
    seen = count_queries(client)
    assert await promql_instant(client) == {"a", "b", "c"}
    assert len(seen) == 2 and "match(" not in seen[1]  # the (cut) id load, then by matchers
    seen.clear()
    assert await promql_instant(client) == {"a", "b", "c"}
    assert len(seen) == 1 and "Array(UInt128)" not in seen[0]
    assert lookups(client, "too_many") == 1
    await write(client, cpu("d", job="api"))  # a new series: a new epoch, loaded again
    seen.clear()
    assert await promql_instant(client) == {"a", "b", "c"}
    assert len(seen) == 2


@pytest.mark.parametrize(("settings", "enabled"), [
    pytest.param({}, True, id="embedded-no-redis"),
    pytest.param({"local": False}, False, id="clickhouse-server-no-redis"),
    pytest.param({"url": "redis://127.0.0.1:1/0", "local": False}, True, id="redis"),
    pytest.param({"ttl": 0.0}, False, id="ttl-0"),
    pytest.param({"max_series": 0}, False, id="max-series-0"),
])
def test_cache_enabled(settings: dict[str, Any], enabled: bool) -> None:
    registry = CollectorRegistry()
    redis = RedisLayer(RedisConfig(url=settings.get("url", "")), registry)
    cache = LookupCache(redis, registry, settings.get("ttl", 300.0),
                        settings.get("max_series", 100_000), local=settings.get("local", True))
    assert cache.enabled is enabled


@local_only
async def test_cache_off_answers_the_same(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(**{"redis.lookup_cache_ttl": "0"})))
    await write(client, cpu("a"))
    seen = count_queries(client)
    for read in (remote_read_samples, promql_instant, series_api):
        assert await read(client) == {"a"}
    assert all("Array(UInt128)" not in sql for sql in seen)
    assert lookups(client, "miss") == lookups(client, "hit") == 0


async def test_many_ids_bind_without_stalling_the_engine(gob_client: Any) -> None:
    """70,000 ids (as a raised redis.lookup_cache_max_series allows): bound as a subquery
    over the array. As a constant set (``IN {ids:Array(UInt128)}``) the embedded engine
    spent minutes on this query, holding the engine."""
    storage = gob_client.app[STORAGE]
    n = 70_000
    ids = [(i * 2654435761 + 1).to_bytes(16, "little") for i in range(n)]
    await storage.insert("series", pa.table({
        "tenant": ["anonymous"] * n, "series_id": pa.array(ids, pa.binary(16)),
        "metric_name": ["m"] * n,
        "labels": pa.array([[("i", str(i))] for i in range(n)],
                           pa.map_(pa.string(), pa.string()))}))
    selector = select.new_selector([new_matcher(MatchType.EQ, "__name__", "m")], 0, NOW)
    sql, params = select.select_sql(storage, selector, "anonymous", select.Limits(), ids)
    started = time.monotonic()
    table = await asyncio.wait_for(storage.query(sql, params), 60)
    assert table.num_rows == 0  # no samples
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------- with Redis



@pytest.fixture
async def redis_client(aiohttp_client: Any, make_config: Any, redis_url: str) -> Any:
    return await aiohttp_client(build_app(make_config(**{
        "redis.url": redis_url, "redis.retry_interval": "100ms", "redis.timeout": "200ms"})))


@pytest.mark.integration
@pytest.mark.parametrize("read", READERS)
async def test_read_your_writes_redis(redis_client: Any, read: Reader) -> None:
    await check_read_your_writes(redis_client, read)


@pytest.mark.integration
async def test_epoch_moves_before_the_write_is_answered(redis_client: Any,
                                                        redis_url: str) -> None:
    cache = redis_client.app[LOOKUP_CACHE]
    r = redis_sync.Redis.from_url(redis_url)
    key = cache._epoch_key("anonymous")
    await write(redis_client, cpu("a"))
    first = int(r.get(key))
    await write(redis_client, cpu("a"))  # known series: the epoch stays
    assert int(r.get(key)) == first
    await write(redis_client, cpu("b"))
    assert int(r.get(key)) == first + 1  # no waiting: moved before the 204
    assert [k for k in r.keys("*lookup*")] == []
    assert await promql_instant(redis_client) == {"a", "b"}
    assert len(r.keys("*lookup*")) == 1  # the entry lives in Redis
    r.close()


@pytest.mark.integration
async def test_redis_down_reads_bypass_and_new_series_are_not_missed(
        redis_client: Any, redis_srv: RedisServer, redis_url: str) -> None:
    """Redis hangs: reads bypass the cache and stay correct; a series written meanwhile
    (Redis could not be told) is in the first answer once Redis is back, although the
    entry made before it is still in Redis."""
    app = redis_client.app
    await write(redis_client, cpu("a"))
    assert await promql_instant(redis_client) == {"a"}
    assert await promql_instant(redis_client) == {"a"}
    assert lookups(redis_client, "hit") == 1
    redis_srv.freeze()
    try:
        await write(redis_client, cpu("b"))  # the epoch increment times out: stale here
        assert not app[REDIS].up
        for read in (promql_instant, remote_read_samples, series_api):
            assert await read(redis_client) == {"a", "b"}
        assert lookups(redis_client, "bypass") >= 3
    finally:
        redis_srv.resume()
    deadline = time.monotonic() + 5
    while not app[REDIS].up:
        assert time.monotonic() < deadline, "did not reconnect to redis"
        await asyncio.sleep(0.05)
    r = redis_sync.Redis.from_url(redis_url)
    assert len(r.keys("*lookup*")) == 1  # the old entry, {a}, has not expired
    r.close()
    assert await promql_instant(redis_client) == {"a", "b"}
    assert await promql_instant(redis_client) == {"a", "b"}
