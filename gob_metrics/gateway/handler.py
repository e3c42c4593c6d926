"""``POST /api/v1/sql``: read the query, admit it, run it, stream the encoded result.

The request is the SQL text as the body (parameters as ``param_<name>`` in the URL), a form
(``query``, ``param_<name>``), or JSON (``{"query": ..., "params": {...}}``); ``format``
(json, csv, tsv) comes from the URL, the form or JSON, or else the Accept header.

The status line is sent once the first _COMMIT_BYTES of the result are ready (or the
result is complete), so an error before that, which is nearly every limit hit, is a
plain 4xx answer. An error after it cannot change the status any more: JSON then ends
with ``"status": "error"`` and the message, CSV and TSV end by closing the connection
without the final chunk, so no client mistakes a cut result for a whole one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiMapping
from prometheus_client import CollectorRegistry, Counter

from gob_metrics.config import SQL_TENANT_LIMITS, SqlConfig
from gob_metrics.errors import (
    BadRequest,
    GobError,
    PayloadTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
)
from gob_metrics.gateway.encode import FORMATS
from gob_metrics.gateway.execute import prepare, run
from gob_metrics.gateway.limits import Admission, LimitExceeded, SqlLimits
from gob_metrics.keys import CONFIG, METRICS, OVERRIDES, REDIS, STORAGE
from gob_metrics.tenancy import request_tenant
from gob_metrics.tenants.ratelimit import TokenBuckets


class GatewayMetrics:
    """The gateway's self-metrics, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "gob_sql_queries_total",
            "SQL gateway queries by outcome: success, rejected (400/413), limited (422, also "
            "half-way through a streamed result), throttled (429) or failed (5xx).",
            ["outcome"], registry=registry)
        self.result_rows = Counter(
            "gob_sql_result_rows_total",
            "Rows the SQL gateway sent in results, cut-off results included.",
            registry=registry)


ADMISSION = web.AppKey("sql_admission", Admission)
GATEWAY_METRICS = web.AppKey("sql_metrics", GatewayMetrics)

#: Result bytes held back before the status line is sent (see the module doc).
_COMMIT_BYTES = 256 * 1024
_ACCEPT = {"text/csv": "csv", "text/tab-separated-values": "tsv", "application/json": "json",
           "application/*": "json", "*/*": "json"}


def register(app: web.Application) -> None:
    """Add the SQL gateway's route and its per-tenant admission state to ``app`` (after
    the tenancy objects: the query rate's buckets live in Redis when it is configured)."""
    app[ADMISSION] = Admission(TokenBuckets(app[REDIS], "sql_rate", "sql_rate_limit"))
    app[GATEWAY_METRICS] = GatewayMetrics(app[METRICS].registry)
    app.router.add_post("/api/v1/sql", sql_handler)


def sql_limits(app: web.Application, tenant: str) -> SqlLimits:
    """The gateway limits of ``tenant``: the ``sql.*`` settings with the tenant's overrides
    of ``limits.sql_*`` (overrides file, Redis) applied."""
    overrides = app[OVERRIDES]
    limits = overrides.for_tenant(tenant)
    values = {key: getattr(limits, name) for name, key in SQL_TENANT_LIMITS.items()
              if overrides.source_of(tenant, name) != "default"}
    return SqlLimits(**{**dataclasses.asdict(app[CONFIG].sql), **values}, tenant=tenant,
                     overridden=frozenset(values))


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    if isinstance(exc, LimitExceeded):
        return "limited"
    if isinstance(exc, TooManyRequests):
        return "throttled"
    if isinstance(exc, GobError) and 400 <= exc.status < 500:
        return "rejected"
    return "failed"


async def sql_handler(request: web.Request) -> web.StreamResponse:
    """Run one query; count its outcome (errors go on to the error middleware)."""
    metrics = request.app[GATEWAY_METRICS]
    state = _State()
    try:
        response = await _answer(request, state)
    except Exception as exc:
        metrics.queries.labels(_outcome(exc)).inc()
        raise
    finally:
        metrics.result_rows.inc(state.rows)
    metrics.queries.labels(_outcome(state.error)).inc()
    return response


class _State:
    """What became of a query whose answer had begun: rows sent, the error that cut it."""

    def __init__(self) -> None:
        self.rows = 0
        self.error: BaseException | None = None


async def _answer(request: web.Request, state: _State) -> web.StreamResponse:
    tenant = request_tenant(request)
    cfg = sql_limits(request.app, tenant)
    text, params, fmt = await read_request(request, cfg)
    admission = request.app[ADMISSION]
    await admission.take(tenant, cfg)
    config = request.app[CONFIG]
    storage = request.app[STORAGE]
    query = prepare(text, params, tenant, cfg, storage.database,
                    cluster=bool(config.storage.clickhouse.cluster))
    with admission.running(tenant, cfg):
        async with run(storage, query, fmt, cfg) as out:
            held: list[bytes] = []
            size = 0
            chunks = out.chunks()
            async for chunk in chunks:  # an error here is still a plain 4xx answer
                held.append(chunk)
                size += len(chunk)
                if size >= _COMMIT_BYTES:
                    break
            else:
                held.append(out.end())
                state.rows = out.encoder.rows
                return web.Response(body=b"".join(held), headers=_headers(out.content_type))
            response = web.StreamResponse(headers=_headers(out.content_type))
            await response.prepare(request)
            try:
                await response.write(b"".join(held))
                try:
                    async for chunk in chunks:
                        await response.write(chunk)
                except GobError as exc:
                    state.error = exc
                    if fmt != "json":
                        _abort(request)
                        return response
                    await response.write(out.end(exc))
                else:
                    await response.write(out.end())
                await response.write_eof()
            except ConnectionResetError as exc:  # the client went away; the query stops
                state.error = exc
            finally:
                state.rows = out.encoder.rows
            return response


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Cache-Control": "no-store"}


def _abort(request: web.Request) -> None:
    """Close the connection mid-body: the client sees an incomplete transfer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def read_request(request: web.Request,
                       cfg: SqlConfig) -> tuple[str, dict[str, Any], str]:
    """(query text, parameters, format) from the URL and the body."""
    limit = 2 * cfg.max_query_bytes  # the query plus its parameters and their encoding
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds "
                              f"2 x sql.max_query_bytes={cfg.max_query_bytes}")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds 2 x sql.max_query_bytes="
                              f"{cfg.max_query_bytes}")
    fields: dict[str, Any] = {}
    params = _url_params(request.query)
    fmt = request.query.get("format")
    mime = request.content_type
    if mime == "application/json":
        body = _json_body(raw)
        fields = {"query": body.get("query"), "format": body.get("format")}
        body_params = body.get("params", {})
        if not isinstance(body_params, dict):
            raise BadRequest('"params" must be a JSON object of name: value')
        params.update(body_params)
    elif mime == "application/x-www-form-urlencoded":
        form = _decode(raw, "form")
        pairs = parse_qsl(form, keep_blank_values=True, max_num_fields=200)
        fields = {k: v for k, v in pairs if k in ("query", "format")}
        params.update({k[len("param_"):]: v for k, v in pairs if k.startswith("param_")})
    elif mime.startswith("multipart/"):
        raise UnsupportedMediaType("multipart bodies are not supported: send the SQL as the "
                                   "body, a urlencoded form or JSON")
    else:
        fields = {"query": _decode(raw, "query")}
    text = fields.get("query")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("no query: send the SQL as the body, or a form or JSON field "
                         '"query"')
    fmt = fields.get("format") or fmt
    return text, params, negotiate(fmt, request.headers.get("Accept", ""))


def _url_params(query: MultiMapping[str]) -> dict[str, Any]:
    return {k[len("param_"):]: v for k, v in query.items() if k.startswith("param_")}


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the {what} is not valid UTF-8 (byte {exc.start})") from exc


def _json_body(raw: bytes) -> Mapping[str, Any]:
    try:
        body = json.loads(_decode(raw, "JSON body"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest('the JSON body must be an object: {"query": "...", "params": {...}}')
    return body


def negotiate(fmt: Any, accept: str) -> str:
    """The output format: an explicit ``format`` wins, else the first known Accept type."""
    if fmt:
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
            raise BadRequest(f"unknown format {fmt!r}: json, csv or tsv")
        return fmt.lower()
    for part in accept.split(","):
        found = _ACCEPT.get(part.split(";", 1)[0].strip().lower())
        if found:
            return found
    return "json"
