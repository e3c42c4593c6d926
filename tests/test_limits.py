"""Per-tenant limits without Redis: validation (400, the rest stored), the ingestion rate
(429 + Retry-After), series limits, overrides (file, reload, CLI), the local lookup cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gob_metrics.app import build_app
from gob_metrics.config import Limits
from gob_metrics.errors import ConfigError
from gob_metrics.keys import LOOKUP_CACHE, OVERRIDES, SERIES_REGISTRY, STORAGE
from gob_metrics.tenants.limits import Overrides, parse_overrides
from tests.conftest import CLICKHOUSE_URL, cli
from tests.writes import HEADERS, body, count

NOW = int(time.time() * 1000)
UP = {"__name__": "up", "job": "node"}


def s(labels: dict[str, str], *ts: int) -> tuple[dict[str, str], list[tuple[int, float]]]:
    return labels, [(t, 1.0) for t in (ts or (NOW - 1000,))]


def many_labels(n: int) -> dict[str, str]:
    return {"__name__": "wide", **{f"l{i:02d}": "v" for i in range(n - 1)}}


async def write(client: Any, series: list[Any], tenant: str = "", **kw: Any) -> Any:
    headers = {**HEADERS, "X-Scope-OrgID": tenant} if tenant else HEADERS
    return await client.post("/api/v1/write", data=body(series, **kw), headers=headers)


async def discarded(client: Any, reason: str, tenant: str = "anonymous",
                    kind: str = "samples") -> float:
    text = await (await client.get("/metrics")).text()
    needle = f'gob_discarded_{kind}_total{{reason="{reason}",tenant="{tenant}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


# (id, limit overrides, series, metadata, status, message, samples stored, discard reason)
VALIDATION: list[tuple[str, dict[str, str], list[Any], list[Any], int, str, int, str]] = [
    ("30-labels-ok", {}, [s(many_labels(30))], [], 204, "", 1, ""),
    ("31-labels", {}, [s(many_labels(31)), s(UP)], [], 400,
     "series 0 (wide{l00='v', l01='v'", 1, "max_label_names_per_series"),
    ("31-labels-message", {}, [s(many_labels(31))], [], 400,
     "31 labels exceed max_label_names_per_series=30 for tenant 'anonymous'", 0,
     "max_label_names_per_series"),
    ("label-names-lowered", {"max_label_names_per_series": "1"}, [s(UP)], [], 400,
     "2 labels exceed max_label_names_per_series=1", 0, "max_label_names_per_series"),
    ("label-names-disabled", {"max_label_names_per_series": "0"}, [s(many_labels(100))], [],
     204, "", 1, ""),
    ("long-label-name", {}, [s({**UP, "n" * 1025: "v"})], [], 400,
     "of 1025 bytes exceeds max_label_name_length=1024 for tenant 'anonymous'", 0,
     "label_name_too_long"),
    ("long-label-value", {}, [s({**UP, "path": "x" * 2049}), s({**UP, "path": "y"})], [], 400,
     "value of label 'path' of 2049 bytes exceeds max_label_value_length=2048", 1,
     "label_value_too_long"),
    ("long-value-utf8-bytes", {"max_label_value_length": "4"}, [s({**UP, "job": "ééé"})], [],
     400, "of 6 bytes exceeds max_label_value_length=4", 0, "label_value_too_long"),
    ("long-metric-name", {"max_label_value_length": "3"}, [s({"__name__": "abcd"})], [], 400,
     "value of label '__name__' of 4 bytes", 0, "label_value_too_long"),
    ("future", {}, [s(UP, NOW + 3_600_000, NOW - 1)], [], 400,
     "too far in the future (after now + creation_grace_period=10m for tenant 'anonymous'", 1,
     "too_far_in_future"),
    ("grace-widened", {"creation_grace_period": "2h"}, [s(UP, NOW + 3_600_000)], [], 204, "",
     1, ""),
    ("old-accepted-by-default", {}, [s(UP, NOW - 30 * 86_400_000)], [], 204, "", 1, ""),
    ("old-rejected", {"reject_old_samples": "true"}, [s(UP, NOW - 30 * 86_400_000, NOW - 1)],
     [], 400, "is too old (before now - reject_old_samples_max_age=2w for tenant 'anonymous'",
     1, "greater_than_max_sample_age"),
    ("old-max-age", {"reject_old_samples": "true", "reject_old_samples_max_age": "1h"},
     [s(UP, NOW - 7_200_000)], [], 400, "reject_old_samples_max_age=1h", 0,
     "greater_than_max_sample_age"),
    ("metadata-help-too-long", {}, [s(UP)], [("up", 2, "h" * 1025, "")], 400,
     "0 samples and 1 metadata discarded, the rest of the request was stored: metadata for "
     "'up': help of 1025 bytes exceeds max_metadata_length=1024", 1, ""),
    ("metadata-unit-too-long", {"max_metadata_length": "3"}, [s(UP)], [("up", 2, "h", "bytes")],
     400, "unit of 5 bytes exceeds max_metadata_length=3", 1, ""),
]


@pytest.mark.parametrize(("limits", "series", "metadata", "status", "message", "stored",
                          "reason"), [c[1:] for c in VALIDATION], ids=[c[0] for c in VALIDATION])
async def test_validation_limits(aiohttp_client: Any, make_config: Any, limits: dict[str, str],
                                 series: list[Any], metadata: list[Any], status: int,
                                 message: str, stored: int, reason: str) -> None:
    cfg = make_config(**{f"limits.{k}": v for k, v in limits.items()})
    client = await aiohttp_client(build_app(cfg))
    resp = await write(client, series, metadata=metadata)
    text = await resp.text()
    assert resp.status == status, text
    assert message in text
    assert await count(client.app[STORAGE], "samples") == stored
    if reason:
        assert await discarded(client, reason) > 0


async def test_metadata_discards_are_counted(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(**{"limits.max_metadata_length": "3"})))
    resp = await write(client, [s(UP)], metadata=[("up", 2, "h", "bytes"), ("ok", 1, "", "")])
    assert resp.status == 400
    assert await discarded(client, "unit_too_long", kind="metadata") == 1
    storage = client.app[STORAGE]
    assert await count(storage, "metadata") == 1


async def test_cached_series_checked_against_lowered_limit(gob_client: Any) -> None:
    """A series the cache knows is still held to its tenant's current label limits."""
    assert (await write(gob_client, [s(UP)])).status == 204
    overrides = gob_client.app[OVERRIDES]
    overrides.set_layer("file", parse_overrides({"anonymous": {
        "max_label_names_per_series": 1}}, "test"))
    resp = await write(gob_client, [s(UP)])
    assert resp.status == 400
    assert "max_label_names_per_series=1" in await resp.text()
    overrides.set_layer("file", {})
    assert (await write(gob_client, [s(UP)])).status == 204


# -------------------------------------------------------------------- ingestion rate

async def test_ingestion_rate_429_whole_request(aiohttp_client: Any, make_config: Any) -> None:
    cfg = make_config(**{"limits.ingestion_rate": "100", "limits.ingestion_burst_size": "150"})
    client = await aiohttp_client(build_app(cfg))
    batch = [s({"__name__": "m", "i": str(i)}) for i in range(100)]
    assert (await write(client, batch)).status == 204
    resp = await write(client, batch)
    text = await resp.text()
    assert resp.status == 429, text
    assert "ingestion_rate=100 for tenant 'anonymous' with ingestion_burst_size=150" in text
    assert 1 <= int(resp.headers["Retry-After"]) <= 2
    assert await count(client.app[STORAGE], "samples") == 100  # nothing of the second
    assert await discarded(client, "rate_limited") == 100
    resp = await write(client, [s({"__name__": "m", "i": str(i)}) for i in range(151)])
    assert resp.status == 429
    assert "larger than the burst size" in await resp.text()
    await asyncio.sleep(1.1)  # 110 tokens back
    assert (await write(client, batch)).status == 204


async def test_rate_limit_is_per_tenant(aiohttp_client: Any, make_config: Any) -> None:
    cfg = make_config(**{"limits.ingestion_rate": "10", "limits.ingestion_burst_size": "10",
                         "tenancy.multitenancy_enabled": "true"})
    client = await aiohttp_client(build_app(cfg))
    batch = [s({"__name__": "m", "i": str(i)}) for i in range(10)]
    assert (await write(client, batch, "a")).status == 204
    assert (await write(client, batch, "a")).status == 429
    assert (await write(client, batch, "b")).status == 204


# -------------------------------------------------------------------- series limits

async def test_series_per_user_limit_and_seed_from_table(aiohttp_client: Any,
                                                         make_config: Any) -> None:
    cfg = make_config(**{"limits.max_global_series_per_user": "3"})
    client = await aiohttp_client(build_app(cfg))
    first = [s({"__name__": "m", "i": str(i)}, NOW - 3000) for i in range(2)]
    assert (await write(client, first)).status == 204
    resp = await write(client, [s({"__name__": "m", "i": str(i)}, NOW - 2000) for i in range(5)])
    text = await resp.text()
    assert resp.status == 400, text
    assert "tenant has 3 series, the limit is max_global_series_per_user=3 for tenant " \
        "'anonymous'" in text
    storage = client.app[STORAGE]
    assert await count(storage, "series") == 3
    assert await count(storage, "samples") == 2 + 3  # known series are never refused
    assert await discarded(client, "per_user_series_limit") == 2
    await client.close()
    # A new process counts the series table at start.
    client = await aiohttp_client(build_app(cfg))
    assert client.app[SERIES_REGISTRY].series_count("anonymous") == 3
    resp = await write(client, [s({"__name__": "m", "i": "new"}, NOW - 1000),
                                s({"__name__": "m", "i": "0"}, NOW - 1000)])
    assert resp.status == 400
    assert await count(client.app[STORAGE], "samples") == 6


async def test_series_per_metric_limit(aiohttp_client: Any, make_config: Any) -> None:
    cfg = make_config(**{"limits.max_global_series_per_metric": "2"})
    client = await aiohttp_client(build_app(cfg))
    resp = await write(client, [s({"__name__": n, "i": str(i)}) for n in ("a", "b")
                                for i in range(3)])
    text = await resp.text()
    assert resp.status == 400
    assert "metric 'a' has 2 series, the limit is max_global_series_per_metric=2" in text
    assert await count(client.app[STORAGE], "series") == 4
    assert await discarded(client, "per_metric_series_limit") == 2


async def test_same_new_series_in_concurrent_requests_counted_once(
        aiohttp_client: Any, make_config: Any) -> None:
    cfg = make_config(**{"limits.max_global_series_per_user": "1"})
    client = await aiohttp_client(build_app(cfg))
    results = await asyncio.gather(*[write(client, [s(UP, NOW - 1000 - i)]) for i in range(5)])
    assert [r.status for r in results] == [204] * 5


# -------------------------------------------------------------------- overrides

def test_overrides_precedence_and_accessors() -> None:
    o = Overrides(Limits(ingestion_rate=5.0))
    assert o.ingestion_rate("t") == 5.0 and o.source_of("t", "ingestion_rate") == "default"
    changed = o.set_layer("file", parse_overrides({"t": {"ingestion_rate": 7,
                                                         "max_query_length": "1d"}}, "f"))
    assert changed == {"t"}
    assert o.ingestion_rate("t") == 7.0 and o.max_query_length("t") == 86400
    o.set_layer("redis", parse_overrides({"t": {"ingestion_rate": "9"}}, "r"))
    assert o.ingestion_rate("t") == 9.0 and o.source_of("t", "ingestion_rate") == "redis"
    assert o.max_query_length("t") == 86400 and o.ingestion_rate("other") == 5.0
    assert o.tenants() == ["t"]
    for name in ("max_fetched_series_per_query", "max_fetched_chunks_per_query",
                 "max_query_length", "max_query_parallelism"):
        assert getattr(o, name)("t") == getattr(o.for_tenant("t"), name)


@pytest.mark.parametrize(("data", "message"), [
    ({"t": {"ingestion_rat": 1}}, "unknown setting f.t.ingestion_rat"),
    ({"t": {"ingestion_rate": "fast"}}, "invalid value 'fast' for f.t.ingestion_rate"),
    ({"t": {"max_query_length": -1}}, "f.t.max_query_length"),
    ({"a|b": {"ingestion_rate": 1}}, "invalid tenant id 'a|b' in f"),
    ({"t": [1]}, "f.t must be a mapping"),
], ids=["unknown", "bad-value", "negative", "bad-tenant", "not-mapping"])
def test_override_errors_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides(data, "f")
    assert message in str(err.value)


async def test_overrides_file_reloads(aiohttp_client: Any, make_config: Any,
                                      tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text("overrides:\n  team-a:\n    max_label_names_per_series: 1\n")
    cfg = make_config(**{"tenancy.multitenancy_enabled": "true",
                         "tenancy.overrides_file": str(path),
                         "tenancy.overrides_reload_period": "50ms"})
    client = await aiohttp_client(build_app(cfg))
    assert (await write(client, [s(UP)], "team-a")).status == 400
    assert (await write(client, [s(UP)], "team-b")).status == 204
    path.write_text("overrides:\n  team-b:\n    max_label_names_per_series: 1\n")
    deadline = time.monotonic() + 5
    while client.app[OVERRIDES].max_label_names_per_series("team-b") != 1:
        assert time.monotonic() < deadline, "overrides file not reloaded"
        await asyncio.sleep(0.05)
    assert (await write(client, [s(UP)], "team-a")).status == 204
    assert (await write(client, [s(UP)], "team-b")).status == 400
    path.write_text("overrides:\n  team-b:\n    nope: 1\n")  # a bad edit is not applied
    await asyncio.sleep(0.3)
    assert client.app[OVERRIDES].max_label_names_per_series("team-b") == 1


async def test_bad_overrides_file_stops_the_start(aiohttp_client: Any, make_config: Any,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("overrides:\n  t:\n    ingestion_rate: lots\n")
    with pytest.raises(ConfigError, match="ingestion_rate"):
        await aiohttp_client(build_app(make_config(**{"tenancy.overrides_file": str(path)})))


def test_limits_cli_with_overrides_file(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "o.yaml"
    flags = ["--set", f"tenancy.overrides_file={path}", "--data-dir", str(tmp_path)]
    assert cli("limits", "set", "team-a", "ingestion_rate", "50000", *flags) == 0
    assert cli("limits", "set", "team-a", "creation_grace_period", "1h", *flags) == 0
    assert "set ingestion_rate=50000 for tenant team-a in file" in capsys.readouterr().out
    assert yaml.safe_load(path.read_text()) == {"overrides": {"team-a": {
        "ingestion_rate": 50000, "creation_grace_period": "1h"}}}
    assert cli("limits", "show", "team-a", *flags) == 0
    out = capsys.readouterr().out
    assert "ingestion_rate: 50000  # file" in out
    assert "creation_grace_period: 1h  # file" in out
    assert "max_global_series_per_user: 150000  # default" in out
    assert cli("limits", "show", *flags) == 0
    assert "team-a:\n  ingestion_rate: 50000  # file" in capsys.readouterr().out
    assert cli("limits", "set", "team-a", "ingestion_rat", "1", *flags) == 2
    assert "unknown limit 'ingestion_rat'" in capsys.readouterr().err
    assert cli("limits", "set", "team-a", "ingestion_rate", "fast", *flags) == 2
    assert "invalid value 'fast'" in capsys.readouterr().err
    assert cli("limits", "set", "a|b", "ingestion_rate", "1", *flags) == 2
    assert cli("limits", "unset", "team-a", "ingestion_rate", *flags) == 0
    assert yaml.safe_load(path.read_text()) == {"overrides": {"team-a": {
        "creation_grace_period": "1h"}}}
    assert cli("limits", "unset", "team-a", *flags) == 0
    assert yaml.safe_load(path.read_text()) == {"overrides": {}}
    assert cli("limits", "set", "t", "ingestion_rate", "1", "--data-dir",
                     str(tmp_path)) == 2
    assert "nowhere to keep overrides" in capsys.readouterr().err


def test_sql_gateway_limits_per_tenant_cli(tmp_path: Path, capsys: Any) -> None:
    """The SQL gateway's limits are per-tenant limits too (limits.sql_*), whose defaults are
    the sql.* settings."""
    path = tmp_path / "o.yaml"
    flags = ["--set", f"tenancy.overrides_file={path}", "--data-dir", str(tmp_path),
             "--set", "sql.max_execution_time=3s"]
    assert cli("limits", "set", "team-a", "sql_max_execution_time", "5s", *flags) == 0
    assert cli("limits", "set", "team-a", "sql_max_memory_usage", "1GiB", *flags) == 0
    assert cli("limits", "set", "team-a", "sql_query_rate", "0", *flags) == 0
    assert yaml.safe_load(path.read_text()) == {"overrides": {"team-a": {
        "sql_max_execution_time": "5s", "sql_max_memory_usage": "1GiB", "sql_query_rate": 0}}}
    capsys.readouterr()
    assert cli("limits", "show", "team-a", *flags) == 0
    out = capsys.readouterr().out
    assert "sql_max_execution_time: 5s  # file" in out
    assert "sql_max_memory_usage: 1073741824  # file" in out
    assert "sql_query_rate: 0  # file" in out
    assert "sql_max_result_rows: 1000000  # default" in out
    assert cli("limits", "show", "team-b", *flags) == 0
    assert "sql_max_execution_time: 3s  # default" in capsys.readouterr().out  # sql.* setting
    assert cli("limits", "set", "team-a", "sql_max_execution_time", "forever", *flags) == 2


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, (10.0, 10.0)),
    ({"sql.max_execution_time": "5s"}, (5.0, 5.0)),
    ({"limits.sql_max_execution_time": "5s"}, (5.0, 5.0)),
    ({"limits.sql_max_execution_time": "0"}, (0.0, 0.0)),  # 0: no limit, as every limit
    ({"sql.max_execution_time": "5s", "limits.sql_max_execution_time": "5s"}, (5.0, 5.0)),
    ({"sql.max_execution_time": "5s", "limits.sql_max_execution_time": "6s"},
     "sql.max_execution_time=5.0 and limits.sql_max_execution_time=6.0 are the same setting"),
], ids=["defaults", "sql-key", "limits-key", "limits-key-off", "both-equal", "both-differ"])
def test_sql_keys_and_tenant_defaults_are_one_setting(settings: dict[str, str],
                                                      expected: Any) -> None:
    from gob_metrics.config import load_config

    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            load_config(env={}, overrides=settings)
        return
    cfg = load_config(env={}, overrides=settings)
    assert (cfg.sql.max_execution_time, cfg.limits.sql_max_execution_time) == expected


def test_hash_secret_cli(monkeypatch: Any, capsys: Any) -> None:
    import io

    from gob_metrics.tenants.auth import parse_secret_hash

    monkeypatch.setattr("sys.stdin", io.StringIO("tok\n"))
    assert cli("hash-secret", "--token") == 0
    assert parse_secret_hash(capsys.readouterr().out.strip()).verify(b"tok")


# -------------------------------------------------------------------- lookup cache (local)

@pytest.mark.skipif(bool(CLICKHOUSE_URL), reason="no in-process lookup cache on a ClickHouse "
                    "server without Redis (other replicas may write to it)")
async def test_local_lookup_cache_invalidated_by_new_series(gob_client: Any) -> None:
    cache = gob_client.app[LOOKUP_CACHE]
    matchers = [("__name__", "=", "up")]
    loads = []

    async def load() -> list[bytes]:
        loads.append(1)
        return [b"\x01" * 16]

    assert await cache.get_or_load("anonymous", matchers, load) == [b"\x01" * 16]
    assert await cache.get_or_load("anonymous", list(reversed(matchers)), load) == \
        [b"\x01" * 16]
    assert len(loads) == 1
    assert (await write(gob_client, [s(UP)])).status == 204  # a new series: new epoch
    await cache.get_or_load("anonymous", matchers, load)
    assert len(loads) == 2
    await cache.invalidate("anonymous")  # a deletion
    await cache.get_or_load("anonymous", matchers, load)
    assert len(loads) == 3
    assert (await cache.get("other", matchers)).series_ids is None


async def test_invalidate_tenant_after_deletion(gob_client: Any) -> None:
    """After a deletion, invalidate_tenant() makes a deleted series register again."""
    assert (await write(gob_client, [s(UP, NOW - 2000)])).status == 204
    storage = gob_client.app[STORAGE]
    await storage.execute(f"ALTER TABLE {storage.database}.series DELETE WHERE tenant = "
                          "'anonymous' SETTINGS mutations_sync = 1")
    assert await count(storage, "series") == 0
    registry = gob_client.app[SERIES_REGISTRY]
    await registry.invalidate_tenant("anonymous")
    assert registry.series_count("anonymous") == 0
    assert (await write(gob_client, [s(UP, NOW - 1000)])).status == 204
    assert await count(storage, "series") == 1
    assert registry.series_count("anonymous") == 1
