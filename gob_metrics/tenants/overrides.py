"""Runtime per-tenant overrides: a YAML file reloaded when it changes, and a Redis hash
whose changes are announced on a pub/sub channel so every replica applies them at once.

The file (``tenancy.overrides_file``), Mimir's runtime-config shape::

    overrides:
      team-a:
        ingestion_rate: 50000
        max_global_series_per_user: 1000000

In Redis, hash ``<prefix>overrides`` maps a tenant to a JSON object of limit -> value
(as text, parsed like the config file's values); every change is published on channel
``<prefix>overrides``. ``gob-metrics limits set`` writes there (or, without Redis, to
the file). A bad file or entry is logged and ignored, keeping the last good values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter

from gob_metrics.errors import ConfigError
from gob_metrics.tenants.limits import Overrides, TenantValues, parse_overrides
from gob_metrics.tenants.redis_layer import RedisLayer, RedisUnavailable

log = logging.getLogger(__name__)

# KEYS[1]: the overrides hash. ARGV: channel, tenant, limit ('' = every limit), value
# ('' = remove). Read-modify-write in one script, so concurrent `limits set` never lose one.
SET_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[2])
local t = {}
if cur then t = cjson.decode(cur) end
if ARGV[3] == '' then
  t = {}
elseif ARGV[4] == '' then
  t[ARGV[3]] = nil
else
  t[ARGV[3]] = ARGV[4]
end
if next(t) == nil then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(t))
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
_FULL_RELOAD_EVERY = 10.0  # seconds; a safety net under pub/sub


def read_overrides_file(path: str | os.PathLike[str]) -> dict[str, TenantValues]:
    """Parse an overrides file; raise ConfigError naming the file and the bad key."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read overrides file {p}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"overrides file {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"overrides"}:
        raise ConfigError(f"overrides file {p} must hold one key, overrides: "
                          "{tenant: {limit: value}}")
    return parse_overrides(data.get("overrides"), f"overrides file {p}: overrides")


def parse_redis_overrides(raw: dict[bytes, bytes]) -> dict[str, TenantValues]:
    """Parse the Redis hash; entries that do not parse are logged and skipped."""
    out: dict[str, TenantValues] = {}
    for tenant_b, value_b in raw.items():
        tenant = tenant_b.decode(errors="replace")
        try:
            values = json.loads(value_b)
            out.update(parse_overrides({tenant: values}, "redis overrides"))
        except (ValueError, ConfigError) as exc:
            log.error("ignoring invalid runtime overrides in redis",
                      extra={"tenant": tenant, "error": str(exc)})
    return out


class OverridesSync:
    """Keeps ``overrides``' file and redis layers current (two background tasks)."""

    def __init__(self, overrides: Overrides, redis: RedisLayer, registry: CollectorRegistry,
                 path: str, period: float) -> None:
        self.overrides = overrides
        self.redis = redis
        self.path = path
        self.period = period
        self._file_sig: tuple[int, int, int] | None = None
        self._file_digest = b""
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = Counter("gob_overrides_reloads_total",
                               "Reloads of per-tenant overrides, by source (file, redis) and "
                               "result (success, failure).", ["source", "result"],
                               registry=registry)

    @property
    def hash_key(self) -> str:
        return self.redis.key("overrides")

    @property
    def channel(self) -> str:
        return self.redis.key("overrides")

    async def start(self) -> None:
        """Load the file (a bad file stops the start) and Redis (if up); start watching."""
        if self.path:
            self.overrides.set_layer("file", read_overrides_file(self.path))
            self._file_sig = _signature(self.path)
            self._file_digest = _digest(self.path)
            self._tasks.append(asyncio.create_task(self._watch_file(), name="overrides-file"))
        if self.redis.enabled:
            with contextlib.suppress(RedisUnavailable):
                await self.load_redis()
            self.redis.on_recover.append(self.load_redis)
            self._tasks.append(asyncio.create_task(self._watch_redis(), name="overrides-redis"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- file

    def reload_file(self) -> bool:
        """Reload the file if its content changed; return whether it was applied."""
        sig = _signature(self.path)
        if sig == self._file_sig:
            return False
        self._file_sig = sig
        digest = _digest(self.path)
        if digest == self._file_digest:
            return False
        try:
            values = read_overrides_file(self.path)
        except ConfigError as exc:
            self.reloads.labels("file", "failure").inc()
            log.error("overrides file not applied; keeping the previous overrides",
                      extra={"error": str(exc)})
            return False
        self._file_digest = digest
        self.overrides.set_layer("file", values)
        self.reloads.labels("file", "success").inc()
        return True

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.reload_file()
            except Exception:
                log.exception("overrides file watcher failed")

    # -- redis

    async def load_redis(self) -> None:
        raw = await self.redis.call("overrides_load", lambda c: c.hgetall(self.hash_key))
        self.overrides.set_layer("redis", parse_redis_overrides(raw))
        self.reloads.labels("redis", "success").inc()

    async def _watch_redis(self) -> None:
        """Subscribe; reload on every message, and fully every few seconds regardless."""
        while True:
            if not self.redis.available or self.redis.client is None:
                await asyncio.sleep(self.redis.cfg.retry_interval)
                continue
            pubsub = self.redis.client.pubsub()
            try:
                await self.redis.call("overrides_subscribe",
                                      lambda _c, ps=pubsub: ps.subscribe(self.channel))
                await self.load_redis()  # anything changed while not subscribed
                last = time.monotonic()
                while True:
                    msg = await self.redis.call(
                        "overrides_watch", lambda _c, ps=pubsub: ps.get_message(
                            ignore_subscribe_messages=True, timeout=0.2))
                    if msg is not None or time.monotonic() - last > _FULL_RELOAD_EVERY:
                        await self.load_redis()
                        last = time.monotonic()
                    elif msg is None:
                        await asyncio.sleep(0.05)
            except RedisUnavailable:
                self.reloads.labels("redis", "failure").inc()
                await asyncio.sleep(self.redis.cfg.retry_interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: str) -> bytes:
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return b""


# ---------------------------------------------------------------- gob-metrics limits ...

def set_override(cfg: Any, tenant: str, name: str, value: str | None) -> str:
    """Set (or with ``value=None`` remove; with ``name=""`` remove all of) one tenant's
    override, in Redis when configured, else in the overrides file. Returns where."""
    from gob_metrics.tenants.auth import tenant_id_problem
    from gob_metrics.tenants.limits import LIMIT_NAMES, parse_tenant_limits

    problem = tenant_id_problem(tenant)
    if problem is not None:
        raise ConfigError(f"invalid tenant id {tenant!r}: {problem}")
    if name and name not in LIMIT_NAMES:
        raise ConfigError(f"unknown limit {name!r}; known limits: {', '.join(LIMIT_NAMES)}")
    if name and value is not None:
        parse_tenant_limits({name: value}, f"limits of tenant {tenant}")
    if cfg.redis.url:
        import redis

        client = redis.Redis.from_url(cfg.redis.url, socket_timeout=5)
        try:
            script = client.register_script(SET_LUA)
            prefix = cfg.redis.key_prefix
            script(keys=[prefix + "overrides"],
                   args=[prefix + "overrides", tenant, name, "" if value is None else value])
        except redis.RedisError as exc:
            raise ConfigError(f"cannot write overrides to redis.url: {exc}") from exc
        finally:
            client.close()
        return "redis"
    if not cfg.tenancy.overrides_file:
        raise ConfigError("nowhere to keep overrides: set redis.url or tenancy.overrides_file")
    path = Path(cfg.tenancy.overrides_file)
    data: dict[str, Any] = {}
    if path.exists():
        read_overrides_file(path)  # refuse to edit a file that is already broken
        data = yaml.safe_load(path.read_text()) or {}
    tenants = data.setdefault("overrides", {}) or {}
    data["overrides"] = tenants
    entry = tenants.setdefault(tenant, {}) or {}
    tenants[tenant] = entry
    if not name:
        tenants.pop(tenant, None)
    elif value is None:
        entry.pop(name, None)
        if not entry:
            tenants.pop(tenant, None)
    else:
        entry[name] = yaml.safe_load(value)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=True))
    os.replace(tmp, path)
    return f"file {path}"


def show_overrides(cfg: Any, tenant: str | None) -> str:
    """Text for ``gob-metrics limits show [TENANT]``: effective values and their source."""
    from gob_metrics.tenants.limits import LIMIT_NAMES, format_limit

    overrides = Overrides(cfg.limits)
    notes = []
    if cfg.tenancy.overrides_file and Path(cfg.tenancy.overrides_file).exists():
        overrides.set_layer("file", read_overrides_file(cfg.tenancy.overrides_file))
    if cfg.redis.url:
        import redis

        client = redis.Redis.from_url(cfg.redis.url, socket_timeout=5)
        try:
            overrides.set_layer("redis", parse_redis_overrides(
                client.hgetall(cfg.redis.key_prefix + "overrides")))
        except redis.RedisError as exc:
            notes.append(f"# redis overrides not shown: {exc}")
        finally:
            client.close()
    lines = list(notes)
    if tenant is None:
        lines.append("# defaults (the limits: section)")
        lines += [f"{n}: {format_limit(n, getattr(cfg.limits, n))}" for n in LIMIT_NAMES]
        lines.append("# tenants with overrides")
        for t in overrides.tenants():
            lines.append(f"{t}:")
            for n in LIMIT_NAMES:
                source = overrides.source_of(t, n)
                if source != "default":
                    value = getattr(overrides.for_tenant(t), n)
                    lines.append(f"  {n}: {format_limit(n, value)}  # {source}")
        return "\n".join(lines)
    limits = overrides.for_tenant(tenant)
    lines.append(f"# limits of tenant {tenant}")
    lines += [f"{n}: {format_limit(n, getattr(limits, n))}  # {overrides.source_of(tenant, n)}"
              for n in LIMIT_NAMES]
    return "\n".join(lines)

