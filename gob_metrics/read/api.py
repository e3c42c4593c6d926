"""Prometheus HTTP API metadata endpoints (GET and POST form), in Prometheus' JSON shape:
``/api/v1/series``, ``/api/v1/labels``, ``/api/v1/label/{name}/values``,
``/api/v1/metadata`` and ``/api/v1/status/{buildinfo,flags,runtimeinfo}``.

Parameters follow Prometheus 2.42 (``web/api/v1/api.go``): ``match[]`` are series
selectors, ``start``/``end`` RFC 3339 or Unix seconds, and bad ones answer 400 with
errorType ``bad_data`` and ``invalid parameter "start": ...``. ``limit`` on
series/labels/values follows later Prometheus versions: 0 means no limit, and a
truncated answer carries the warning "results truncated due to limit".
"""

from __future__ import annotations

import calendar
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata as pkg_metadata
from typing import Any

import promql_parser
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from gob_metrics.config import describe
from gob_metrics.errors import BadRequest
from gob_metrics.keys import CONFIG, LOOKUP_CACHE, OVERRIDES, STORAGE
from gob_metrics.read import labels as lbl
from gob_metrics.read.matchers import METRIC_NAME, Matcher, MatchType, new_matcher
from gob_metrics.read.select import Limits, series_ids
from gob_metrics.tenancy import request_tenant

#: the Prometheus API version this server answers like; Grafana reads it from buildinfo.
PROMETHEUS_API_VERSION = "2.42.0"
TRUNCATED_WARNING = "results truncated due to limit"
START_TIME = web.AppKey("read_api_start_time", float)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")
# Prometheus' own "no bound" times (MinTime/MaxTime formatted), sent back by some clients.
_MIN_TIME_TEXT = "-292273086-05-16T16:47:06Z"
_MAX_TIME_TEXT = "292277025-08-18T07:12:54.999999999Z"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OPS = {"MatchOp.Equal": MatchType.EQ, "MatchOp.NotEqual": MatchType.NEQ,
        "MatchOp.Re": MatchType.RE, "MatchOp.NotRe": MatchType.NRE}


# ------------------------------------------------------------------------ parameters


async def form(request: web.Request) -> MultiDictProxy[str]:
    """Query and form parameters together, form first (Go's Request.ParseForm order)."""
    params: MultiDict[str] = MultiDict()
    if request.method == "POST":
        params.extend(await request.post())
    params.extend(request.query)
    return MultiDictProxy(params)


def parse_time(text: str) -> int | None:
    """Milliseconds since the epoch from Unix seconds or RFC 3339; None for Prometheus'
    min/max time (no bound). Raises ValueError like Prometheus' parseTime."""
    if _FLOAT.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            frac, whole = math.modf(value)
            ms = int(whole) * 1000 + round(frac * 1000)
            if _INT64_MIN <= ms <= _INT64_MAX:
                return ms
    m = _RFC3339.fullmatch(text)
    if m:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        try:
            datetime(year, month, day, hour, minute, second)
        except ValueError:
            pass
        else:
            seconds = calendar.timegm((year, month, day, hour, minute, second))
            zone = m.group(8)
            if zone != "Z":
                sign = 1 if zone[0] == "+" else -1
                seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
            return seconds * 1000 + int((m.group(7) or "0").ljust(3, "0")[:3])
    if text in (_MIN_TIME_TEXT, _MAX_TIME_TEXT):
        return None
    raise ValueError(f"cannot parse {text!r} to a valid timestamp")


def time_param(params: MultiDictProxy[str], name: str) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise BadRequest(f'invalid parameter "{name}": {exc}') from None


def time_range(params: MultiDictProxy[str]) -> tuple[int | None, int | None]:
    start, end = time_param(params, "start"), time_param(params, "end")
    if start is not None and end is not None and end < start:
        raise BadRequest('invalid parameter "end": end timestamp must not be before start time')
    return start, end


def limit_param(params: MultiDictProxy[str]) -> int:
    """``limit``: a non-negative integer, 0 (or absent) for no limit."""
    text = params.get("limit", "")
    if text == "":
        return 0
    try:
        limit = int(text)
    except ValueError:
        raise BadRequest(f'invalid parameter "limit": cannot parse {text!r} '
                         "to a valid integer") from None
    if limit < 0:
        raise BadRequest('invalid parameter "limit": limit must not be negative')
    return limit


def parse_selector(text: str) -> list[Matcher]:
    """One ``match[]`` value: a series selector such as ``up{job=~"a|b"}``."""
    try:
        expr = promql_parser.parse(text)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f'invalid parameter "match[]": {exc}') from None
    if not isinstance(expr, promql_parser.VectorSelector):
        raise BadRequest(f'invalid parameter "match[]": {text!r} is not a series selector')
    if expr.offset is not None or expr.at is not None or expr.matchers.or_matchers:
        raise BadRequest(f'invalid parameter "match[]": {text!r} is not a plain series '
                         "selector (offset, @ and `or` are not allowed)")
    matchers = []
    if expr.name is not None:
        matchers.append(new_matcher(MatchType.EQ, METRIC_NAME, expr.name))
    for m in expr.matchers.matchers:
        try:
            matchers.append(new_matcher(_OPS[str(m.op)], m.name, m.value))
        except BadRequest as exc:
            raise BadRequest(f'invalid parameter "match[]": {exc}') from None
    if all(m.matches_empty() for m in matchers):
        raise BadRequest('invalid parameter "match[]": match[] must contain at least one '
                         "non-empty matcher")
    return matchers


def match_params(params: MultiDictProxy[str]) -> list[list[Matcher]]:
    return [parse_selector(text) for text in params.getall("match[]", [])]


async def _series_query(request: web.Request, params: MultiDictProxy[str],
                        selectors: Sequence[Sequence[Matcher]]) -> lbl.SeriesQuery:
    """The request's series query, each selector's ids from the lookup cache if it has them."""
    start, end = time_range(params)
    tenant = request_tenant(request)
    storage, lookups = request.app[STORAGE], request.app[LOOKUP_CACHE]
    ids = [await series_ids(storage, tenant, ms, lookups) for ms in selectors]
    return lbl.SeriesQuery(tenant, selectors, start, end, ids)


def success(data: Any, warnings: Sequence[str] = ()) -> web.Response:
    body: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = list(warnings)
    return web.json_response(body)


def _truncate(items: list[Any], limit: int) -> tuple[list[Any], list[str]]:
    if limit and len(items) > limit:
        return items[:limit], [TRUNCATED_WARNING]
    return items, []


# ------------------------------------------------------------------------- handlers


async def series_handler(request: web.Request) -> web.Response:
    params = await form(request)
    if not params.getall("match[]", []):
        raise BadRequest("no match[] parameter provided")
    limit = limit_param(params)
    q = await _series_query(request, params, match_params(params))
    limits = Limits.of(request.app[OVERRIDES], q.tenant)
    if limit and (not limits.max_series or limit <= limits.max_series):
        found, warnings = _truncate(
            await lbl.find_series(request.app[STORAGE], q, limit + 1), limit)
        return success(found, warnings)
    found = await lbl.find_series(request.app[STORAGE], q, limits.series_cap)
    limits.check_series(len(found))
    return success(found)


async def labels_handler(request: web.Request) -> web.Response:
    params = await form(request)
    limit = limit_param(params)
    q = await _series_query(request, params, match_params(params))
    names = await lbl.label_names(request.app[STORAGE], q, limit + 1 if limit else 2**63 - 1)
    return success(*_truncate(names, limit))


async def label_values_handler(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _LABEL_NAME.fullmatch(name):
        raise BadRequest(f"invalid label name: {name!r}")
    params = await form(request)
    limit = limit_param(params)
    q = await _series_query(request, params, match_params(params))
    values = await lbl.label_values(request.app[STORAGE], q, name,
                                    limit + 1 if limit else 2**63 - 1)
    return success(*_truncate(values, limit))


def _int_param(params: MultiDictProxy[str], name: str) -> int:
    """Prometheus' metadata limits: any integer, negative meaning no limit."""
    text = params.get(name, "")
    if text == "":
        return -1
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None


async def metadata_handler(request: web.Request) -> web.Response:
    params = await form(request)
    limit = _int_param(params, "limit")
    per_metric = _int_param(params, "limit_per_metric")
    rows = await lbl.metric_metadata(request.app[STORAGE], request_tenant(request),
                                     params.get("metric") or None)
    out: dict[str, list[dict[str, str]]] = {}
    for metric, mtype, help_, unit in rows:
        entries = out.get(metric)
        if entries is None:
            if 0 <= limit <= len(out):
                continue
            entries = out[metric] = []
        if per_metric > 0 and len(entries) >= per_metric:
            continue
        entries.append({"type": mtype, "help": help_, "unit": unit})
    return success(out)


def _version() -> str:
    try:
        return pkg_metadata.version("gob-metrics")
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


async def buildinfo_handler(request: web.Request) -> web.Response:
    """Prometheus' fields (``version`` is the API level answered, as VictoriaMetrics does,
    so Grafana enables the matching features) plus the application and its version."""
    return success({
        "version": PROMETHEUS_API_VERSION,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "gob-metrics",
        "applicationVersion": _version(),
        "pythonVersion": sys.version.split()[0],
    })


_SECRET_URL = re.compile(r"(://[^:/@]*:)[^@/]*@")


def redact(text: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL."""
    return _SECRET_URL.sub(r"\1<secret>@", text)


async def flags_handler(request: web.Request) -> web.Response:
    """The effective configuration as flat ``key: value`` strings, passwords redacted."""
    flags = {}
    for key, _type, value in describe(request.app[CONFIG]):
        flags[key] = redact("" if value is None else str(value))
    return success(flags)


async def runtimeinfo_handler(request: web.Request) -> web.Response:
    started = request.app[START_TIME]
    return success({
        "startTime": datetime.fromtimestamp(started, UTC).isoformat().replace("+00:00", "Z"),
        "CWD": os.getcwd(),
        "reloadConfigSuccess": True,
        "lastConfigTime": datetime.fromtimestamp(started, UTC).isoformat()
        .replace("+00:00", "Z"),
        "corruptionCount": 0,
        "goroutineCount": 0,
        "GOMAXPROCS": os.cpu_count() or 1,
        "GOGC": "",
        "GODEBUG": "",
        "storageRetention": "",
        "uptimeSeconds": round(time.time() - started, 3),
    })
