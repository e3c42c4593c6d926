"""Limits of the SQL gateway: the ClickHouse settings every query runs with, the per-tenant
rate limit and concurrency, and the translation of ClickHouse limit errors into 422s that
name the setting to change.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gob_metrics.config import SqlConfig
from gob_metrics.errors import BadRequest, GobError, TooManyRequests
from gob_metrics.storage.base import StorageError

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
        #: the configuration key of the limit, e.g. ``sql.max_execution_time``.
        self.limit = limit


def clickhouse_settings(limits: SqlConfig, *, cluster: bool = False) -> dict[str, Any]:
    """Settings sent with every gateway query.

    readonly=1 forbids writes and any further change of settings; the *_overflow_mode
    settings make every limit an error, never a silently truncated answer.
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
        return LimitExceeded(f"query exceeded sql.max_execution_time="
                             f"{limits.max_execution_time:g}s ({text})",
                             "sql.max_execution_time")
    if code == _MEMORY_LIMIT_EXCEEDED and "(total)" not in text:
        return LimitExceeded(f"query exceeded sql.max_memory_usage={limits.max_memory_usage} "
                             f"bytes ({text})", "sql.max_memory_usage")
    if code in (_TOO_MANY_ROWS, _TOO_MANY_BYTES):
        return LimitExceeded(f"query read more than sql.max_rows_to_read="
                             f"{limits.max_rows_to_read} rows ({text})", "sql.max_rows_to_read")
    if code == _TOO_MANY_ROWS_OR_BYTES:
        if "max bytes" in text:
            return LimitExceeded(f"result exceeded sql.max_result_bytes="
                                 f"{limits.max_result_bytes} ({text})", "sql.max_result_bytes")
        return LimitExceeded(f"result exceeded sql.max_result_rows={limits.max_result_rows} "
                             f"rows ({text})", "sql.max_result_rows")
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


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class Admission:
    """Per-tenant query rate (token bucket) and concurrency, in this process.

    A Redis-backed version shared by replicas can replace it behind the same two calls.
    """

    rate: float
    burst: int
    max_concurrent: int
    clock: Any = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)

    def take(self, tenant: str) -> None:
        """Spend one query token of ``tenant``; raise TooManyRequests when there is none."""
        if self.rate <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise TooManyRequests(
                f"tenant over its query rate: sql.query_rate={self.rate:g}/s "
                f"(burst sql.query_burst_size={self.burst}); retry in {math.ceil(wait)}s",
                retry_after=wait)
        bucket.tokens -= 1.0

    @contextlib.contextmanager
    def running(self, tenant: str) -> Iterator[None]:
        """Hold one of ``tenant``'s concurrent-query slots, or raise TooManyRequests."""
        now_running = self._running.get(tenant, 0)
        if self.max_concurrent > 0 and now_running >= self.max_concurrent:
            raise TooManyRequests(
                f"tenant already runs {now_running} SQL queries: "
                f"sql.max_concurrent_queries={self.max_concurrent}", retry_after=1.0)
        self._running[tenant] = now_running + 1
        try:
            yield
        finally:
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
            else:
                del self._running[tenant]
