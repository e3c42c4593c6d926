"""From query text to encoded bytes: validate, confine to the tenant, run with limits,
encode. Shared by the HTTP handler and the ``gob-metrics sql`` command.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot.errors import SqlglotError

from gob_metrics.config import SqlConfig
from gob_metrics.errors import BadRequest
from gob_metrics.gateway import limits as limits_mod
from gob_metrics.gateway import verify
from gob_metrics.gateway.encode import Encoder
from gob_metrics.gateway.relations import TENANT_PARAM, Scoped, scope_to_tenant
from gob_metrics.gateway.validate import (
    RESERVED_PREFIX,
    Bounds,
    GatewayClickHouse,
    QueryRejected,
    check,
    parse,
)
from gob_metrics.storage.base import Storage, StorageError

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class PreparedQuery:
    """A query ready to run: the rewritten SQL, its bound parameters and settings."""

    sql: str
    params: dict[str, Any]
    settings: dict[str, Any]
    #: what the rewrite inserted, for the check of ClickHouse's own parse (verify.py).
    scoped: Scoped


def bounds_of(cfg: SqlConfig) -> Bounds:
    return Bounds(max_query_bytes=cfg.max_query_bytes, max_regex_length=cfg.max_regex_length,
                  max_generated_elements=cfg.max_generated_elements)


def check_params(params: Mapping[str, Any], bounds: Bounds) -> dict[str, Any]:
    """Check the client's parameters: names, count, value types and sizes."""
    if len(params) > bounds.max_parameters:
        raise BadRequest(f"{len(params)} query parameters, at most {bounds.max_parameters}")
    out: dict[str, Any] = {}
    total = 0
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise BadRequest(f"invalid parameter name {name!r}: expected an identifier of at "
                             "most 64 characters")
        if name.startswith(RESERVED_PREFIX):
            raise BadRequest(f"parameter names starting with {RESERVED_PREFIX!r} are reserved")
        total += _param_size(name, value)
        out[name] = value
    if total > bounds.max_query_bytes:
        raise BadRequest(f"query parameters of {total} bytes exceed sql.max_query_bytes="
                         f"{bounds.max_query_bytes}")
    return out


def _param_size(name: str, value: Any, depth: int = 0) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool | int | float):
        return 8
    if isinstance(value, list) and depth < 4:
        return sum(_param_size(name, v, depth + 1) for v in value) + 2
    raise BadRequest(f"parameter {name}: values are strings, numbers, booleans or arrays "
                     "of those")


def prepare(text: str, params: Mapping[str, Any], tenant: str, cfg: SqlConfig,
            database: str, cluster: bool = False) -> PreparedQuery:
    """Validate ``text`` and rewrite it to read only ``tenant``'s rows.

    Raises QueryRejected (400) or PayloadTooLarge (413) for a query the gateway will not
    run. The SQL that runs is generated from the checked tree, comments dropped, never the
    client's text; parsed again, it must generate itself, so sqlglot reads it as the tree
    that was checked (ClickHouse's reading is checked by verify.py before it runs).
    """
    bounds = bounds_of(cfg)
    user_params = check_params(params, bounds)
    tree = parse(text, bounds)
    check(tree, text, bounds, user_params)
    scoped = scope_to_tenant(tree, database, text)
    sql = tree.sql(dialect=GatewayClickHouse, comments=False)
    try:  # the text must read back as itself (generation normalises, once)
        again = [t.sql(dialect=GatewayClickHouse, comments=False) if t else ""
                 for t in sqlglot.parse(sql, dialect=GatewayClickHouse)]
    except (SqlglotError, RecursionError):
        again = []
    if again != [sql]:
        raise QueryRejected("the query cannot be rewritten unambiguously")
    return PreparedQuery(sql, {**user_params, TENANT_PARAM: tenant},
                         limits_mod.clickhouse_settings(cfg, cluster=cluster), scoped)


class Output:
    """The encoded result of a running query: ``chunks()`` then ``end()``."""

    def __init__(self, encoder: Encoder, batches: AsyncIterator[pa.RecordBatch],
                 cfg: SqlConfig) -> None:
        self.encoder = encoder
        self._batches = batches
        self._cfg = cfg
        self._bytes = 0

    @property
    def content_type(self) -> str:
        return self.encoder.content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        """The header, then one chunk per batch; raises the client-facing error of a limit
        hit half-way."""
        yield self.encoder.header()
        try:
            async for batch in self._batches:
                # ClickHouse enforces these too; counting here as well keeps them exact
                # whatever a transport or a UNION does with the settings.
                self._bytes += batch.nbytes
                max_rows, max_bytes = self._cfg.max_result_rows, self._cfg.max_result_bytes
                if max_rows and self.encoder.rows + batch.num_rows > max_rows:
                    shown = limits_mod.setting(self._cfg, "max_result_rows", str(max_rows))
                    raise limits_mod.LimitExceeded(
                        f"result exceeded {shown} rows",
                        limits_mod.limit_key(self._cfg, "max_result_rows"))
                if max_bytes and self._bytes > max_bytes:
                    shown = limits_mod.setting(self._cfg, "max_result_bytes", str(max_bytes))
                    raise limits_mod.LimitExceeded(
                        f"result exceeded {shown}",
                        limits_mod.limit_key(self._cfg, "max_result_bytes"))
                chunk = self.encoder.batch(batch)
                if chunk:
                    yield chunk
        except StorageError as exc:
            raise limits_mod.translate(exc, self._cfg) from exc

    def end(self, error: BaseException | None = None) -> bytes:
        error_type = getattr(error, "error_type", "execution") if error else ""
        return self.encoder.end(error, error_type)


@contextlib.asynccontextmanager
async def run(storage: Storage, query: PreparedQuery, fmt: str,
              cfg: SqlConfig) -> AsyncIterator[Output]:
    """Start ``query``; errors before its first row are raised here, already translated.

    ClickHouse's parse of the SQL is checked first (verify.py), then the query streams.
    """
    try:
        plan = await storage.query(verify.explain_sql(query.sql), query.params)
    except StorageError as exc:
        raise limits_mod.translate(exc, cfg) from exc
    dump = "\n".join(str(v) for v in plan.column(0).to_pylist()) if plan.num_columns else ""
    verify.check_ast(dump, query.scoped.stored_tables, frozenset(query.scoped.ctes))
    stream = storage.query_stream(query.sql, query.params, query.settings)
    try:
        result = await stream.__aenter__()
    except StorageError as exc:
        raise limits_mod.translate(exc, cfg) from exc
    try:
        yield Output(Encoder(fmt, result.columns), result.batches, cfg)
    finally:
        await stream.__aexit__(None, None, None)
