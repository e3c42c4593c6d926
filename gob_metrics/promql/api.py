"""``/api/v1/query`` and ``/api/v1/query_range`` (GET and POST form), plus
``/api/v1/format_query``, answered like Prometheus 2.42 (which has no ``parse_query``).

Parameters and their errors follow web/api/v1/api.go: times are RFC 3339 or Unix
seconds, ``step``/``timeout``/``lookback_delta`` float seconds or durations; a bad one is
``bad_data`` (400) naming it. Evaluation errors are ``execution`` (422), a query past its
timeout ``timeout`` (503), a query whose client closed the connection ``canceled`` (499,
stopped at the next await: a running ClickHouse fetch or numpy evaluation step cannot be
interrupted, what follows it is skipped). Every query reads only the requesting tenant's
data.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import promql_parser
from aiohttp import web
from multidict import MultiDictProxy

from gob_metrics.config import QueryConfig
from gob_metrics.errors import BadRequest, QueryCanceled
from gob_metrics.keys import CONFIG, LOOKUP_CACHE, OVERRIDES, STORAGE
from gob_metrics.promql import ast, encode
from gob_metrics.promql.engine import Evaluator, Query, QueryTimeout, Settings
from gob_metrics.promql.values import Vec, Windows
from gob_metrics.read import api as read_api
from gob_metrics.read import select
from gob_metrics.tenancy import request_tenant

_DOCUMENTED = {ast.MATRIX: "range vector", ast.STRING: "string", ast.SCALAR: "scalar",
               ast.VECTOR: "instant vector"}


def duration_ms(params: MultiDictProxy[str], name: str) -> int | None:
    """A duration parameter in ms: float seconds or a Prometheus duration (``5m``)."""
    text = params.get(name, "")
    if text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            return int(promql_parser.parse_duration(text).total_seconds() * 1000)
        except ValueError:
            raise BadRequest(f'invalid parameter "{name}": cannot parse "{text}" to a valid '
                             "duration") from None
    if not math.isfinite(seconds) or abs(seconds) * 1e9 >= 2.0**63:
        raise BadRequest(f'invalid parameter "{name}": cannot parse "{text}" to a valid '
                         "duration. It overflows int64")
    return int(seconds * 1e9) // 1_000_000 if seconds >= 0 else -(int(-seconds * 1e9)
                                                                  // 1_000_000)


def _required_time(params: MultiDictProxy[str], name: str) -> int:
    ms = read_api.time_param(params, name)
    if ms is None:
        text = params.get(name, "")
        raise BadRequest(f'invalid parameter "{name}": cannot parse "{text}" to a valid '
                         "timestamp")
    return ms


def settings(request: web.Request, params: MultiDictProxy[str]) -> Settings:
    app_cfg = request.app[CONFIG]
    cfg: QueryConfig = app_cfg.query
    timeout = cfg.timeout
    requested = duration_ms(params, "timeout")
    if requested is not None and requested > 0:
        timeout = min(timeout, requested / 1000.0) if timeout > 0 else requested / 1000.0
    lookback = duration_ms(params, "lookback_delta")
    if lookback is None or lookback <= 0:
        lookback = int(cfg.lookback_delta * 1000)
    limits = select.Limits.of(request.app[OVERRIDES], request_tenant(request))
    return Settings(lookback_ms=lookback, max_samples=cfg.max_samples,
                    default_step_ms=int(cfg.default_evaluation_interval * 1000),
                    timeout=timeout if timeout > 0 else math.inf, limits=limits)


def _query_text(params: MultiDictProxy[str]) -> ast.Node:
    return ast.parse(params.get("query", ""))


CLIENT_POLL_S = 0.05  # how often a running query checks that its client is still there


async def _client_gone(request: web.Request) -> None:
    """Return once the client has closed the connection."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(CLIENT_POLL_S)


async def _run(request: web.Request, query: Query, st: Settings) -> object:
    ev = Evaluator(query, st)

    async def work() -> object:
        await ev.fetch(request.app[STORAGE], request_tenant(request), request.app[LOOKUP_CACHE])
        return await asyncio.to_thread(ev.eval, query.node, query.steps)

    task = asyncio.ensure_future(work())
    watch = asyncio.ensure_future(_client_gone(request))
    try:
        async with asyncio.timeout(st.timeout if math.isfinite(st.timeout) else None):
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise QueryTimeout(f"query timed out in expression evaluation (query.timeout="
                           f"{st.timeout:g}s or the timeout parameter)") from None
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise QueryCanceled("query canceled: the client closed the connection")
    return task.result()


def _success(data: str) -> web.Response:
    return web.Response(text='{"status":"success","data":' + data + "}",
                        content_type="application/json")


def _windows_json(w: Windows) -> str:
    series = []
    for i, lab in enumerate(w.block.labels):
        lo, hi = int(w.lo[i, 0]), int(w.hi[i, 0])
        if hi > lo:
            series.append((lab, w.block.ts[lo:hi], w.block.values[lo:hi]))
    return encode.matrix_json(series)


async def query_handler(request: web.Request) -> web.Response:
    params = await read_api.form(request)
    t = read_api.time_param(params, "time")
    if t is None:
        t = int(time.time() * 1000)
    st = settings(request, params)
    node = _query_text(params)
    value = await _run(request, Query(node, t, t, 0), st)
    if isinstance(value, np.ndarray):
        return _success(encode.scalar_json(t, float(value[0])))
    if isinstance(value, str):
        return _success(encode.string_json(t, value))
    if isinstance(value, Windows):
        return _success(_windows_json(value))
    assert isinstance(value, Vec)
    return _success(encode.vector_json(value, t))


async def query_range_handler(request: web.Request) -> web.Response:
    params = await read_api.form(request)
    start = _required_time(params, "start")
    end = _required_time(params, "end")
    if end < start:
        raise BadRequest('invalid parameter "end": end timestamp must not be before start '
                         "time")
    step = duration_ms(params, "step")
    if step is None:
        raise BadRequest('invalid parameter "step": cannot parse "" to a valid duration')
    if step <= 0:
        raise BadRequest('invalid parameter "step": zero or negative query resolution step '
                         "widths are not accepted. Try a positive integer")
    max_points = request.app[CONFIG].query.max_points_per_series
    if max_points and (end - start) // step > max_points:
        raise BadRequest(f"exceeded maximum resolution of {max_points:,} points per "
                         "timeseries. Try decreasing the query resolution (?step=XX) "
                         f"(query.max_points_per_series={max_points})")
    st = settings(request, params)
    node = _query_text(params)
    if node.kind not in (ast.VECTOR, ast.SCALAR):
        raise BadRequest(f'invalid expression type "{_DOCUMENTED[node.kind]}" for range '
                         "query, must be Scalar or instant Vector")
    query = Query(node, start, end, step)
    value = await _run(request, query, st)
    steps = query.steps
    if isinstance(value, np.ndarray):
        return _success(encode.matrix_json([((), steps, value)]))
    assert isinstance(value, Vec)
    order = sorted(range(len(value)), key=lambda i: value.labels[i])
    series = []
    for i in order:
        p = value.present[i]
        if p.any():
            series.append((value.labels[i], steps[p], value.values[i][p]))
    return _success(encode.matrix_json(series))


async def format_query_handler(request: web.Request) -> web.Response:
    params = await read_api.form(request)
    ast.parse(params.get("query", ""))  # refuse what 2.42 refuses
    text = str(promql_parser.parse(params.get("query", "")).prettify())
    return web.json_response({"status": "success", "data": text})
