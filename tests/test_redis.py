"""The Redis layer against a real redis-server: shared rate limit and overrides across two
server processes, the shared series registration and lookup caches, and Redis dying and
coming back mid-ingest without a request failing or a sample lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync

from gob_metrics.app import build_app
from gob_metrics.config import Limits, RedisConfig
from gob_metrics.keys import LOOKUP_CACHE, REDIS, SERIES_CACHE, SERIES_REGISTRY, STORAGE
from gob_metrics.tenants.limits import Overrides, parse_overrides
from gob_metrics.tenants.ratelimit import RateLimiter
from gob_metrics.tenants.redis_layer import RedisLayer
from gob_metrics.write.series import canonicalize
from tests.conftest import cli
from tests.services.proc import free_port, wait_port
from tests.services.redis_server import RedisServer
from tests.writes import HEADERS, body, count, write_request

pytestmark = pytest.mark.integration
NOW = int(time.time() * 1000)
UP = {"__name__": "up", "job": "node"}


def redis_client(url: str) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(url)


async def until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check`` without blocking the event loop the app runs on."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def settings(url: str, **more: str) -> dict[str, str]:
    return {"redis.url": url, "redis.retry_interval": "100ms", **more}


async def metric(client: Any, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


# ----------------------------------------------------------- two server processes

GOB = [sys.executable, "-m", "gob_metrics"]


class Replica:
    """``gob-metrics serve`` as a user runs it, on its own embedded data directory."""

    def __init__(self, data_dir: Path, redis_url: str, *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*GOB, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir),
             "--redis-url", redis_url, "--multitenancy", "--log-level", "warning",
             "--set", "redis.retry_interval=100ms", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[tuple[Replica, Replica]]:
    limits = ["--set", "limits.ingestion_rate=100", "--set", "limits.ingestion_burst_size=1000"]
    a = Replica(tmp_path / "a", redis_url, *limits)
    b = Replica(tmp_path / "b", redis_url, *limits)
    try:
        for r in (a, b):
            wait_port(r.port, 60, r.proc)
        yield a, b
    finally:
        a.stop()
        b.stop()


def batch(n: int, name: str = "m", ts: int = NOW - 1000) -> bytes:
    return body([({"__name__": name, "i": str(i)}, [(ts, 1.0)]) for i in range(n)])


async def post(session: aiohttp.ClientSession, url: str, data: bytes,
               tenant: str = "team-a") -> tuple[int, str]:
    async with session.post(url, data=data,
                            headers={**HEADERS, "X-Scope-OrgID": tenant}) as resp:
        return resp.status, await resp.text()


async def test_two_replicas_share_rate_limit_and_see_overrides_within_1s(
        replicas: tuple[Replica, Replica], redis_url: str) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as session:
        # One bucket of 1000 for team-a across both replicas: each alone would admit 600.
        assert await post(session, a.url, batch(600)) == (204, "")
        status, text = await post(session, b.url, batch(600, ts=NOW - 900))
        assert status == 429, text
        assert "ingestion_rate=100 for tenant 'team-a'" in text
        # team-b has its own bucket.
        assert (await post(session, b.url, batch(600), "team-b"))[0] == 204

        # A runtime override reaches both replicas within a second, without a restart.
        assert (await post(session, a.url, body([(UP, [(NOW - 800, 1.0)])]), "t2"))[0] == 204
        assert cli("limits", "set", "t2", "max_label_names_per_series", "1",
                         "--redis-url", redis_url) == 0
        changed = time.monotonic()
        pending = {a.url, b.url}
        ts = NOW - 700
        while pending:
            for url in sorted(pending):
                ts += 1
                status, text = await post(session, url, body([(UP, [(ts, 1.0)])]), "t2")
                if status == 400:
                    assert "max_label_names_per_series=1 for tenant 't2'" in text
                    pending.discard(url)
            assert time.monotonic() - changed < 1.0, f"{pending} did not apply it within 1 s"
            await asyncio.sleep(0.02)


async def test_two_replicas_share_sql_query_rate(tmp_path: Path, redis_url: str) -> None:
    """The SQL gateway's query rate is one bucket per tenant across replicas, and a runtime
    override of it (limits set TENANT sql_query_rate ...) reaches both within 1 s."""
    limits = ["--set", "sql.query_rate=0.01", "--set", "sql.query_burst_size=3"]
    a = Replica(tmp_path / "a", redis_url, *limits)
    b = Replica(tmp_path / "b", redis_url, *limits)
    try:
        for r in (a, b):
            wait_port(r.port, 60, r.proc)
        urls = [f"http://127.0.0.1:{r.port}/api/v1/sql" for r in (a, b)]

        async def query(session: aiohttp.ClientSession, url: str,
                        tenant: str = "team-a") -> tuple[int, str]:
            async with session.post(url, data="SELECT 1",
                                    headers={"X-Scope-OrgID": tenant}) as resp:
                return resp.status, await resp.text()

        async with aiohttp.ClientSession() as session:
            # Three tokens for team-a in all: each replica alone would admit three.
            got = [await query(session, urls[i % 2]) for i in range(4)]
            assert [status for status, _ in got] == [200, 200, 200, 429], got
            assert "sql.query_rate=0.01/s" in got[3][1]
            assert (await query(session, urls[0]))[0] == 429
            assert (await query(session, urls[1], "team-b"))[0] == 200  # its own bucket
            assert cli("limits", "set", "team-a", "sql_query_rate", "0",
                       "--redis-url", redis_url) == 0
            changed = time.monotonic()
            pending = set(urls)
            while pending:
                for url in sorted(pending):
                    if (await query(session, url))[0] == 200:
                        pending.discard(url)
                assert time.monotonic() - changed < 1.0, f"{pending} kept the old rate"
                await asyncio.sleep(0.02)
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- in-process apps

@pytest.fixture
async def redis_app(aiohttp_client: Any, make_config: Any, redis_url: str) -> AsyncIterator[Any]:
    yield await aiohttp_client(build_app(make_config(**settings(redis_url))))


async def test_distributed_token_bucket_is_atomic(redis_url: str) -> None:
    """Eight limiters (as if eight replicas) race for one bucket: exactly burst is admitted."""
    from prometheus_client import CollectorRegistry

    overrides = Overrides(Limits(ingestion_rate=0.001, ingestion_burst_size=100))
    # A generous timeout: this is about atomicity, not about a loaded machine's latency.
    layers = [RedisLayer(RedisConfig(url=redis_url, timeout=5.0), CollectorRegistry())
              for _ in range(8)]
    for layer in layers:
        await layer.start()
    try:
        limiters = [RateLimiter(overrides, layer) for layer in layers]

        async def take(limiter: RateLimiter) -> int:
            try:
                await limiter.admit("t", 1)
                return 1
            except Exception:
                return 0

        results = await asyncio.gather(*[take(limiters[i % 8]) for i in range(400)])
        assert sum(results) == 100
        assert all(layer.up for layer in layers)
    finally:
        for layer in layers:
            await layer.close()


async def test_distributed_sql_query_rate_is_atomic(redis_url: str) -> None:
    """Eight gateways' admissions (as if eight replicas) race for one tenant's query bucket:
    exactly burst queries are admitted, each refusal names the limit and the tenant."""
    from prometheus_client import CollectorRegistry

    from gob_metrics.config import SqlConfig
    from gob_metrics.errors import TooManyRequests
    from gob_metrics.gateway.limits import Admission
    from gob_metrics.tenants.ratelimit import TokenBuckets

    layers = [RedisLayer(RedisConfig(url=redis_url, timeout=5.0), CollectorRegistry())
              for _ in range(8)]
    for layer in layers:
        await layer.start()
    try:
        gates = [Admission(TokenBuckets(layer, "sql_rate", "sql_rate_limit"))
                 for layer in layers]
        limits = SqlConfig(query_rate=0.001, query_burst_size=25)
        refusals: list[str] = []

        async def take(gate: Admission) -> int:
            try:
                await gate.take("t", limits)
                return 1
            except TooManyRequests as exc:
                refusals.append(str(exc))
                return 0

        results = await asyncio.gather(*[take(gates[i % 8]) for i in range(100)])
        assert sum(results) == 25
        assert all(layer.up for layer in layers)
        assert "tenant 't' over its query rate: sql.query_rate=0.001/s" in refusals[0]
        # The ingestion bucket of the same tenant is another key: untouched.
        r = redis_client(redis_url)
        assert r.exists("gob:sql_rate:{t}") and not r.exists("gob:rate:{t}")
        r.close()
    finally:
        for layer in layers:
            await layer.close()


async def test_series_registration_shared_through_redis(redis_app: Any, redis_url: str) -> None:
    app = redis_app.app
    registry = app[SERIES_REGISTRY]
    keys = registry._keys("anonymous")
    r = redis_client(redis_url)
    resp = await redis_app.post("/api/v1/write", data=body([(UP, [(NOW - 1000, 1.0)])]),
                                headers=HEADERS)
    assert resp.status == 204
    sid = canonicalize(write_request_labels(UP))[0]
    await until(lambda: r.sismember(keys[0], sid), 5, "series id pushed to redis")
    assert int(r.get(keys[2])) == 1 and int(r.hget(keys[1], "up")) == 1
    # Another replica on the same storage registered this series: no row is written here.
    other = {"__name__": "up", "job": "other"}
    other_sid = canonicalize(write_request_labels(other))[0]
    r.sadd(keys[0], other_sid)
    storage = app[STORAGE]
    before = await count(storage, "series")
    resp = await redis_app.post("/api/v1/write", data=body([(other, [(NOW - 1000, 2.0)])]),
                                headers=HEADERS)
    assert resp.status == 204
    assert await count(storage, "series") == before
    assert await count(storage, "samples") == 2
    assert len(app[SERIES_CACHE]) == 2  # learned from redis, no decode next time
    # The same series registered again (e.g. after cache eviction) is counted once.
    app[SERIES_CACHE].forget_tenant("anonymous")
    resp = await redis_app.post("/api/v1/write", data=body([(UP, [(NOW - 500, 1.0)])]),
                                headers=HEADERS)
    assert resp.status == 204
    await asyncio.sleep(0.1)
    assert int(r.get(keys[2])) == 1
    r.close()


def write_request_labels(labels: dict[str, str]) -> list[bytes]:
    from gob_metrics.proto.gob import ingest_pb2

    req = ingest_pb2.RawWriteRequest()
    req.ParseFromString(write_request([(labels, [(0, 0.0)])]))
    return list(req.timeseries[0].labels)


async def test_series_limit_counts_in_redis(aiohttp_client: Any, make_config: Any,
                                            redis_url: str) -> None:
    """Series registered by other replicas (Redis counts) count towards the limit."""
    client = await aiohttp_client(build_app(make_config(**settings(
        redis_url, **{"limits.max_global_series_per_user": "5"}))))
    keys = client.app[SERIES_REGISTRY]._keys("anonymous")
    r = redis_client(redis_url)
    r.set(keys[2], 4)  # four series registered elsewhere
    resp = await client.post("/api/v1/write", headers=HEADERS, data=body(
        [({"__name__": "m", "i": str(i)}, [(NOW - 1000, 1.0)]) for i in range(3)]))
    text = await resp.text()
    assert resp.status == 400, text
    assert "tenant has 5 series, the limit is max_global_series_per_user=5" in text
    assert await count(client.app[STORAGE], "samples") == 1
    r.close()


async def test_lookup_cache_in_redis(redis_app: Any, redis_url: str) -> None:
    cache = redis_app.app[LOOKUP_CACHE]
    matchers = [("__name__", "=", "up"), ("job", "=~", "n.*")]
    ids = [bytes([i]) * 16 for i in range(3)]
    loads = 0

    async def load() -> list[bytes]:
        nonlocal loads
        loads += 1
        return ids

    assert await cache.get_or_load("anonymous", matchers, load) == ids
    assert await cache.get_or_load("anonymous", matchers[::-1], load) == ids
    assert loads == 1
    r = redis_client(redis_url)
    entry = [k for k in r.keys("*lookup*")]
    assert len(entry) == 1
    ttl = r.pttl(entry[0])
    assert 240_000 <= ttl <= 300_000  # 5m minus up to 20% jitter
    # A new series of the tenant (registered by any replica) moves its epoch.
    resp = await redis_app.post("/api/v1/write", data=body([(UP, [(NOW - 1000, 1.0)])]),
                                headers=HEADERS)
    assert resp.status == 204
    deadline = time.monotonic() + 5
    while (await cache.get("anonymous", matchers)).series_ids is not None:
        assert time.monotonic() < deadline, "epoch not bumped by the new series"
        await asyncio.sleep(0.02)
    await cache.get_or_load("anonymous", matchers, load)
    assert loads == 2
    await cache.invalidate("anonymous")
    await cache.get_or_load("anonymous", matchers, load)
    assert loads == 3
    assert (await cache.get("team-b", matchers)).series_ids is None  # per tenant
    r.close()


async def test_runtime_overrides_cli_with_redis(redis_app: Any, redis_url: str,
                                                capsys: Any) -> None:
    from gob_metrics.keys import OVERRIDES

    overrides = redis_app.app[OVERRIDES]
    assert cli("limits", "set", "anonymous", "ingestion_rate", "123",
                     "--redis-url", redis_url) == 0
    assert "in redis" in capsys.readouterr().out
    await until(lambda: overrides.ingestion_rate("anonymous") == 123.0, 2, "override applied")
    assert cli("limits", "show", "anonymous", "--redis-url", redis_url) == 0
    assert "ingestion_rate: 123  # redis" in capsys.readouterr().out
    assert cli("limits", "unset", "anonymous", "ingestion_rate",
                     "--redis-url", redis_url) == 0
    await until(lambda: overrides.ingestion_rate("anonymous") == 10000.0, 2, "override removed")
    # A bad entry written behind the CLI's back is ignored, the rest applies.
    r = redis_client(redis_url)
    r.hset("gob:overrides", mapping={"x": '{"ingestion_rate": "fast"}',
                                     "y": '{"ingestion_rate": "7"}'})
    r.publish("gob:overrides", "x")
    await until(lambda: overrides.ingestion_rate("y") == 7.0, 2, "valid entry applied")
    assert overrides.ingestion_rate("x") == 10000.0
    r.close()
    assert parse_overrides({}, "x") == {}


# ---------------------------------------------------------------- Redis failures

async def test_redis_killed_and_restarted_mid_ingest_loses_nothing(
        aiohttp_client: Any, make_config: Any, redis_srv: RedisServer, redis_url: str) -> None:
    client = await aiohttp_client(build_app(make_config(**settings(
        redis_url, **{"limits.ingestion_rate": "1000000",
                      "limits.ingestion_burst_size": "1000000"}))))
    app = client.app
    acked: list[int] = []
    failed: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def sender(worker: int) -> None:
        i = 0
        while not stop.is_set():
            ts = NOW - 600_000 + worker * 100_000 + i
            # A new series every fifth request exercises registration during the outage.
            labels = {"__name__": "load", "w": str(worker), "s": str(i // 5)}
            resp = await client.post("/api/v1/write", data=body([(labels, [(ts, float(i))])]),
                                     headers=HEADERS)
            if resp.status == 204:
                acked.append(ts)
            else:
                failed.append((resp.status, await resp.text()))
            i += 1
            await asyncio.sleep(0.005)

    senders = [asyncio.create_task(sender(w)) for w in range(4)]
    await asyncio.sleep(0.5)
    assert app[REDIS].up
    redis_srv.kill()  # everything in it is lost: it has no persistence
    series_at_kill = await count(app[STORAGE], "series")
    await asyncio.sleep(0.7)
    assert not app[REDIS].up
    during = len(acked)
    series_at_restart = await count(app[STORAGE], "series")
    redis_srv.start()
    deadline = time.monotonic() + 5
    while not app[REDIS].up:
        assert time.monotonic() < deadline, "did not reconnect to redis"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*senders)
    assert failed == []
    assert during > 20 and len(acked) > during
    stored = await app[STORAGE].query(
        f"SELECT DISTINCT timestamp FROM {app[STORAGE].database}.samples")
    assert sorted(stored.column("timestamp").to_pylist()) == sorted(acked)
    assert await metric(client, "gob_redis_errors_total") >= 1
    assert await metric(client, "gob_redis_up") == 1
    # The series registered while Redis was away were pushed when it came back.
    keys = app[SERIES_REGISTRY]._keys("anonymous")
    r = redis_client(redis_url)
    outage = series_at_restart - series_at_kill
    assert outage > 0
    await until(lambda: r.scard(keys[0]) >= outage, 5, "backlog pushed to redis")
    r.close()


async def test_starts_without_redis_and_picks_it_up(aiohttp_client: Any, make_config: Any,
                                                    tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "late")
    client = await aiohttp_client(build_app(make_config(**settings(server.url))))
    assert not client.app[REDIS].up
    resp = await client.post("/api/v1/write", data=body([(UP, [(NOW - 1000, 1.0)])]),
                             headers=HEADERS)
    assert resp.status == 204
    assert (await client.app[LOOKUP_CACHE].get("anonymous", [("a", "=", "b")])).epoch == -1
    assert await metric(client, "gob_redis_up") == 0
    server.start()
    try:
        deadline = time.monotonic() + 5
        while not client.app[REDIS].up:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        keys = client.app[SERIES_REGISTRY]._keys("anonymous")
        r = redis_client(server.url)
        await until(lambda: r.scard(keys[0]) == 1, 5, "registration pushed on recovery")
        r.close()
    finally:
        server.stop()


async def test_hung_redis_costs_one_timeout_not_a_failure(
        aiohttp_client: Any, make_config: Any, redis_srv: RedisServer, redis_url: str) -> None:
    """A frozen Redis (SIGSTOP) answers nothing: the first requests wait one redis.timeout,
    then Redis is skipped; every request is answered 204 and stored."""
    client = await aiohttp_client(build_app(make_config(**settings(
        redis_url, **{"redis.timeout": "200ms"}))))
    app = client.app
    redis_srv.freeze()
    try:
        statuses = []
        started = time.monotonic()
        for i in range(10):
            resp = await client.post("/api/v1/write", headers=HEADERS,
                                     data=body([(UP, [(NOW - 10_000 + i, 1.0)])]))
            statuses.append(resp.status)
        elapsed = time.monotonic() - started
        assert statuses == [204] * 10
        assert not app[REDIS].up
        assert elapsed < 3.0, elapsed
    finally:
        redis_srv.resume()
    await until(lambda: app[REDIS].up, 5, "redis back after SIGCONT")
    assert await count(app[STORAGE], "samples") == 10
