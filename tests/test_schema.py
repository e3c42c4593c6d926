"""Migrations and the DDL macros for single servers and clusters."""

from __future__ import annotations

from typing import Any

import pytest

from gob_metrics.keys import STORAGE
from gob_metrics.storage.schema import expand, load_migrations, migrate

CREATE = ("CREATE TABLE IF NOT EXISTS {db}.{local:samples} {on_cluster} (x UInt8) "
          "ENGINE = {engine:ReplacingMergeTree()} ORDER BY x")


def test_expand_single_server() -> None:
    assert expand(CREATE, "gob", "") == (
        "CREATE TABLE IF NOT EXISTS gob.samples  (x UInt8) "
        "ENGINE = ReplacingMergeTree() ORDER BY x")
    assert expand("{distributed:samples:sipHash64(tenant, series_id)}", "gob", "") == ""


def test_expand_cluster() -> None:
    assert expand(CREATE, "gob", "main") == (
        "CREATE TABLE IF NOT EXISTS gob.samples_local ON CLUSTER main (x UInt8) "
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/gob/samples_local', "
        "'{replica}') ORDER BY x")
    assert expand("{distributed:samples:sipHash64(tenant, series_id)}", "gob", "main") == (
        "CREATE TABLE IF NOT EXISTS gob.samples ON CLUSTER main AS gob.samples_local "
        "ENGINE = Distributed(main, gob, samples_local, sipHash64(tenant, series_id))")
    versioned = expand("ENGINE = {engine:ReplacingMergeTree(updated_at)}", "gob", "c")
    assert versioned.endswith("'{replica}', updated_at)")


def test_cluster_only_statements() -> None:
    stmt = "{cluster_only}ALTER TABLE {db}.samples {on_cluster} DROP COLUMN IF EXISTS value"
    assert expand(stmt, "gob", "") == ""
    assert expand(stmt, "gob", "main") == (
        "ALTER TABLE gob.samples ON CLUSTER main DROP COLUMN IF EXISTS value")


def test_migration_files_are_ordered_and_expand_fully() -> None:
    migs = load_migrations()
    assert [m.version for m in migs] == sorted(m.version for m in migs)
    for m in migs:
        for stmt in m.statements:
            for cluster in ("", "c1"):
                sql = expand(stmt, "gob", cluster)
                assert "{db}" not in sql and "{local:" not in sql and "{engine:" not in sql


async def test_migrate_is_idempotent(gob_client: Any) -> None:
    storage = gob_client.app[STORAGE]
    assert await migrate(storage) == []
    t = await storage.query(f"SELECT version, name FROM {storage.database}.schema_migrations")
    assert sorted(t.to_pylist(), key=lambda r: r["version"]) == [
        {"version": 1, "name": "initial_schema"}, {"version": 2, "name": "value_codecs"},
        {"version": 3, "name": "decimal_values"}]
    codecs = await storage.query(
        "SELECT name, compression_codec AS codec, default_kind AS kind FROM system.columns "
        "WHERE database = {db:String} AND table = 'samples' ORDER BY name",
        {"db": storage.database})
    assert {r["name"]: (r["codec"], r["kind"]) for r in codecs.to_pylist()} == {
        "series_id": ("CODEC(ZSTD(1))", ""), "tenant": ("", ""),
        "timestamp": ("CODEC(DoubleDelta, ZSTD(1))", ""),
        "mantissa": ("CODEC(Delta(8), T64('bit'), ZSTD(1))", ""),
        "scale": ("CODEC(ZSTD(1))", ""),
        "value": ("", "ALIAS")}


async def _merge_selector_base(storage: Any) -> str:
    t = await storage.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = "
        "'samples'", {"db": storage.database})
    full = t.column("engine_full")[0].as_py()
    return full.split("merge_selector_base = ")[1].split(",")[0] if "merge_selector_base" \
        in full else "default"


async def test_samples_merge_selector_base_applied_at_start(gob_client: Any) -> None:
    storage = gob_client.app[STORAGE]
    assert await _merge_selector_base(storage) == "20"  # storage.samples_merge_selector_base
    await migrate(storage, merge_selector_base=8)  # a changed value takes effect at start
    assert await _merge_selector_base(storage) == "8"
    await migrate(storage)  # 0: left as it is
    assert await _merge_selector_base(storage) == "8"


async def test_an_interrupted_migration_continues_where_it_stopped(tmp_path: Any) -> None:
    from gob_metrics.storage.base import StorageError
    from gob_metrics.storage.embedded import EmbeddedStorage

    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_steps.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db}.t (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
        "ALTER TABLE {db}.t ADD COLUMN y UInt8;\n"  # cannot run twice
        "INSERT INTO {db}.later (x) VALUES (1);\n")  # fails until `later` exists
    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        with pytest.raises(StorageError):
            await migrate(storage, sql_dir=sql_dir)
        await storage.execute("CREATE TABLE gob.later (x UInt8) ENGINE = MergeTree ORDER BY x")
        assert await migrate(storage, sql_dir=sql_dir) == [1]  # ADD COLUMN is not repeated
        assert await migrate(storage, sql_dir=sql_dir) == []
        t = await storage.query("SELECT count() AS n FROM gob.later")
        assert t.column("n").to_pylist() == [1]
    finally:
        await storage.close()


async def test_a_slow_migration_statement_logs_that_it_is_running(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gob_metrics.storage import schema
    from gob_metrics.storage.embedded import EmbeddedStorage

    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_slow.sql").write_text("SELECT sleep(1.5);\nSELECT 1;\n")
    monkeypatch.setattr(schema, "PROGRESS_EVERY", 0.4)
    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        with caplog.at_level(logging.INFO, logger="gob_metrics.storage.schema"):
            assert await migrate(storage, sql_dir=sql_dir) == [1]
    finally:
        await storage.close()
    running = [r for r in caplog.records if r.getMessage() == "migration statement still running"]
    assert len(running) >= 2
    assert {r.statement for r in running} == {"1/2"}  # type: ignore[attr-defined]
    assert running[0].sql == "SELECT sleep(1.5)"  # type: ignore[attr-defined]
