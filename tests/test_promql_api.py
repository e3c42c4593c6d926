"""The query API's parameters, limits, statuses and tenant scoping (PromQL semantics are
in tests/promql/*.test)."""

from __future__ import annotations

from typing import Any

import pytest

from gob_metrics.promql.encode import format_time, format_value
from tests.writes import HEADERS, body

SERIES = [({"__name__": "up", "job": "a"}, [(t * 15_000, 1.0) for t in range(41)]),
          ({"__name__": "up", "job": "b"}, [(t * 15_000, 0.0) for t in range(41)])]


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "1"), (0.1, "0.1"), (-2.5, "-2.5"), (1e20, "100000000000000000000"),
    (1e21, "1e+21"), (1.5e-7, "1.5e-07"), (1e-6, "0.000001"), (123456789.125, "123456789.125"),
    (float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (-0.0, "-0"),
], ids=lambda x: str(x))
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(("ms", "text"), [(0, "0"), (1500, "1.500"), (1005, "1.005"),
                                          (-1500, "-1.500"), (1705286400000, "1705286400")])
def test_format_time(ms: int, text: str) -> None:
    assert format_time(ms) == text


async def _client(aiohttp_client: Any, make_config: Any, write: bool = True,
                  **overrides: Any) -> Any:
    from gob_metrics.app import build_app

    client = await aiohttp_client(build_app(make_config(**{"limits.ingestion_rate": 0,
                                                           **overrides})))
    if write:
        resp = await client.post("/api/v1/write", data=body(SERIES), headers=HEADERS)
        assert resp.status == 204
    return client


@pytest.mark.parametrize(("path", "params", "status", "error_type", "message"), [
    ("/api/v1/query_range", {"query": "up", "end": "10", "step": "1"}, 400, "bad_data",
     'invalid parameter "start"'),
    ("/api/v1/query_range", {"query": "up", "start": "10", "end": "5", "step": "1"}, 400,
     "bad_data", "end timestamp must not be before start time"),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "5"}, 400, "bad_data",
     'invalid parameter "step"'),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "5", "step": "0"}, 400,
     "bad_data", "zero or negative query resolution step"),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "5", "step": "x"}, 400,
     "bad_data", 'cannot parse "x" to a valid duration'),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "20000", "step": "1"}, 400,
     "bad_data", "exceeded maximum resolution of 11,000 points per timeseries"),
    ("/api/v1/query", {"query": "up", "time": "yesterday"}, 400, "bad_data",
     'invalid parameter "time"'),
    ("/api/v1/query", {"query": "up{"}, 400, "bad_data", "parse error"),
    ("/api/v1/query", {"query": ""}, 400, "bad_data", "parse error"),
    ("/api/v1/query", {"query": "holt_winters(up[1m], 2, 0.5)", "time": "300"}, 422,
     "execution", "invalid smoothing factor"),
    ("/api/v1/query", {"query": "up", "time": "300", "lookback_delta": "bad"}, 400,
     "bad_data", 'invalid parameter "lookback_delta"'),
], ids=["no-start", "end-before-start", "no-step", "zero-step", "bad-step", "11000-points",
        "bad-time", "syntax", "empty", "execution", "bad-lookback"])
async def test_errors(aiohttp_client: Any, make_config: Any, path: str,
                      params: dict[str, str], status: int, error_type: str,
                      message: str) -> None:
    client = await _client(aiohttp_client, make_config)
    resp = await client.get(path, params=params)
    answer = await resp.json()
    assert resp.status == status, answer
    assert answer["status"] == "error" and answer["errorType"] == error_type
    assert message in answer["error"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_query_range_shape(aiohttp_client: Any, make_config: Any, method: str) -> None:
    client = await _client(aiohttp_client, make_config)
    params = {"query": "up", "start": "0", "end": "60", "step": "30s"}
    resp = await (client.get("/api/v1/query_range", params=params) if method == "GET"
                  else client.post("/api/v1/query_range", data=params))
    assert await resp.json() == {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": "up", "job": "a"}, "values": [[0, "1"], [30, "1"], [60, "1"]]},
        {"metric": {"__name__": "up", "job": "b"}, "values": [[0, "0"], [30, "0"], [60, "0"]]},
    ]}}


@pytest.mark.parametrize(("query", "expected"), [
    ("1.5", {"resultType": "scalar", "result": [300, "1.5"]}),
    ('"s"', {"resultType": "string", "result": [300, "s"]}),
    ('up{job="a"}', {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "a"}, "value": [300, "1"]}]}),
    ('up{job="a"}[30s]', {"resultType": "matrix", "result": [
        {"metric": {"__name__": "up", "job": "a"},
         "values": [[270, "1"], [285, "1"], [300, "1"]]}]}),
], ids=["scalar", "string", "vector", "matrix"])
async def test_instant_result_types(aiohttp_client: Any, make_config: Any, query: str,
                                    expected: dict[str, Any]) -> None:
    client = await _client(aiohttp_client, make_config)
    resp = await client.get("/api/v1/query", params={"query": query, "time": "300"})
    assert await resp.json() == {"status": "success", "data": expected}


async def test_lookback_delta_parameter(aiohttp_client: Any, make_config: Any) -> None:
    client = await _client(aiohttp_client, make_config)
    params = {"query": 'up{job="a"}', "time": "700"}  # last sample at 600 s
    resp = await client.get("/api/v1/query", params=params)
    assert len((await resp.json())["data"]["result"]) == 1
    resp = await client.get("/api/v1/query", params={**params, "lookback_delta": "1m"})
    assert (await resp.json())["data"]["result"] == []


async def test_max_samples(aiohttp_client: Any, make_config: Any) -> None:
    client = await _client(aiohttp_client, make_config, **{"query.max_samples": 10})
    resp = await client.get("/api/v1/query", params={"query": "up", "time": "300"})
    answer = await resp.json()
    assert resp.status == 422 and answer["errorType"] == "execution"
    assert "query.max_samples=10" in answer["error"]


async def test_max_fetched_series(aiohttp_client: Any, make_config: Any) -> None:
    client = await _client(aiohttp_client, make_config,
                           **{"limits.max_fetched_series_per_query": 1})
    resp = await client.get("/api/v1/query", params={"query": "up", "time": "300"})
    answer = await resp.json()
    assert resp.status == 422 and "max_fetched_series_per_query" in answer["error"]


async def test_tenant_scoped(aiohttp_client: Any, make_config: Any) -> None:
    client = await _client(aiohttp_client, make_config, write=False,
                           **{"tenancy.multitenancy_enabled": True})
    resp = await client.post("/api/v1/write", data=body(SERIES),
                             headers={**HEADERS, "X-Scope-OrgID": "t1"})
    assert resp.status == 204
    for tenant, n in (("t1", 2), ("t2", 0)):
        resp = await client.get("/api/v1/query", params={"query": "up", "time": "300"},
                                headers={"X-Scope-OrgID": tenant})
        assert len((await resp.json())["data"]["result"]) == n, tenant
    resp = await client.get("/api/v1/query", params={"query": "up", "time": "300"})
    assert resp.status == 401


async def test_client_gone_is_canceled(make_config: Any) -> None:
    """A client that closes the connection while its query waits for the engine: the query
    is abandoned and counted as 499 (Prometheus' errorType "canceled"), and the server goes
    on answering. A real aiohttp server as ``gob-metrics serve`` runs it (handlers are not
    cancelled by aiohttp when a client leaves: the query notices by itself)."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from gob_metrics.app import build_app
    from gob_metrics.keys import METRICS, STORAGE
    from tests.services.proc import free_port

    runner = web.AppRunner(build_app(make_config(**{"limits.ingestion_rate": 0})))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/api/v1/write", data=body(SERIES),
                                 headers=HEADERS) as resp:
                assert resp.status == 204
            app = runner.app
            storage = app[STORAGE]
            if not hasattr(storage, "_engine"):
                pytest.skip("holds the embedded engine's lock to keep the query waiting")
            canceled = app[METRICS].requests.labels("/api/v1/query", "499")
            before = canceled._value.get()
            storage._engine.acquire()  # the query's fetch waits for the engine: a long query
            try:
                query = {"query": "up", "time": "300"}
                request = asyncio.ensure_future(http.get(base + "/api/v1/query", params=query))
                await asyncio.sleep(0.3)
                assert not request.done()
                request.cancel()  # the client gives up and closes its connection
                with pytest.raises(asyncio.CancelledError):
                    await request
                for _ in range(100):
                    if canceled._value.get() > before:
                        break
                    await asyncio.sleep(0.05)
                assert canceled._value.get() == before + 1
            finally:
                storage._engine.release()
            async with http.get(base + "/api/v1/query", params=query) as resp:
                assert resp.status == 200
                assert len((await resp.json())["data"]["result"]) == 2
    finally:
        await runner.cleanup()
