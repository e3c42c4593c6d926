"""The optional Redis connection every replica shares, and what happens when it is gone.

Redis is never on the durability path: every user of this class has a local fallback.
A failed call raises :class:`RedisUnavailable` to its caller (which falls back) and marks
Redis down; while it is down no call is attempted (no request waits on a dead socket), a
monitor probes it every ``redis.retry_interval`` and, once it answers, runs the recovery
callbacks (reload overrides, push the series registered meanwhile). Going down logs one
warning (then at most one per ``_WARN_EVERY`` seconds) and is visible as ``gob_redis_up 0``
and ``gob_redis_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from gob_metrics.config import RedisConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
_WARN_EVERY = 30.0
_MAX_CONNECTIONS = 64  # per process; one is held by the overrides subscription


class RedisUnavailable(Exception):
    """Redis is not configured, down, or failed this call: use the local fallback."""


class RedisLayer:
    """A Redis client with health tracking, or a stand-in that is never available."""

    def __init__(self, cfg: RedisConfig, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.prefix = cfg.key_prefix
        self.enabled = bool(cfg.url)
        self.client: aredis.Redis | None = None
        self.up = False
        self._last_warning = -_WARN_EVERY
        self._suppressed = 0
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        #: coroutines run (as tasks) each time Redis comes back, and once at start if up.
        self.on_recover: list[Callable[[], Awaitable[None]]] = []
        self.up_gauge = Gauge("gob_redis_up",
                              "1 when the configured Redis answers; 0 when local fallbacks are "
                              "in use or no Redis is configured.", registry=registry)
        self.errors = Counter("gob_redis_errors_total",
                              "Redis calls that failed and fell back to local state, by "
                              "operation.", ["operation"], registry=registry)
        self.skipped = Counter("gob_redis_fallbacks_total",
                               "Operations served by a local fallback because Redis was down, "
                               "by operation.", ["operation"], registry=registry)

    def key(self, *parts: str) -> str:
        """``<redis.key_prefix>part:part...``."""
        return self.prefix + ":".join(parts)

    def script(self, lua: str) -> AsyncScript:
        """A Lua script run by EVALSHA, re-loaded by the client after a Redis restart."""
        if self.client is None:
            raise RuntimeError("redis layer is not started")
        return self.client.register_script(lua)

    # -- lifecycle

    async def start(self) -> None:
        if not self.enabled:
            return
        pool = aredis.BlockingConnectionPool.from_url(
            self.cfg.url, max_connections=_MAX_CONNECTIONS,
            # Waiting for a free connection under load is not an outage: wait longer.
            timeout=max(1.0, 4 * self.cfg.timeout),
            socket_timeout=self.cfg.timeout,
            # A burst of new connections on a busy event loop needs more than one call's
            # timeout; a dead host still costs only one slow connect before it is skipped.
            socket_connect_timeout=max(1.0, self.cfg.timeout),
            # No hidden retries: a failure falls back at once and the monitor probes.
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.client = aredis.Redis(connection_pool=pool)
        self._set_up(await self._probe(), at_start=True)
        self._monitor = asyncio.create_task(self._watch(), name="redis-monitor")

    async def close(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.client.aclose()

    # -- calls

    @property
    def available(self) -> bool:
        return self.enabled and self.up and self.client is not None

    async def call(self, operation: str, fn: Callable[[aredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)``; raise RedisUnavailable (after bookkeeping) if it cannot."""
        if not self.available or self.client is None:
            if self.enabled:
                self.skipped.labels(operation).inc()
            raise RedisUnavailable(operation)
        try:
            return await fn(self.client)
        except ResponseError as exc:
            # Redis answered: a bug or a misconfiguration (wrong key type), not an outage.
            self.errors.labels(operation).inc()
            self._warn(f"redis {operation} failed: {exc}", operation)
            raise RedisUnavailable(operation) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors.labels(operation).inc()
            self._set_up(False, reason=f"{operation}: {exc.__class__.__name__}: {exc}")
            raise RedisUnavailable(operation) from exc

    # -- health

    async def _probe(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.cfg.retry_interval)
            if not self.up and await self._probe():
                self._set_up(True)

    def _set_up(self, up: bool, reason: str = "", at_start: bool = False) -> None:
        was = self.up
        self.up = up
        self.up_gauge.set(1 if up else 0)
        if up and (not was or at_start):
            if not at_start:
                log.info("redis is back: shared caches, rate limits and overrides resume",
                            extra={"url": _safe_url(self.cfg.url)})
            for callback in self.on_recover:
                asyncio.get_running_loop().create_task(_logged(callback()))
        elif not up and (was or at_start):
            self._warn("redis unavailable: using local caches, per-replica rate limits and "
                       "the last known overrides until it is back", "connect",
                       reason or "no answer to PING")

    def _warn(self, message: str, operation: str, reason: str = "") -> None:
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY:
            self._suppressed += 1
            return
        log.warning(message, extra={"url": _safe_url(self.cfg.url), "operation": operation,
                                    "reason": reason, "suppressed": self._suppressed})
        self._last_warning = now
        self._suppressed = 0


async def _logged(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except RedisUnavailable:
        pass
    except Exception:
        log.exception("redis recovery task failed")


def _safe_url(url: str) -> str:
    """The URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return scheme + sep + rest
