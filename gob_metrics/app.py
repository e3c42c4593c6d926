"""``build_app(config)``: the aiohttp application shared by the server and the tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gob_metrics import errors
from gob_metrics.config import Config
from gob_metrics.gateway import register as register_sql_gateway
from gob_metrics.keys import BATCHER, CONFIG, METRICS, SERIES_CACHE, SERIES_REGISTRY, STORAGE
from gob_metrics.metrics import Metrics
from gob_metrics.promql import add_routes as add_promql_routes
from gob_metrics.read import add_routes as add_read_routes
from gob_metrics.status import tsdb_status_handler
from gob_metrics.storage import StorageError, create_storage
from gob_metrics.storage.schema import migrate
from gob_metrics.tenancy import tenancy_middleware
from gob_metrics.tenants import setup as tenants_setup
from gob_metrics.write.batcher import Batcher
from gob_metrics.write.handler import write_handler
from gob_metrics.write.series import SeriesCache
from gob_metrics.write.writer import Writer

log = logging.getLogger("gob_metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Endpoints whose errors are plain text (remote_write senders log the body); the JSON API
# answers in Prometheus' {"status":"error"} shape.
_TEXT_ERROR_PATHS = ("/api/v1/write", "/api/v1/push", "/-/")


def _error_response(request: web.Request, exc: BaseException) -> web.Response:
    status = errors.http_status(exc)
    message = str(exc) if isinstance(exc, errors.GobError) else "internal server error"
    headers = errors.response_headers(exc)
    if request.path.startswith(_TEXT_ERROR_PATHS):
        return web.Response(status=status, text=message + "\n", headers=headers)
    error_type = exc.error_type if isinstance(exc, errors.GobError) else "internal"
    if isinstance(exc, StorageError):
        error_type = "execution"
    return web.json_response({"status": "error", "errorType": error_type, "error": message},
                             status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = request.match_info.route
    name = route.resource.canonical if route.resource is not None else "other"
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # aiohttp's own 404/405/413
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = errors.QueryCanceled.status  # the client went away (or shutdown)
        raise
    except errors.GobError as exc:
        if exc.status >= 500:
            log.warning("request failed", extra={"path": request.path, "error": str(exc)})
        response = _error_response(request, exc)
        status = response.status
        return response
    except Exception as exc:
        log.exception("unhandled error", extra={"path": request.path})
        return _error_response(request, exc)
    finally:
        metrics.requests.labels(name, str(status)).inc()
        metrics.request_duration.labels(name).observe(time.perf_counter() - start)


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    storage = create_storage(app[CONFIG])
    await storage.start()
    try:
        await migrate(storage, merge_selector_base=app[CONFIG].storage.samples_merge_selector_base)
        app[STORAGE] = storage
        yield
    finally:
        await storage.close()


async def _batcher_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    writer = Writer(app[STORAGE], app[SERIES_REGISTRY], app[METRICS],
                    series_capacity=cfg.write.series_cache_size)
    batcher = Batcher(
        writer,
        max_samples=cfg.write.batch_max_samples,
        min_samples=cfg.write.batch_min_samples,
        linger=cfg.write.batch_linger,
        max_age=cfg.write.batch_max_age,
        max_pending=cfg.write.max_pending_samples,
        queue_timeout=cfg.write.queue_timeout,
    )
    batcher.start()
    app[BATCHER] = batcher
    yield
    await batcher.close(cfg.server.shutdown_timeout)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="gob-metrics is healthy.\n")


async def ready(request: web.Request) -> web.Response:
    await request.app[STORAGE].ping()
    return web.Response(text="gob-metrics is ready.\n")


async def metrics_handler(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    m.pending_samples.set(request.app[BATCHER].pending_samples)
    m.series_cache_entries.set(len(request.app[SERIES_CACHE]))
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(config: Config) -> web.Application:
    """Create the application; storage opens and migrates when the app starts."""
    app = web.Application(middlewares=[error_middleware, tenancy_middleware],
                          client_max_size=config.write.max_request_bytes)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[SERIES_CACHE] = SeriesCache(config.write.series_cache_size)
    app.cleanup_ctx.append(_storage_ctx)
    tenants_setup.install(app)  # auth, limits, Redis layer: after storage, before the batcher
    app.cleanup_ctx.append(_batcher_ctx)
    app.router.add_post("/api/v1/write", write_handler)
    app.router.add_post("/api/v1/push", write_handler)
    app.router.add_get("/api/v1/status/tsdb", tsdb_status_handler)
    add_read_routes(app)
    add_promql_routes(app)
    register_sql_gateway(app)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app
