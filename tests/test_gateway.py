"""SQL gateway: hostile queries are refused or limited and never see another tenant's rows;
legitimate analytics return exactly what the same SQL returns on the tenant's own rows.

One app (embedded engine) serves the whole module. Two tenants' data are loaded straight
into the tables: ``anonymous`` (the tenant every request acts for) and ``other``, whose
rows carry markers (label values, a metric name, help text, values and timestamps) that
must never appear in any answer. The tenant's own rows, deduplicated, are also copied
into plain tables of a ``<db>_direct`` database, where the legitimate queries run
unmodified as the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gob_metrics.app import build_app
from gob_metrics.config import SQL_TENANT_LIMITS, RedisConfig, SqlConfig, load_config
from gob_metrics.errors import TooManyRequests
from gob_metrics.gateway.encode import Encoder
from gob_metrics.gateway.handler import ADMISSION, negotiate, sql_limits
from gob_metrics.gateway.limits import Admission, clickhouse_settings
from gob_metrics.gateway.validate import Bounds, QueryRejected, check, parse
from gob_metrics.keys import CONFIG, METRICS, OVERRIDES, STORAGE
from gob_metrics.tenants.limits import parse_overrides
from gob_metrics.tenants.ratelimit import TokenBuckets
from gob_metrics.tenants.redis_layer import RedisLayer
from gob_metrics.write import _values
from tests.conftest import CLICKHOUSE_URL

# Every async test shares the module's event loop, where the app runs.
ASYNC = pytest.mark.asyncio(loop_scope="module")

TENANT, OTHER = "anonymous", "other"
T0 = 1_700_000_000_000  # ms
MARKERS = ("SECRET", "9876543", "4242424")
PWNED = Path("/tmp/gob-gateway-pwned.csv")

LIMITS = {
    "sql.max_execution_time": "1s",
    "sql.max_memory_usage": "64MiB",
    "sql.max_rows_to_read": 500_000,
    "sql.max_result_rows": 10_000,
    "sql.max_result_bytes": "32MiB",
    "sql.max_generated_elements": 1_000_000,
    "sql.max_regex_length": 256,
    "sql.max_query_bytes": "16KiB",
    "sql.query_rate": 0,
    "sql.max_concurrent_queries": 4,
}


def sid(n: int) -> bytes:
    return n.to_bytes(16, "little")


# Tenant rows: (series id, metric, labels), samples per series every 60 s for an hour.
A_SERIES = [
    (1, "up", {"job": "node", "instance": "a:9100"}),
    (2, "up", {"job": "node", "instance": "b:9100"}),
    (3, "up", {"job": "api", "instance": "c:8080"}),
    (4, "http_requests_total", {"job": "api", "instance": "c:8080", "code": "200"}),
    (5, "http_requests_total", {"job": "api", "instance": "c:8080", "code": "500"}),
    (6, "http_requests_total", {"job": "api", "instance": "d:8080", "code": "200"}),
]
B_SERIES = [  # the same ids as tenant A (ids are per tenant) and ids of its own
    (1, "up", {"job": "SECRET_job", "instance": "SECRET:1"}),
    (4, "SECRET_metric", {"job": "SECRET_api"}),
    (77, "SECRET_only", {"job": "SECRET_x", "instance": "SECRET:2"}),
]


def a_samples() -> list[tuple[int, int, float]]:
    out = []
    for n, _, _ in A_SERIES:
        for i in range(60):
            if n in (2, 5) and i % 3 == 0:
                continue  # gaps, so series differ in sample counts
            out.append((n, T0 + i * 60_000, float(n * 100 + i)))
    return out


def b_samples() -> list[tuple[int, int, float]]:
    return [(n, 4242424240000 + i * 1000, 9876543.0 + i) for n, _, _ in B_SERIES
            for i in range(50)]


def _series_table(tenant: str, rows: list[tuple[int, str, dict[str, str]]]) -> pa.Table:
    return pa.table({
        "tenant": [tenant] * len(rows),
        "series_id": pa.array([sid(n) for n, _, _ in rows], pa.binary(16)),
        "metric_name": [m for _, m, _ in rows],
        "labels": pa.array([list(lb.items()) for _, _, lb in rows],
                           pa.map_(pa.string(), pa.string())),
    })


def _samples_table(tenant: str, rows: list[tuple[int, int, float]]) -> pa.Table:
    ids = [sid(n) for n, _, _ in rows]
    mantissas, scales = _values.Encoder(1000).encode(
        b"".join(ids), np.array([v for _, _, v in rows], np.float64))
    return pa.table({
        "tenant": [tenant] * len(rows),
        "series_id": pa.array(ids, pa.binary(16)),
        "timestamp": pa.array([t for _, t, _ in rows], pa.int64()),
        "mantissa": pa.array(np.frombuffer(mantissas, np.int64)),
        "scale": pa.array(np.frombuffer(scales, np.int8)),
    })


def _metadata_table(tenant: str, rows: list[tuple[str, str, str]]) -> pa.Table:
    return pa.table({
        "tenant": [tenant] * len(rows),
        "metric_family_name": [r[0] for r in rows],
        "type": [r[1] for r in rows],
        "help": [r[2] for r in rows],
        "unit": [""] * len(rows),
        "updated_at": pa.array([T0] * len(rows), pa.timestamp("ms")),
    })


A_METADATA = [("up", "gauge", "Whether the target is up."),
              ("http_requests_total", "counter", "Requests served.")]
B_METADATA = [("SECRET_metric", "counter", "SECRET_HELP"), ("up", "gauge", "SECRET_up")]


async def _load(storage: Any) -> str:
    """Insert both tenants (tenant A's rows twice, as separate parts) and the reference."""
    samples = a_samples()
    for _ in range(2):  # duplicates, as a sender retrying a batch would leave them
        await storage.insert("series", _series_table(TENANT, A_SERIES))
        await storage.insert("samples", _samples_table(TENANT, samples))
        await storage.insert("metadata", _metadata_table(TENANT, A_METADATA))
    await storage.insert("series", _series_table(OTHER, B_SERIES))
    await storage.insert("samples", _samples_table(OTHER, b_samples()))
    await storage.insert("metadata", _metadata_table(OTHER, B_METADATA))
    direct = f"{storage.database}_direct"
    db = storage.database
    await storage.execute(f"CREATE DATABASE IF NOT EXISTS {direct}")
    # The reference copies tenant A's rows, deduplicated, from the test's own lists.
    await storage.execute(
        f"CREATE TABLE {direct}.samples (series_id UInt128, timestamp Int64, value Float64) "
        "ENGINE = ReplacingMergeTree ORDER BY (series_id, timestamp)")
    await storage.execute(
        f"CREATE TABLE {direct}.series (series_id UInt128, metric_name LowCardinality(String),"
        " labels Map(LowCardinality(String), String)) ENGINE = MergeTree ORDER BY series_id")
    await storage.execute(
        f"CREATE TABLE {direct}.metadata (metric_family_name String, type "
        "LowCardinality(String), help String, unit String, updated_at DateTime64(3)) "
        "ENGINE = MergeTree ORDER BY metric_family_name")
    values = ", ".join(f"({n}, {t}, {v!r})" for n, t, v in samples)
    await storage.execute(f"INSERT INTO {direct}.samples VALUES {values}")
    values = ", ".join(
        f"({n}, '{m}', map({', '.join(f'{k!r}, {v!r}' for k, v in lb.items())}))"
        for n, m, lb in A_SERIES)
    await storage.execute(f"INSERT INTO {direct}.series VALUES {values}")
    values = ", ".join(f"('{f}', '{t}', '{h}', '', {T0 / 1000})" for f, t, h in A_METADATA)
    await storage.execute(f"INSERT INTO {direct}.metadata VALUES {values}")
    await storage.execute(
        f"CREATE TABLE {direct}.samples_labeled ENGINE = MergeTree ORDER BY tuple() AS "
        f"SELECT s.series_id AS series_id, r.metric_name AS metric_name, r.labels AS labels, "
        f"s.timestamp AS timestamp, s.value AS value FROM {direct}.samples AS s "
        f"INNER JOIN {direct}.series AS r ON r.series_id = s.series_id")
    assert db != direct
    return direct


@dataclasses.dataclass
class Env:
    client: TestClient
    app: Any
    direct: str

    @property
    def storage(self) -> Any:
        return self.app[STORAGE]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    overrides: dict[str, Any] = {
        "server.data_dir": str(tmp_path_factory.mktemp("gateway") / "data"),
        "server.log_level": "error",
        **LIMITS,
    }
    if CLICKHOUSE_URL:
        import uuid

        overrides["storage.clickhouse.url"] = CLICKHOUSE_URL
        overrides["storage.database"] = f"gob_test_{uuid.uuid4().hex[:12]}"
    app = build_app(load_config(env={}, overrides=overrides))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    direct = await _load(app[STORAGE])
    yield Env(client, app, direct)
    await client.close()


async def post(env: Env, sql: str, params: dict[str, Any] | None = None,
               fmt: str | None = None) -> tuple[int, str]:
    body: dict[str, Any] = {"query": sql, "params": params or {}}
    if fmt:
        body["format"] = fmt
    resp = await env.client.post("/api/v1/sql", json=body)
    return resp.status, await resp.text()


def assert_no_markers(text: str) -> None:
    for marker in MARKERS:
        assert marker not in text, f"another tenant's marker {marker!r} in {text[:300]}"


# ------------------------------------------------------------------- hostile queries

BIG_REGEX = "a" * 300
DEEP = "SELECT " + "(" * 3000 + "1" + ")" * 3000

# (id, SQL, allowed statuses, substring of the error)
HOSTILE: list[tuple[str, str, tuple[int, ...], str]] = [
    # several statements, and comments hiding one
    ("two-statements", "SELECT 1; SELECT 2", (400,), "exactly one statement"),
    ("select-then-drop", "SELECT * FROM samples; DROP TABLE samples", (400,), "exactly one"),
    ("comment-then-statement", "SELECT 1 -- harmless\n; SELECT * FROM gob.samples", (400,),
     "exactly one"),
    ("block-comment-semicolon", "SELECT 1 /* ; */; SELECT 2", (400,), "exactly one"),
    ("empty-statement-between", "SELECT 1;;SELECT 2", (400,), "exactly one"),
    ("comment-hides-union", "SELECT 1 /* x */ UNION ALL SELECT tenant FROM gob.samples", (400,),
     "database"),
    ("line-comment-then-union", "SELECT 1 --\nUNION ALL SELECT * FROM system.tables", (400,),
     "database"),
    # DDL, DML, SYSTEM, KILL, SET and other statements
    ("drop", "DROP TABLE samples", (400,), "only SELECT"),
    ("create", "CREATE TABLE x (a Int8) ENGINE = Memory", (400,), "only SELECT"),
    ("alter-delete", "ALTER TABLE gob.samples DELETE WHERE 1", (400,), "only SELECT"),
    ("insert", "INSERT INTO samples VALUES (1, 2, 3)", (400,), "only SELECT"),
    ("insert-function", "INSERT INTO FUNCTION file('x.csv') SELECT 1", (400,), "only SELECT"),
    ("truncate", "TRUNCATE TABLE gob.samples", (400,), "only SELECT"),
    ("rename", "RENAME TABLE gob.samples TO gob.x", (400,), "only SELECT"),
    ("optimize", "OPTIMIZE TABLE gob.samples FINAL", (400,), "only SELECT"),
    ("delete", "DELETE FROM samples WHERE 1", (400,), "only SELECT"),
    ("update", "UPDATE samples SET value = 0 WHERE 1", (400,), "only SELECT"),
    ("system-shutdown", "SYSTEM SHUTDOWN", (400,), "only SELECT"),
    ("system-drop-cache", "SYSTEM DROP DNS CACHE", (400,), "only SELECT"),
    ("kill", "KILL QUERY WHERE 1", (400,), ""),
    ("set-readonly", "SET readonly = 0", (400,), "only SELECT"),
    ("set-tenant-param", "SET param_gob_tenant = 'other'", (400,), "only SELECT"),
    ("use", "USE system", (400,), "only SELECT"),
    ("show", "SHOW TABLES", (400,), "only SELECT"),
    ("describe", "DESCRIBE TABLE gob.samples", (400,), "only SELECT"),
    ("explain", "EXPLAIN SELECT * FROM gob.samples", (400,), "only SELECT"),
    ("grant", "GRANT ALL ON *.* TO default", (400,), "only SELECT"),
    ("attach", "ATTACH TABLE gob.x", (400,), "only SELECT"),
    ("backup", "BACKUP TABLE gob.samples TO Disk('default', 'x')", (400,), ""),
    # table functions and functions off the allow-list
    ("file-table", "SELECT * FROM file('/etc/passwd', 'LineAsString')", (400,),
     "table function file"),
    ("file-function", "SELECT file('/etc/passwd')", (400,), "function file"),
    ("url", "SELECT * FROM url('http://127.0.0.1:1/', CSV, 'a String')", (400,), "url"),
    ("s3", "SELECT * FROM s3('http://127.0.0.1:1/b/k.csv')", (400,), "s3"),
    ("remote", "SELECT * FROM remote('127.0.0.1', gob.samples)", (400,), "remote"),
    ("cluster", "SELECT * FROM cluster('default', gob.samples)", (400,), "cluster"),
    ("mysql", "SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", (400,), "mysql"),
    ("postgresql", "SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')", (400,),
     "postgresql"),
    ("executable", "SELECT * FROM executable('ls', TabSeparated, 'x String')", (400,),
     "executable"),
    ("input", "SELECT * FROM input('a String')", (400,), "input"),
    ("merge", "SELECT * FROM merge('gob', '.*')", (400,), "merge"),
    ("generate-random", "SELECT * FROM generateRandom('a String') LIMIT 1", (400,),
     "generateRandom"),
    ("numbers-mt", "SELECT * FROM numbers_mt(10)", (400,), "numbers_mt"),
    ("view", "SELECT * FROM view(SELECT * FROM gob.samples)", (400,), ""),
    ("dictionary-table", "SELECT * FROM dictionary('d')", (400,), ""),
    ("dict-get", "SELECT dictGet('d', 'a', toUInt64(1))", (400,), "dictGet"),
    ("join-get", "SELECT joinGet('gob.samples', 'value', 1)", (400,), "joinGet"),
    ("sleep", "SELECT sleep(3)", (400,), "function sleep"),
    ("sleep-each-row", "SELECT sleepEachRow(1) FROM samples", (400,), "sleepEachRow"),
    ("throw-if", "SELECT throwIf(1)", (400,), "throwIf"),
    ("get-setting", "SELECT getSetting('readonly')", (400,), "getSetting"),
    ("current-user", "SELECT currentUser(), hostName()", (400,), "not allowed"),
    ("has-column", "SELECT hasColumnInTable('gob', 'samples', 'tenant')", (400,),
     "hasColumnInTable"),
    ("array-reduce", "SELECT arrayReduce('sum', [1])", (400,), "arrayReduce"),
    ("state-combinator", "SELECT sumState(value) FROM samples", (400,), "sumState"),
    ("in-function-form", "SELECT globalIn(1, samples)", (400,), "globalIn"),
    # relations other than the tenant's
    ("db-samples", "SELECT * FROM gob.samples", (400,), "database"),
    ("system-tables", "SELECT * FROM system.tables", (400,), "database"),
    ("system-numbers", "SELECT * FROM system.numbers LIMIT 1", (400,), "database"),
    ("information-schema", "SELECT * FROM information_schema.tables", (400,), "database"),
    ("information-schema-upper", "SELECT * FROM INFORMATION_SCHEMA.COLUMNS", (400,),
     "database"),
    ("default-db", "SELECT * FROM default.samples", (400,), "database"),
    ("backquoted-db", "SELECT * FROM `gob`.`samples`", (400,), "database"),
    ("dotted-name", 'SELECT * FROM "gob.samples"', (400,), "unknown relation"),
    ("local-table", "SELECT * FROM samples_local", (400,), "unknown relation"),
    ("migrations-table", "SELECT * FROM schema_migrations", (400,), "unknown relation"),
    ("upper-case-name", "SELECT * FROM SAMPLES", (400,), "unknown relation"),
    ("cte-prefix-name", "SELECT * FROM gob_cte_1", (400,), "unknown relation"),
    # literal predicates, unions, joins and subqueries that try to reach another tenant
    ("or-tenant", "SELECT * FROM samples WHERE tenant = 'other' OR 1 = 1", (400,), "tenant"),
    ("qualified-tenant", "SELECT samples.tenant FROM samples", (400,), ""),
    ("self-join-tenant", "SELECT count() FROM samples AS a JOIN samples AS b "
     "ON a.tenant != b.tenant", (400,), ""),
    ("union-unfiltered", "SELECT * FROM samples UNION ALL SELECT series_id, timestamp, value "
     "FROM gob.samples", (400,), "database"),
    ("join-unfiltered", "SELECT * FROM samples AS a JOIN gob.samples AS b "
     "ON a.series_id = b.series_id", (400,), "database"),
    ("in-subquery", "SELECT * FROM samples WHERE series_id IN (SELECT series_id FROM "
     "gob.series WHERE tenant = 'other')", (400,), "database"),
    ("array-subquery", "SELECT has((SELECT groupArray(value) FROM gob.samples), 1)", (400,),
     "database"),
    ("lambda-subquery", "SELECT arrayFilter(x -> x IN (SELECT value FROM gob.samples), [1])",
     (400,), "database"),
    ("scalar-subquery", "SELECT * FROM samples WHERE value > (SELECT max(value) FROM "
     "gob.samples)", (400,), "database"),
    ("array-join-subquery", "SELECT v FROM samples LEFT ARRAY JOIN (SELECT groupArray(value) "
     "FROM gob.samples) AS v", (400,), "cannot read from column"),
    ("in-bare-name", "SELECT * FROM samples WHERE series_id IN samples", (400,), "IN needs"),
    ("in-parenthesized-name", "SELECT 1 IN (samples)", (400,), "IN needs"),
    ("in-qualified-name", "SELECT (1, 2, 3, 4) IN ((gob.samples))", (400,), "IN needs"),
    ("global-in-name", "SELECT count() FROM samples WHERE series_id GLOBAL IN gob.series",
     (400,), ""),
    ("virtual-column", "SELECT _part FROM samples", (400,), ""),
    ("cte-of-system", "WITH t AS (SELECT * FROM system.tables) SELECT * FROM t", (400,),
     "database"),
    ("cte-then-system", "WITH gob_cte_1 AS (SELECT 1) SELECT * FROM gob.samples", (400,),
     "database"),
    ("join-metadata", "SELECT count() FROM samples_labeled AS l JOIN gob.metadata AS m ON 1",
     (400,), "database"),
    ("reserved-parameter", "SELECT {gob_tenant:String}", (400,), "reserved"),
    # settings, formats, files, and clauses that change what runs
    ("settings-readonly", "SELECT 1 SETTINGS readonly = 0", (400,), "SETTINGS"),
    ("settings-time", "SELECT * FROM samples SETTINGS max_execution_time = 1000", (400,),
     "SETTINGS"),
    ("settings-in-subquery", "SELECT * FROM (SELECT 1 SETTINGS max_result_rows = 0)", (400,),
     "SETTINGS"),
    ("format", "SELECT * FROM samples FORMAT TabSeparated", (400,), "FORMAT"),
    ("into-outfile", f"SELECT 1 INTO OUTFILE '{PWNED}'", (400,), "syntax"),
    ("sample", "SELECT * FROM samples SAMPLE 0.1", (400,), ""),
    ("prewhere", "SELECT * FROM samples PREWHERE value > 0", (400,), "PREWHERE"),
    ("with-fill", "SELECT number FROM numbers(10) ORDER BY number WITH FILL FROM 0 TO "
     "1000000000", (400,), "WITH FILL"),
    ("recursive-cte", "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) "
     "SELECT * FROM r", (400,), "RECURSIVE"),
    # limits: bounded before ClickHouse, or hit while running
    ("cartesian-product", "SELECT count() FROM numbers(200000) AS a, numbers(200000) AS b",
     (422,), "sql.max_execution_time"),
    ("cartesian-relations", "SELECT count() FROM samples AS a, samples AS b, samples AS c, "
     "samples AS d", (422,), "sql.max_execution_time"),
    ("rows-to-read", "SELECT count() FROM numbers(1000000)", (422,), "sql.max_rows_to_read"),
    ("result-rows", "SELECT number FROM numbers(15000)", (422,), "sql.max_result_rows"),
    ("memory", "SELECT arrayMap(x -> range(1000000), range(100))", (422,),
     "sql.max_memory_usage"),
    ("huge-repeat", "SELECT repeat('x', 1000001)", (400,), "sql.max_generated_elements"),
    ("huge-range", "SELECT range(10000000)", (400,), "sql.max_generated_elements"),
    ("huge-numbers", "SELECT * FROM numbers(10000000)", (400,), "sql.max_generated_elements"),
    ("computed-repeat", "SELECT repeat('x', toUInt64(value)) FROM samples", (400,),
     "constant integer"),
    ("huge-regex", f"SELECT match('a', '{BIG_REGEX}')", (400,), "sql.max_regex_length"),
    ("computed-like", "SELECT count() FROM samples WHERE toString(value) LIKE "
     "concat('%', toString(value))", (400,), "constant string"),
    ("column-regex", "SELECT match('a', labels['x']) FROM series", (400,), "constant string"),
    ("regexp-operator", "SELECT 'x' REGEXP repeat('a', 5)", (400,), "constant string"),
    ("too-deep", DEEP, (400,), ""),
    ("too-long", "SELECT 1 + " + " + ".join(["1"] * 6000), (413,), "sql.max_query_bytes"),
    # unicode and quoting tricks
    ("fullwidth-name", "SELECT * FROM ｓａｍｐｌｅｓ", (400,), "unknown relation"),
    ("homoglyph-name", "SELECT * FROM s\u0430mples", (400,), "unknown relation"),
    ("zero-width", "SELECT * FROM samples\u200b", (400,), "invisible"),
    ("nul-byte", "SELECT\x00 * FROM gob.samples", (400,), "control"),
    ("bidi-override", "SELECT * FROM \u202esamples", (400,), "invisible"),
    ("fullwidth-semicolon", "SELECT 1 \uff1b DROP TABLE gob.samples", (400,), ""),
    ("escaped-quote", "SELECT 'x\\'' FROM gob.samples", (400,), "database"),
    ("doubled-quote", "SELECT 'x''' FROM gob.samples", (400,), "database"),
    ("quote-in-identifier", 'SELECT 1 AS "a""" FROM gob.samples', (400,), "database"),
    ("backquote-in-identifier", "SELECT 1 AS `a``` FROM gob.samples", (400,), "database"),
    ("backquote-union", "SELECT * FROM `samples` UNION ALL SELECT * FROM `gob`.`samples`",
     (400,), "database"),
    ("quoted-system", 'SELECT * FROM "system"."tables"', (400,), "database"),
    ("param-injection", "SELECT count() FROM samples WHERE value = {v:Float64}", (400,),
     "ClickHouse rejected"),
]
HOSTILE_PARAMS = {"param-injection": {"v": "1 OR 1 = 1"}}


@pytest.mark.parametrize(("sql", "statuses", "needle"),
                         [pytest.param(s, st, n, id=i) for i, s, st, n in HOSTILE])
@ASYNC
async def test_hostile_query_refused_or_limited(env: Env, sql: str, statuses: tuple[int, ...],
                                                needle: str, request: pytest.FixtureRequest
                                                ) -> None:
    params = HOSTILE_PARAMS.get(request.node.callspec.id)
    status, text = await post(env, sql, params)
    assert status in statuses, text
    assert needle in text, text
    assert json.loads(text)["status"] == "error"
    assert_no_markers(text)


@ASYNC
async def test_reserved_parameter_cannot_be_supplied(env: Env) -> None:
    status, text = await post(env, "SELECT count() FROM samples", {"gob_tenant": OTHER})
    assert status == 400 and "reserved" in text
    assert_no_markers(text)


@ASYNC
async def test_hostile_queries_changed_nothing(env: Env) -> None:
    assert not PWNED.exists()
    counts = await env.storage.query(
        f"SELECT tenant, count() AS n FROM {env.storage.database}.samples GROUP BY tenant "
        "ORDER BY tenant")
    assert counts.to_pylist() == [{"tenant": TENANT, "n": 2 * len(a_samples())},
                                  {"tenant": OTHER, "n": len(b_samples())}]


# -------------------------------------------------------------------- legit queries

# (id, SQL with {relation} placeholders, params, whether row order is part of the answer)
LEGIT: list[tuple[str, str, dict[str, Any], bool]] = [
    ("top-series-by-samples", "SELECT series_id, count() AS n FROM {samples} "
     "GROUP BY series_id ORDER BY n DESC, series_id LIMIT 3", {}, True),
    ("ingest-per-job-over-time", "SELECT labels['job'] AS job, toStartOfInterval("
     "fromUnixTimestamp64Milli(timestamp), INTERVAL 10 MINUTE) AS t, count() AS samples "
     "FROM {samples_labeled} GROUP BY job, t ORDER BY job, t", {}, True),
    ("label-cardinality", "SELECT k, uniqExact(labels[k]) AS n FROM {series} "
     "ARRAY JOIN mapKeys(labels) AS k GROUP BY k ORDER BY n DESC, k", {}, True),
    ("join-samples-to-labels", "SELECT s.timestamp, s.value, r.metric_name, "
     "r.labels['instance'] AS instance FROM {samples} AS s INNER JOIN {series} AS r "
     "ON r.series_id = s.series_id WHERE r.metric_name = 'up' AND s.timestamp < "
     f"{T0 + 300_000} ORDER BY s.timestamp, instance", {}, True),
    ("quantiles", "SELECT metric_name, quantileExact(0.5)(value) AS p50, "
     "quantilesExact(0.9, 0.99)(value) AS ps, median(value) AS m FROM {samples_labeled} "
     "GROUP BY metric_name ORDER BY metric_name", {}, True),
    ("downsample", "SELECT series_id, toStartOfInterval(toDateTime(intDiv(timestamp, 1000)), "
     "INTERVAL 15 MINUTE) AS bucket, avg(value) AS avg, max(value) AS max FROM {samples} "
     "GROUP BY series_id, bucket ORDER BY series_id, bucket", {}, True),
    ("window-delta", "SELECT series_id, timestamp, value - lagInFrame(value) OVER (PARTITION "
     "BY series_id ORDER BY timestamp ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS delta, "
     "row_number() OVER (PARTITION BY series_id ORDER BY timestamp) AS n FROM {samples} "
     "ORDER BY series_id, timestamp", {}, True),
    ("cte", "WITH per AS (SELECT series_id, max(value) AS m FROM {samples} GROUP BY "
     "series_id) SELECT r.metric_name, sum(per.m) AS total FROM per JOIN {series} AS r "
     "USING series_id GROUP BY r.metric_name ORDER BY r.metric_name", {}, True),
    ("cte-shadowing-a-relation", "WITH samples AS (SELECT * FROM {samples} WHERE value > 300)"
     " SELECT count() AS n, min(value) AS lo FROM samples", {}, True),
    ("scalar-with", "WITH (SELECT max(timestamp) FROM {samples}) AS last "
     "SELECT count() AS n FROM {samples} WHERE timestamp = last", {}, True),
    ("union", "SELECT 'series' AS kind, count() AS n FROM {series} UNION ALL "
     "SELECT 'samples', count() FROM {samples} UNION ALL SELECT 'metadata', count() "
     "FROM {metadata}", {}, False),
    ("intersect", "SELECT series_id FROM {samples} INTERSECT SELECT series_id FROM {series}",
     {}, False),
    ("metadata", "SELECT metric_family_name, type, help, updated_at FROM {metadata} "
     "ORDER BY metric_family_name", {}, True),
    ("rate-per-instance", "SELECT labels['instance'] AS inst, (max(value) - min(value)) / "
     "((max(timestamp) - min(timestamp)) / 1000) AS per_second FROM {samples_labeled} "
     "WHERE metric_name = 'http_requests_total' GROUP BY inst ORDER BY inst", {}, True),
    ("or-true-stays-in-tenant", "SELECT count() AS n, sum(value) AS s FROM {samples} "
     "WHERE 1 = 1 OR value > 0", {}, True),
    ("self-join-stays-in-tenant", "SELECT count() AS n FROM {samples} AS a JOIN {samples} "
     "AS b ON a.timestamp = b.timestamp AND a.series_id != b.series_id", {}, True),
    ("in-subquery", "SELECT count() AS n FROM {samples} WHERE series_id IN (SELECT series_id "
     "FROM {series} WHERE metric_name = 'up')", {}, True),
    ("array-of-subquery", "SELECT arraySort((SELECT groupArray(toString(series_id)) "
     "FROM {series})) AS ids", {}, True),
    ("subquery-in-join", "SELECT count() AS n FROM {samples} AS s JOIN (SELECT series_id "
     "FROM {series} WHERE labels['job'] = 'api') AS j ON j.series_id = s.series_id", {},
     True),
    ("parameters", "SELECT count() AS n FROM {samples} WHERE value > {v:Float64} AND "
     "series_id IN {ids:Array(UInt128)}", {"v": 320.5, "ids": [3, 4]}, True),
    ("string-parameter", "SELECT count() AS n FROM {series} WHERE labels['job'] = {j:String}",
     {"j": "' OR 1 = 1 --"}, True),
    ("final-is-accepted", "SELECT count() AS n FROM {samples} FINAL", {}, True),
    ("quote-tricks-are-strings", "SELECT 'x\\' FROM gob.samples --' AS a, "
     "'y'' FROM gob.samples --' AS b, 1 AS \"c\"\" FROM gob.samples\" FROM {series} LIMIT 1",
     {}, True),
    ("types", "SELECT toDate('2024-05-01') AS d, toDateTime('2024-05-01 12:00:00', 'UTC') "
     "AS dt, toDecimal64(1.25, 2) AS dec, [1, 2] AS arr, map('a', 1) AS m, (1, 'x') AS tup, "
     "nan AS not_a_number, CAST(NULL AS Nullable(Int8)) AS nothing, toUInt128(7) AS wide, "
     "'é\\'\"' AS s FROM {series} LIMIT 1", {}, True),
]


async def _direct(env: Env, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The same SQL on the reference tables, encoded by the same encoder."""
    async with env.storage.query_stream(sql, params) as result:
        enc = Encoder("json", result.columns)
        body = enc.header()
        async for batch in result.batches:
            body += enc.batch(batch)
        body += enc.end()
    return json.loads(body)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize(("sql", "params", "ordered"),
                         [pytest.param(s, p, o, id=i) for i, s, p, o in LEGIT])
@ASYNC
async def test_legit_query_equals_direct_sql(env: Env, sql: str, params: dict[str, Any],
                                             ordered: bool) -> None:
    names = ("samples", "series", "metadata", "samples_labeled")
    gateway_sql, direct_sql = sql, sql
    for name in names:
        gateway_sql = gateway_sql.replace(f"{{{name}}}", name)
        direct_sql = direct_sql.replace(f"{{{name}}}", f"{env.direct}.{name}")
    status, text = await post(env, gateway_sql, params)
    assert status == 200, text
    assert_no_markers(text)
    got = json.loads(text)
    assert got["status"] == "success"
    want = await _direct(env, direct_sql, params)
    assert got["data"]["columns"] == want["data"]["columns"]
    rows, expected = got["data"]["rows"], want["data"]["rows"]
    if not ordered:
        rows, expected = sorted(rows, key=json.dumps), sorted(expected, key=json.dumps)
    assert len(rows) == len(expected) > 0
    assert _same(rows, expected), (rows[:5], expected[:5])
    assert got["stats"]["rows"] == len(rows)


# ------------------------------------------------------------- formats and streaming

@ASYNC
async def test_csv_and_tsv(env: Env) -> None:
    sql = ("SELECT metric_name, labels['instance'] AS i, count() AS n FROM samples_labeled "
           "WHERE metric_name = 'up' GROUP BY metric_name, i ORDER BY i")
    resp = await env.client.post("/api/v1/sql", data=sql, params={"format": "csv"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert await resp.text() == "metric_name,i,n\nup,a:9100,60\nup,b:9100,40\nup,c:8080,60\n"
    resp = await env.client.post("/api/v1/sql", data=sql,
                                 headers={"Accept": "text/tab-separated-values"})
    assert resp.status == 200 and resp.content_type == "text/tab-separated-values"
    assert (await resp.text()).splitlines()[1] == "up\ta:9100\t60"
    resp = await env.client.post(
        "/api/v1/sql", data={"query": "SELECT {s:String} AS s, [1] AS a", "param_s": "a\tb",
                             "format": "tsv"})
    assert await resp.text() == "s\ta\na\\tb\t[1]\n"


@ASYNC
async def test_large_result_is_streamed(env: Env) -> None:
    resp = await env.client.post("/api/v1/sql",
                                 data="SELECT number, repeat('x', 100) AS pad FROM numbers(5000)")
    assert resp.status == 200
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    body = json.loads(await resp.read())
    assert body["status"] == "success" and body["stats"]["rows"] == 5000
    assert body["data"]["rows"][4999] == [4999, "x" * 100]


@ASYNC
async def test_limit_hit_after_streaming_started(env: Env,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = env.app[CONFIG]
    monkeypatch.setattr(cfg, "sql", dataclasses.replace(cfg.sql, max_result_rows=200_000,
                                                        max_rows_to_read=1_000_000))
    sql = "SELECT number, repeat('x', 50) AS pad FROM numbers(300000)"
    resp = await env.client.post("/api/v1/sql", data=sql)
    if resp.status == 200:  # the first rows went out before ClickHouse stopped
        body = json.loads(await resp.read())
        assert body["status"] == "error" and "sql.max_result_rows" in body["error"]
        assert 0 < body["stats"]["rows"] <= 200_000
    else:
        assert resp.status == 422 and "sql.max_result_rows" in await resp.text()
    resp = await env.client.post("/api/v1/sql", data=sql, params={"format": "csv"})
    if resp.status == 200:  # CSV cannot carry an error: the transfer is cut short
        with pytest.raises(Exception, match="payload is not completed"):
            await resp.read()
    else:
        assert resp.status == 422


@pytest.mark.parametrize(("fmt", "accept", "expected"), [
    (None, "", "json"), (None, "text/csv", "csv"), (None, "text/html, */*;q=0.1", "json"),
    (None, "text/tab-separated-values;q=0.9, text/csv", "tsv"), ("CSV", "text/csv", "csv"),
    ("tsv", "application/json", "tsv"),
])
def test_format_negotiation(fmt: str | None, accept: str, expected: str) -> None:
    assert negotiate(fmt, accept) == expected


@pytest.mark.parametrize(("body", "headers", "status", "needle"), [
    (b"", {}, 400, "no query"),
    (b"\xff\xfe", {}, 400, "not valid UTF-8"),
    (b'{"query": 1}', {"Content-Type": "application/json"}, 400, "no query"),
    (b"[1]", {"Content-Type": "application/json"}, 400, "must be an object"),
    (b'{"query": "SELECT 1", "params": []}', {"Content-Type": "application/json"}, 400,
     "params"),
    (b'{"query": "SELECT 1", "params": {"a": {"b": 1}}}', {"Content-Type": "application/json"},
     400, "values are strings"),
    (b'{"query": "SELECT 1", "params": {"x": 1}}', {"Content-Type": "application/json"}, 400,
     "not used"),
    (b'{"query": "SELECT {x:UInt8}"}', {"Content-Type": "application/json"}, 400,
     "no value"),
    (b'{"query": "SELECT 1", "format": "xml"}', {"Content-Type": "application/json"}, 400,
     "unknown format"),
    (b"x" * 40000, {}, 413, "sql.max_query_bytes"),
])
@ASYNC
async def test_bad_requests(env: Env, body: bytes, headers: dict[str, str], status: int,
                            needle: str) -> None:
    resp = await env.client.post("/api/v1/sql", data=body, headers=headers)
    assert resp.status == status
    assert needle in await resp.text()


# ----------------------------------------------------------------------- admission

@contextlib.contextmanager
def tenant_overrides(env: Env, values: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Per-tenant limits as the overrides file would set them, for the block only."""
    overrides = env.app[OVERRIDES]
    saved = overrides.layer("file")
    overrides.set_layer("file", parse_overrides(values, "overrides"))
    try:
        yield
    finally:
        overrides.set_layer("file", saved)
        env.app[ADMISSION].buckets.local._buckets.clear()


@ASYNC
async def test_query_rate_limit_is_429_with_retry_after(env: Env,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = env.app[CONFIG]
    monkeypatch.setattr(cfg, "sql", dataclasses.replace(cfg.sql, query_rate=0.5,
                                                        query_burst_size=2))
    try:
        statuses = []
        for _ in range(3):
            resp = await env.client.post("/api/v1/sql", data="SELECT 1")
            statuses.append(resp.status)
        assert statuses == [200, 200, 429]
        assert int(resp.headers["Retry-After"]) >= 1
        text = await resp.text()
        assert "sql.query_rate=0.5/s (burst sql.query_burst_size=2)" in text, text
    finally:
        env.app[ADMISSION].buckets.local._buckets.clear()


@ASYNC
async def test_query_rate_per_tenant_override(env: Env) -> None:
    with tenant_overrides(env, {TENANT: {"sql_query_rate": "0.5", "sql_query_burst_size": 1},
                                OTHER: {"sql_query_rate": 100}}):
        statuses = []
        for _ in range(2):
            resp = await env.client.post("/api/v1/sql", data="SELECT 1")
            statuses.append(resp.status)
        assert statuses == [200, 429]
        assert ("sql_query_rate=0.5/s for tenant 'anonymous' (burst sql_query_burst_size=1 "
                "for tenant 'anonymous')") in await resp.text()


@ASYNC
async def test_concurrency_limit_is_429(env: Env) -> None:
    admission: Admission = env.app[ADMISSION]
    with tenant_overrides(env, {TENANT: {"sql_max_concurrent_queries": 1}}):
        with admission.running(TENANT, sql_limits(env.app, TENANT)):
            resp = await env.client.post("/api/v1/sql", data="SELECT 1")
            assert resp.status == 429 and "Retry-After" in resp.headers
            assert ("sql_max_concurrent_queries=1 for tenant 'anonymous'"
                    in await resp.text())
        resp = await env.client.post("/api/v1/sql", data="SELECT 1")
        assert resp.status == 200


async def test_token_bucket_refills() -> None:
    now = [0.0]
    registry = CollectorRegistry()
    buckets = TokenBuckets(RedisLayer(RedisConfig(), registry), "sql_rate", "sql_rate_limit",
                           clock=lambda: now[0])
    admission = Admission(buckets)
    limits = SqlConfig(query_rate=2.0, query_burst_size=2, max_concurrent_queries=1)
    await admission.take("t", limits)
    await admission.take("t", limits)
    with pytest.raises(TooManyRequests) as exc:
        await admission.take("t", limits)
    assert exc.value.retry_after == pytest.approx(0.5)
    await admission.take("u", limits)  # other tenants have their own bucket
    now[0] = 0.5
    await admission.take("t", limits)
    with admission.running("t", limits), pytest.raises(TooManyRequests):
        admission.running("t", limits).__enter__()
    with admission.running("t", limits):
        pass
    unlimited = SqlConfig(query_rate=0.0, max_concurrent_queries=0)
    for _ in range(10):
        await admission.take("t", unlimited)
    with admission.running("t", unlimited), admission.running("t", unlimited):
        pass


# ------------------------------------------------------------ per-tenant limits

# (override, query, status, text in the answer): the override applies, is named in the
# error, and 0 disables a limit.
PER_TENANT = [
    ("result-rows", {"sql_max_result_rows": 5}, "SELECT number FROM numbers(10)", 422,
     "result exceeded sql_max_result_rows=5 for tenant 'anonymous' rows"),
    ("result-rows-raised", {"sql_max_result_rows": 20_000}, "SELECT number FROM numbers(15000)",
     200, '"stats":{"rows":15000}'),
    ("result-rows-off", {"sql_max_result_rows": 0}, "SELECT number FROM numbers(15000)", 200,
     '"stats":{"rows":15000}'),
    ("rows-to-read", {"sql_max_rows_to_read": 1000}, "SELECT count() FROM numbers(100000)", 422,
     "sql_max_rows_to_read=1000 for tenant 'anonymous'"),
    ("result-bytes", {"sql_max_result_bytes": "1KiB"},
     "SELECT repeat('x', 100) FROM numbers(100)", 422,
     "sql_max_result_bytes=1024 for tenant 'anonymous'"),
    ("execution-time", {"sql_max_execution_time": "100ms"},
     "SELECT count() FROM numbers(200000) AS a, numbers(200000) AS b", 422,
     "sql_max_execution_time=0.1s for tenant 'anonymous'"),
    ("memory", {"sql_max_memory_usage": "16MiB"},
     "SELECT arrayMap(x -> range(100000), range(100))", 422,
     "sql_max_memory_usage=16777216 for tenant 'anonymous'"),
    ("other-tenant", {}, "SELECT number FROM numbers(10)", 200, '"stats":{"rows":10}'),
]


@pytest.mark.parametrize(("values", "sql", "status", "needle"),
                         [pytest.param(v, q, st, n, id=i) for i, v, q, st, n in PER_TENANT])
@ASYNC
async def test_per_tenant_sql_limits(env: Env, values: dict[str, Any], sql: str, status: int,
                                     needle: str) -> None:
    # "other-tenant": another tenant's tiny limit does not apply to this one.
    overrides = {TENANT: values} if values else {OTHER: {"sql_max_result_rows": 1}}
    with tenant_overrides(env, overrides):
        got, text = await post(env, sql)
    assert got == status, text[-300:]
    assert needle in text, text[-300:]
    assert (await post(env, "SELECT number FROM numbers(15000)"))[0] == 422  # back to default


def test_sql_limits_merge_overrides(env: Env) -> None:
    """Every per-tenant sql_* limit replaces its sql.* setting, in the settings ClickHouse
    gets too; a tenant without overrides runs with the sql.* settings."""
    values = {"sql_max_execution_time": "3s", "sql_max_memory_usage": "1MiB",
              "sql_max_rows_to_read": 7, "sql_max_result_rows": 8,
              "sql_max_result_bytes": 9, "sql_max_concurrent_queries": 3,
              "sql_query_rate": 0.25, "sql_query_burst_size": 4}
    assert set(values) == set(SQL_TENANT_LIMITS)
    with tenant_overrides(env, {"t": values}):
        limits = sql_limits(env.app, "t")
        default = sql_limits(env.app, TENANT)
    assert (limits.max_execution_time, limits.max_memory_usage, limits.max_rows_to_read,
            limits.max_result_rows, limits.max_result_bytes, limits.max_concurrent_queries,
            limits.query_rate, limits.query_burst_size) == (3.0, 1 << 20, 7, 8, 9, 3, 0.25, 4)
    assert limits.overridden == frozenset(SQL_TENANT_LIMITS.values())
    assert limits.max_query_bytes == env.app[CONFIG].sql.max_query_bytes  # not per tenant
    settings = clickhouse_settings(limits)
    assert (settings["max_execution_time"], settings["max_memory_usage"],
            settings["max_rows_to_read"], settings["max_result_rows"],
            settings["max_result_bytes"]) == (3.0, 1 << 20, 7, 8, 9)
    assert default.overridden == frozenset()
    assert dataclasses.asdict(default) == {**dataclasses.asdict(env.app[CONFIG].sql),
                                           "tenant": TENANT, "overridden": frozenset()}


@ASYNC
async def test_queries_and_writes_interleave(env: Env) -> None:
    """A gateway query holds the embedded engine only while it runs: inserts and other
    queries around it keep working, and none sees another's rows."""
    sql = "SELECT count() AS n FROM samples"

    async def gateway() -> int:
        status, text = await post(env, sql)
        assert status == 200, text
        return json.loads(text)["data"]["rows"][0][0]

    async def plain() -> int:
        t = await env.storage.query(f"SELECT count() AS n FROM {env.direct}.samples")
        return int(t.column("n")[0].as_py())

    results = await asyncio.gather(*[gateway() if i % 2 else plain() for i in range(8)],
                                   env.storage.insert("metadata", _metadata_table(OTHER, [
                                       ("SECRET_late", "gauge", "SECRET")])))
    assert set(results[:-1]) == {len(a_samples())}


# ----------------------------------------------------------------- pure functions

@pytest.mark.parametrize(("sql", "line", "column", "needle"), [
    ("SELECT 1;\n  SELECT 2", 2, 3, "exactly one statement"),
    ("SELECT a,\n  sleep(1)", 2, 3, "function sleep"),
    ("SELECT *\nFROM system.one", 2, 6, "database"),
    ("\n  DROP TABLE x", 2, 3, "only SELECT"),
    ("SELECT 1 FROM samples SETTINGS a = 1", 1, 32, "SETTINGS"),
])
def test_rejections_carry_positions(sql: str, line: int, column: int, needle: str) -> None:
    from gob_metrics.gateway.relations import scope_to_tenant

    with pytest.raises(QueryRejected) as exc:
        tree = parse(sql, Bounds())
        check(tree, sql, Bounds(), {})
        scope_to_tenant(tree, "gob", sql)
    assert needle in exc.value.reason
    assert (exc.value.line, exc.value.column) == (line, column)


def test_every_relation_reference_is_rewritten() -> None:
    from gob_metrics.gateway.execute import prepare

    sql = ("WITH x AS (SELECT * FROM samples), (SELECT count() FROM series) AS c "
           "SELECT * FROM x JOIN samples_labeled AS l USING series_id "
           "WHERE l.series_id IN (SELECT series_id FROM series) "
           "AND has((SELECT groupArray(metric_family_name) FROM metadata), 'a') "
           "UNION ALL SELECT * FROM (SELECT * FROM samples FINAL) AS y, x")
    cfg = load_config(env={}).sql
    query = prepare(sql, {}, "t1", cfg, "gob")
    text = query.sql
    # x: samples; c: series; samples_labeled: samples and series; IN: series; metadata;
    # the UNION branch: samples (x there is the CTE again)
    assert text.count("FROM gob.") == text.count("tenant = {gob_tenant: String}") == 7
    assert query.params == {"gob_tenant": "t1"}
    assert query.settings["readonly"] == 1


def test_encoder_types() -> None:
    enc = Encoder("json", [("i", "Int64"), ("f", "Float32"), ("w", "UInt128"),
                           ("e", "Enum8('a' = 1, 'b c' = 2)"), ("dt", "DateTime"),
                           ("s", "String"), ("m", "Map(String, Array(Nullable(Float64)))")])
    batch = pa.record_batch([
        pa.array([1, None]), pa.array([0.1, float("inf")], pa.float32()),
        pa.array([sid(2**100), sid(1)], pa.binary(16)), pa.array([1, 2], pa.int8()),
        pa.array([0, 86399], pa.uint32()), pa.array([b"ok", b"\xff"], pa.binary()),
        pa.array([[("k", [1.5, None, float("nan")])], []],
                 pa.map_(pa.string(), pa.list_(pa.float64()))),
    ], names=["i", "f", "w", "e", "dt", "s", "m"])
    body = enc.header() + enc.batch(batch) + enc.end()
    rows = json.loads(body)["data"]["rows"]
    assert rows == [[1, 0.1, str(2**100), "a", "1970-01-01T00:00:00Z", "ok",
                     {"k": [1.5, None, "NaN"]}],
                    [None, "+Inf", "1", "b c", "1970-01-01T23:59:59Z", "\ufffd", {}]]


# ------------------------------------------------------------------------------ CLI

@ASYNC
async def test_cli_through_a_running_server(env: Env) -> None:
    url = str(env.client.make_url("/")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gob_metrics", "sql", "--url", url, "--format", "csv",
        "--param", "m=up", "SELECT count() AS n FROM series WHERE metric_name = {m:String}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"n\n3\n"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gob_metrics", "sql", "--url", url, "SELECT * FROM system.one",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1 and b"HTTP 400" in err and b"database" in err


@pytest.mark.skipif(bool(CLICKHOUSE_URL), reason="opens its own embedded engine")
@ASYNC
async def test_cli_opening_storage(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gob_metrics", "sql", "--data-dir", str(tmp_path / "d"),
        "--log-level", "error", "--format", "tsv",
        "SELECT count() AS n, {x:String} AS x FROM samples", "--param", "x=hi",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"n\tx\n0\thi\n"


@ASYNC
async def test_outcomes_are_counted(env: Env) -> None:
    def count(outcome: str) -> float:
        value = env.app[METRICS].registry.get_sample_value(
            "gob_sql_queries_total", {"outcome": outcome})
        return value or 0.0

    before = {o: count(o) for o in ("success", "rejected", "limited")}
    await post(env, "SELECT 1")
    await post(env, "SELECT * FROM system.one")
    await post(env, "SELECT count() FROM numbers(1000000)")
    assert {o: count(o) - before[o] for o in before} == {"success": 1, "rejected": 1,
                                                         "limited": 1}
    resp = await env.client.get("/metrics")
    assert "gob_sql_result_rows_total" in await resp.text()
