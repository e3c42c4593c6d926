"""Limits of the SQL gateway: the ClickHouse settings every query runs with, the per-tenant
rate limit and concurrency, and the translation of ClickHouse limit errors into 422s that
name the setting to change.

Each query runs with its tenant's limits (:class:`SqlLimits`, built by
``handler.sql_limits``): the ``sql.*`` settings with the tenant's overrides of the
``limits.sql_*`` limits applied. An error names the per-tenant limit when an override set
it (``sql_max_execution_time=5s for tenant 'team-a'``), else the setting (``sql.max_...``).

Status codes, in one place:

* 400 ``bad_data``: the query is rejected before it runs (validate.py) or ClickHouse
  rejects it (unknown column, wrong types, ...);
* 413: the request body is larger than ``sql.max_query_bytes`` allows;
* 422 ``execution``: the query hit a limit while it ran (time, memory, rows read, result
  size): the error names the ``sql.*`` key;
* 429 ``unavailable`` with Retry-After: the tenant is over ``sql.query_rate`` or already
  runs ``sql.max_concurrent_queries`` queries.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gob_metrics.config import SqlConfig
from gob_metrics.errors import BadRequest, GobError, TooManyRequests
from gob_metrics.storage.base import StorageError
from gob_metrics.tenants.limits import format_duration
from gob_metrics.tenants.ratelimit import TokenBuckets

# ClickHouse error codes of its query limits.
_TOO_MANY_ROWS = 158  # max_rows_to_read
_TIMEOUT_EXCEEDED = 159  # max_execution_time
_TOO_SLOW = 160  # estimated execution time over max_execution_time
_MEMORY_LIMIT_EXCEEDED = 241
_TOO_MANY_BYTES = 307  # max_bytes_to_read
_TOO_MANY_ROWS_OR_BYTES = 396  # max_result_rows / max_result_bytes
_TOO_MANY_SIMULTANEOUS_QUERIES = 202
_READONLY = 164
_QUERY_WAS_CANCELLED = 394
_TOO_DEEP_AST, _TOO_BIG_AST = 167, 168
_CODE_NAME = re.compile(r"\(([A-Z_]+)\)\s*$")
_NOISE = re.compile(r"^(query failed: )?(Streaming query failed: )?(Code: \d+\. )?"
                    r"(DB::Exception: )?")


class LimitExceeded(GobError):
    """The query hit a limit while it ran: 422, never retried as is.

    Prometheus answers an expression it cannot execute with 422 (errorType "execution");
    a query over a limit is the same kind of answer: the client must change the query or
    the operator the named limit.
    """

    status = 422
    error_type = "execution"

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        #: the key of the limit: ``sql.max_execution_time``, or the per-tenant
        #: ``sql_max_execution_time`` when the tenant's override set it.
        self.limit = limit


@dataclass
class SqlLimits(SqlConfig):
    """The ``sql.*`` settings one tenant's queries run with: its overrides applied."""

    tenant: str = ""
    #: the ``sql.*`` keys (without ``sql.``) whose value is a per-tenant override.
    overridden: frozenset[str] = frozenset()


def limit_key(limits: SqlConfig, key: str) -> str:
    """The name of limit ``key`` (a ``sql.*`` key without ``sql.``) for ``limits``: the
    per-tenant ``sql_<key>`` if the tenant's override set it, else ``sql.<key>``."""
    if isinstance(limits, SqlLimits) and key in limits.overridden:
        return f"sql_{key}"
    return f"sql.{key}"


def setting(limits: SqlConfig, key: str, shown: str) -> str:
    """``sql.max_result_rows=1000`` or ``sql_max_result_rows=10 for tenant 'a'``."""
    name = limit_key(limits, key)
    if name.startswith("sql_") and isinstance(limits, SqlLimits):
        return f"{name}={shown} for tenant {limits.tenant!r}"
    return f"{name}={shown}"


def clickhouse_settings(limits: SqlConfig, *, cluster: bool = False) -> dict[str, Any]:
    """Settings sent with every gateway query.

    readonly=1 forbids writes and any further change of settings; the *_overflow_mode
    settings make every limit an error, never a silently truncated answer. A limit of 0
    (a tenant's override disabling it) is ClickHouse's own "unlimited".
    """
    settings: dict[str, Any] = {
        "max_execution_time": limits.max_execution_time,
        "timeout_overflow_mode": "throw",
        "max_memory_usage": limits.max_memory_usage,
        "max_rows_to_read": limits.max_rows_to_read,
        "read_overflow_mode": "throw",
        "max_result_rows": limits.max_result_rows,
        "max_result_bytes": limits.max_result_bytes,
        "result_overflow_mode": "throw",
    }
    if cluster:
        # The relations are Distributed tables; a join of two of them must neither be
        # refused (the default, "deny") nor see one shard's right side only ("local").
        settings["distributed_product_mode"] = "global"
    settings["readonly"] = 1
    return settings


def _strip(message: str) -> str:
    text = _NOISE.sub("", message.strip())
    text = text.split(" In scope ", 1)[0]  # ClickHouse quotes the rewritten query here
    return text.split("Stack trace", 1)[0].strip().rstrip(".")


def translate(exc: StorageError, limits: SqlConfig) -> GobError:
    """Map a storage error of a gateway query to the error the client gets."""
    code = exc.code
    m = _CODE_NAME.search(str(exc).split("Stack trace", 1)[0].strip())
    code_name = f" {m.group(1)}" if m else ""
    text = _CODE_NAME.sub("", _strip(str(exc))).strip().rstrip(".")
    if code in (_TIMEOUT_EXCEEDED, _TOO_SLOW):
        shown = format_duration(limits.max_execution_time)
        return LimitExceeded(f"query exceeded {setting(limits, 'max_execution_time', shown)} "
                             f"({text})", limit_key(limits, "max_execution_time"))
    if code == _MEMORY_LIMIT_EXCEEDED and "(total)" not in text:
        shown = str(limits.max_memory_usage)
        return LimitExceeded(f"query exceeded {setting(limits, 'max_memory_usage', shown)} "
                             f"bytes ({text})", limit_key(limits, "max_memory_usage"))
    if code in (_TOO_MANY_ROWS, _TOO_MANY_BYTES):
        shown = str(limits.max_rows_to_read)
        return LimitExceeded(f"query read more than {setting(limits, 'max_rows_to_read', shown)} "
                             f"rows ({text})", limit_key(limits, "max_rows_to_read"))
    if code == _TOO_MANY_ROWS_OR_BYTES:
        if "max bytes" in text:
            shown = str(limits.max_result_bytes)
            return LimitExceeded(f"result exceeded {setting(limits, 'max_result_bytes', shown)} "
                                 f"({text})", limit_key(limits, "max_result_bytes"))
        shown = str(limits.max_result_rows)
        return LimitExceeded(f"result exceeded {setting(limits, 'max_result_rows', shown)} "
                             f"rows ({text})", limit_key(limits, "max_result_rows"))
    if code == _TOO_MANY_SIMULTANEOUS_QUERIES:
        return TooManyRequests(f"ClickHouse is running too many queries ({text})", 1.0)
    if code == _READONLY:
        return BadRequest(f"query rejected: it tried to write or change settings ({text})")
    if code in (_TOO_DEEP_AST, _TOO_BIG_AST):
        return BadRequest(f"query rejected: {text}")
    if exc.retryable or code is None or code == _QUERY_WAS_CANCELLED:
        return exc  # storage is unavailable: 503, retry later
    return BadRequest(f"ClickHouse rejected the query: code {code}{code_name}: {text}")


# ------------------------------------------------------------- admission per tenant


class Admission:
    """Per-tenant query rate and concurrency.

    The rate is a token bucket per tenant (``sql.query_rate`` / ``sql_query_rate``): in
    Redis when it is configured, so N replicas share one rate per tenant, else (and while
    Redis is down) per process. Concurrency is per process: a slot is held while the query
    runs here, and a replica that dies cannot leave one behind.
    """

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets
        self._running: dict[str, int] = {}

    async def take(self, tenant: str, limits: SqlConfig) -> None:
        """Spend one query token of ``tenant``; raise TooManyRequests when there is none."""
        rate, burst = limits.query_rate, limits.query_burst_size
        if rate <= 0 or burst <= 0:  # 0 disables the limit
            return
        wait = await self.buckets.take(tenant, 1, rate, burst)
        if wait == 0:
            return
        raise TooManyRequests(
            f"tenant {tenant!r} over its query rate: "
            f"{setting(limits, 'query_rate', f'{rate:g}/s')} (burst "
            f"{setting(limits, 'query_burst_size', str(burst))}); retry in {math.ceil(wait)}s",
            retry_after=wait)

    @contextlib.contextmanager
    def running(self, tenant: str, limits: SqlConfig) -> Iterator[None]:
        """Hold one of ``tenant``'s concurrent-query slots, or raise TooManyRequests."""
        now_running = self._running.get(tenant, 0)
        limit = limits.max_concurrent_queries
        if limit > 0 and now_running >= limit:
            raise TooManyRequests(
                f"tenant {tenant!r} already runs {now_running} SQL queries: "
                f"{setting(limits, 'max_concurrent_queries', str(limit))}", retry_after=1.0)
        self._running[tenant] = now_running + 1
        try:
            yield
        finally:
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
            else:
                del self._running[tenant]
