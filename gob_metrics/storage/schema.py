"""Table names and the migration runner: numbered SQL files in ``sql/`` applied in order
and recorded in ``schema_migrations``.

Identifiers reach SQL only from here (the configured database is validated as an
identifier at start); everything else is bound as a query parameter.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from gob_metrics.storage.base import Storage, StorageError

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

SAMPLES = "samples"
SERIES = "series"
METADATA = "metadata"
MIGRATIONS = "schema_migrations"
MIGRATION_STEPS = "schema_migration_steps"

#: A statement running longer than this logs that it is still running, and again after each
#: further such period (a MATERIALIZE over a large table can take minutes).
PROGRESS_EVERY = 15.0

_MACRO = re.compile(r"\{(db|on_cluster|cluster_only|local:[a-z_]+|engine:[^{}]+"
                    r"|distributed:[a-z_]+:[^{}]+)\}")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _split(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def expand(statement: str, database: str, cluster: str) -> str:
    """Expand the schema macros of one statement (see sql/001_initial_schema.sql); a
    statement holding ``{cluster_only}`` expands to "" when no cluster is configured."""
    if "{cluster_only}" in statement and not cluster:
        return ""
    table = ""

    def sub(m: re.Match[str]) -> str:
        nonlocal table
        macro = m.group(1)
        if macro == "db":
            return database
        if macro == "on_cluster":
            return f"ON CLUSTER {cluster}" if cluster else ""
        if macro == "cluster_only":
            return ""
        kind, _, arg = macro.partition(":")
        if kind == "local":
            table = arg + ("_local" if cluster else "")
            return table
        if kind == "engine":
            if not cluster:
                return arg
            name, _, rest = arg.partition("(")
            inner = rest.rstrip(")")
            zk = f"'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'"
            return f"Replicated{name}({zk}{', ' + inner if inner else ''})"
        # distributed:NAME:KEY
        name, _, key = arg.partition(":")
        if not cluster:
            return ""
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} "
            f"AS {database}.{name}_local "
            f"ENGINE = Distributed({cluster}, {database}, {name}_local, {key})"
        )

    return _MACRO.sub(sub, statement).strip()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order."""
    out: list[Migration] = []
    for path in sorted(sql_dir.glob("*.sql")):
        m = re.fullmatch(r"(\d+)_([a-z0-9_]+)\.sql", path.name)
        if not m:
            raise ValueError(f"migration file {path} is not named NNN_name.sql")
        out.append(Migration(int(m.group(1)), m.group(2), tuple(_split(path.read_text()))))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {sql_dir}: {versions}")
    return out


async def migrate(storage: Storage, sql_dir: Path = SQL_DIR,
                  merge_selector_base: int = 0) -> list[int]:
    """Apply the migrations not yet recorded, then the samples table's merge setting
    (``storage.samples_merge_selector_base``, 0 leaves it); return the versions applied.

    Each statement of a migration is recorded in ``schema_migration_steps`` once it has
    run, so a migration interrupted half way (a crash, a storage error) continues where it
    stopped at the next start instead of repeating statements that cannot run twice (such
    as ``MATERIALIZE COLUMN`` once the column's default is gone)."""
    db, cluster = storage.database, storage.cluster
    on_cluster = f"ON CLUSTER {cluster}" if cluster else ""
    await storage.execute(f"CREATE DATABASE IF NOT EXISTS {db} {on_cluster}")
    await storage.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS} {on_cluster} "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    await storage.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATION_STEPS} {on_cluster} "
        "(version UInt32, statement UInt32, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY (version, statement)"
    )
    done_tbl = await storage.query(f"SELECT DISTINCT version FROM {db}.{MIGRATIONS}")
    done = set(done_tbl.column("version").to_pylist()) if done_tbl.num_rows else set()
    steps_tbl = await storage.query(
        f"SELECT DISTINCT version, statement FROM {db}.{MIGRATION_STEPS}")
    steps = set(zip(steps_tbl.column("version").to_pylist(),
                    steps_tbl.column("statement").to_pylist(), strict=True))
    applied: list[int] = []
    for mig in load_migrations(sql_dir):
        if mig.version in done:
            continue
        for i, stmt in enumerate(mig.statements):
            if (mig.version, i) in steps:
                continue
            sql = expand(stmt, db, cluster)
            if sql:
                await _execute_logged(storage, sql, mig, i)
            await storage.execute(
                f"INSERT INTO {db}.{MIGRATION_STEPS} (version, statement) "
                "SELECT {v:UInt32}, {i:UInt32}", {"v": mig.version, "i": i})
        await storage.execute(
            f"INSERT INTO {db}.{MIGRATIONS} (version, name) SELECT {{v:UInt32}}, {{n:String}}",
            {"v": mig.version, "n": mig.name},
        )
        log.info("migration applied", extra={"version": mig.version, "migration": mig.name})
        applied.append(mig.version)
    if merge_selector_base:
        await _set_merge_selector_base(storage, merge_selector_base)
    return applied


async def _execute_logged(storage: Storage, sql: str, mig: Migration, index: int) -> None:
    """Run one migration statement; a slow one logs every PROGRESS_EVERY seconds, so a
    start that is busy migrating a large table is not mistaken for a hang."""
    start = time.monotonic()
    task = asyncio.ensure_future(storage.execute(sql))
    while True:
        done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY)
        if done:
            task.result()
            return
        log.info("migration statement still running", extra={
            "version": mig.version, "migration": mig.name,
            "statement": f"{index + 1}/{len(mig.statements)}",
            "seconds": round(time.monotonic() - start),
            "sql": " ".join(sql.split())[:120]})


async def _set_merge_selector_base(storage: Storage, base: int) -> None:
    """A table setting, not a migration: it is tuning, re-applied at each start so that a
    changed value takes effect, and older servers without it keep working."""
    db, cluster = storage.database, storage.cluster
    table = SAMPLES + ("_local" if cluster else "")
    on_cluster = f"ON CLUSTER {cluster}" if cluster else ""
    try:
        await storage.execute(f"ALTER TABLE {db}.{table} {on_cluster} "
                              f"MODIFY SETTING merge_selector_base = {int(base)}")
    except StorageError as exc:
        log.warning("storage.samples_merge_selector_base not applied (the server keeps its "
                    "default)", extra={"error": str(exc)})
