"""``gob-metrics sql "SELECT ..."``: run a gateway query from the command line.

Two ways to run it:

* ``--url http://host:9201``: send it to a running server's ``POST /api/v1/sql``; the
  server applies the caller's tenant, rate limit and concurrency as for any client.
* without ``--url``: open storage the way ``migrate`` does and run it in this process,
  through the same validation, tenant rewrite and ClickHouse limits as the server, as
  ``--tenant`` (default: the configured default tenant). The embedded engine allows one
  process per data directory, so with a server running on it, use ``--url``.

The result goes to stdout as it arrives; errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import urllib.error
import urllib.request
from typing import Any, BinaryIO

from gob_metrics.config import Config
from gob_metrics.errors import GobError
from gob_metrics.gateway.encode import FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sql`` subcommand's own arguments."""
    p.add_argument("query", help="the SELECT to run; '-' reads it from stdin")
    p.add_argument("--format", choices=sorted(FORMATS), default="json",
                   help="output format (default: json)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a {NAME:Type} parameter of the query (repeatable)")
    p.add_argument("--url", metavar="URL",
                   help="a running gob-metrics server, e.g. http://127.0.0.1:9201; without "
                        "it, storage is opened in this process")
    p.add_argument("--tenant", metavar="ID",
                   help="tenant to read as when storage is opened here "
                        "(default: the configured default tenant)")


def run_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run the ``sql`` subcommand; return the exit status."""
    text = sys.stdin.read() if args.query == "-" else args.query
    params: dict[str, Any] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"gob-metrics: --param {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        params[name] = value
    out = sys.stdout.buffer
    if args.url:
        return _remote(args.url, text, params, args.format, out)
    import asyncio

    return asyncio.run(_local(cfg, text, params, args.format, args.tenant, out))


def _default_tenant(cfg: Config) -> str:
    # The default tenant's key moves with the tenancy work (write. -> tenancy.).
    for section in ("tenancy", "write"):
        tenant = getattr(getattr(cfg, section, None), "default_tenant", None)
        if tenant:
            return str(tenant)
    return "anonymous"


async def _local(cfg: Config, text: str, params: dict[str, Any], fmt: str,
                 tenant: str | None, out: BinaryIO) -> int:
    from gob_metrics.gateway.execute import prepare, run
    from gob_metrics.storage import create_storage, schema

    storage = create_storage(cfg)
    await storage.start()
    try:
        await schema.migrate(storage)
        query = prepare(text, params, tenant or _default_tenant(cfg), cfg.sql,
                        storage.database, cluster=bool(cfg.storage.clickhouse.cluster))
        async with run(storage, query, fmt, cfg.sql) as result:
            try:
                async for chunk in result.chunks():
                    out.write(chunk)
            except GobError as exc:
                out.write(result.end(exc))
                out.flush()
                print(f"gob-metrics: {exc}", file=sys.stderr)
                return 1
            out.write(result.end())
            out.flush()
        return 0
    except GobError as exc:
        print(f"gob-metrics: {exc}", file=sys.stderr)
        return 1
    finally:
        await storage.close()


def _remote(url: str, text: str, params: dict[str, Any], fmt: str, out: BinaryIO) -> int:
    body = json.dumps({"query": text, "params": params, "format": fmt}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v1/sql", data=body, method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            while chunk := response.read(65536):
                out.write(chunk)
        out.flush()
        return 0
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        print(f"gob-metrics: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except http.client.IncompleteRead:
        out.flush()
        print("gob-metrics: the result was cut off: the query failed while it was being "
              "sent (see the server log)", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"gob-metrics: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
