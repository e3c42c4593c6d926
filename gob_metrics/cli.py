"""The ``gob-metrics`` command: serve, migrate, optimize."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gob_metrics import __version__
from gob_metrics.config import Config, load_config
from gob_metrics.errors import ConfigError
from gob_metrics.gateway import cli as sql_cli
from gob_metrics.logs import setup_logging
from gob_metrics.storage import StorageError, create_storage

log = logging.getLogger("gob_metrics")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--data-dir", metavar="DIR",
                   help="data directory of the embedded engine (server.data_dir)")
    p.add_argument("--clickhouse-url", metavar="URL",
                   help="use a ClickHouse server instead of the embedded engine: "
                        "clickhouse://user:password@host:9000/db (storage.clickhouse.url)")
    p.add_argument("--cluster", metavar="NAME",
                   help="ClickHouse cluster for ON CLUSTER DDL (storage.clickhouse.cluster)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="server.log_level")
    p.add_argument("--redis-url", metavar="URL",
                   help="share caches, rate limits and overrides through Redis: "
                        "redis://host:6379/0 (redis.url)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any configuration key, e.g. --set write.batch_max_age=100ms")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gob-metrics",
        description="Prometheus-compatible long-term metrics backend on ClickHouse.")
    p.add_argument("--version", action="version", version=f"gob-metrics {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the HTTP server",
                           description="Run the HTTP server (remote_write, status, metrics).")
    serve.add_argument("--listen", metavar="HOST:PORT", help="server.listen")
    serve.add_argument("--multitenancy", action="store_const", const="true", default=None,
                       help="take the tenant from X-Scope-OrgID (tenancy.multitenancy_enabled)")
    _common(serve)
    mig = sub.add_parser("migrate", help="apply the numbered SQL migrations and exit")
    _common(mig)
    opt = sub.add_parser("optimize",
                         help="merge all parts now (OPTIMIZE FINAL), e.g. before measuring disk")
    _common(opt)
    sql = sub.add_parser("sql", help="run a read-only SQL query over one tenant's data",
                         description="Run a SELECT through the SQL gateway, here or on a "
                         "running server (--url); see docs/sql-gateway.md.")
    _common(sql)
    sql_cli.add_arguments(sql)
    limits = sub.add_parser("limits", help="show or change per-tenant limits at runtime",
                            description="Per-tenant limit overrides, kept in Redis (redis.url; "
                            "every replica applies a change within a second) or else in "
                            "tenancy.overrides_file (reloaded on change).")
    lsub = limits.add_subparsers(dest="limits_command", required=True, metavar="ACTION")
    lset = lsub.add_parser("set", help="set one limit of one tenant")
    lset.add_argument("tenant")
    lset.add_argument("key", help="limit name, e.g. ingestion_rate")
    lset.add_argument("value", help="e.g. 50000, 10m, true")
    _common(lset)
    lunset = lsub.add_parser("unset", help="remove one (or every) override of one tenant")
    lunset.add_argument("tenant")
    lunset.add_argument("key", nargs="?", default="", help="limit name; omit for all")
    _common(lunset)
    lshow = lsub.add_parser("show", help="effective limits of a tenant, or defaults and "
                            "every tenant's overrides")
    lshow.add_argument("tenant", nargs="?")
    _common(lshow)
    hs = sub.add_parser("hash-secret", help="hash a bearer token or password for "
                        "tenancy.credentials (reads it from stdin)")
    hs.add_argument("--token", action="store_true",
                    help="a random bearer token: sha256 (default: salted pbkdf2 for passwords)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. write.batch_max_age=1s")
        out[key.strip()] = value
    flag_keys = {"data_dir": "server.data_dir", "clickhouse_url": "storage.clickhouse.url",
                 "cluster": "storage.clickhouse.cluster", "log_level": "server.log_level",
                 "listen": "server.listen", "redis_url": "redis.url",
                 "multitenancy": "tenancy.multitenancy_enabled"}
    for attr, key in flag_keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    return out


def _serve(cfg: Config) -> int:
    from aiohttp import web

    from gob_metrics.app import build_app

    app = build_app(cfg)
    host, _, port = cfg.server.listen.rpartition(":")

    async def started(app: web.Application) -> None:
        from gob_metrics.keys import STORAGE

        storage = app[STORAGE]
        where = (cfg.server.data_dir if storage.engine == "embedded"
                 else cfg.storage.clickhouse.url.split("@")[-1])
        log.info("gob-metrics started", extra={
            "listen": cfg.server.listen, "engine": storage.engine, "data": where,
            "database": storage.database, "version": __version__})

    async def stopped(app: web.Application) -> None:
        log.info("gob-metrics stopped: pending batches flushed")

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    web.run_app(app, host=host.strip("[]") or "127.0.0.1", port=int(port), print=None,
                access_log=None, shutdown_timeout=cfg.server.shutdown_timeout,
                handle_signals=True)
    return 0


async def _with_storage(cfg: Config, action: str) -> None:
    from gob_metrics.storage import schema

    storage = create_storage(cfg)
    await storage.start()
    try:
        applied = await schema.migrate(
            storage, merge_selector_base=cfg.storage.samples_merge_selector_base)
        if action == "migrate":
            print(f"migrations applied: {applied or 'none (schema is up to date)'}")
        elif action == "optimize":
            for table in (schema.SERIES, schema.METADATA, schema.SAMPLES):
                await storage.execute(f"OPTIMIZE TABLE {storage.database}.{table} FINAL")
            print("optimized: all parts merged")
    finally:
        await storage.close()


def _limits(cfg: Config, args: argparse.Namespace) -> None:
    from gob_metrics.tenants.overrides import set_override, show_overrides

    if args.limits_command == "show":
        print(show_overrides(cfg, args.tenant))
        return
    value = args.value if args.limits_command == "set" else None
    where = set_override(cfg, args.tenant, args.key, value)
    what = f"{args.key}={value}" if value is not None else (args.key or "every override")
    verb = "set" if value is not None else "removed"
    print(f"{verb} {what} for tenant {args.tenant} in {where}")


def _hash_secret(args: argparse.Namespace) -> None:
    from gob_metrics.tenants.auth import hash_secret

    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise ConfigError("hash-secret: give the secret on stdin, e.g. "
                          "printf %s \"$TOKEN\" | gob-metrics hash-secret --token")
    print(hash_secret(secret, "sha256" if args.token else "pbkdf2_sha256"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "hash-secret":
            _hash_secret(args)
            return 0
        cfg = load_config(args.config, overrides=_overrides(args))
        setup_logging(cfg.server.log_level, cfg.server.log_format)
        if args.command == "serve":
            return _serve(cfg)
        if args.command == "sql":
            return sql_cli.run_command(cfg, args)
        if args.command == "limits":
            _limits(cfg, args)
            return 0
        asyncio.run(_with_storage(cfg, args.command))
        return 0
    except ConfigError as exc:
        print(f"gob-metrics: configuration error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"gob-metrics: storage error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gob-metrics: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
