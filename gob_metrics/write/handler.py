"""POST /api/v1/write (alias /api/v1/push): negotiate HTTP, run the write pipeline,
answer. Errors are raised; the app's middleware maps them to statuses."""

from __future__ import annotations

import time

from aiohttp import web

from gob_metrics.errors import BadRequest, PayloadTooLarge, TooManyRequests, UnsupportedMediaType
from gob_metrics.keys import (
    BATCHER,
    CONFIG,
    METRICS,
    OVERRIDES,
    RATE_LIMITER,
    SERIES_CACHE,
    SERIES_REGISTRY,
)
from gob_metrics.metrics import Metrics
from gob_metrics.tenancy import request_tenant
from gob_metrics.write.decode import decompress, parse_write_request
from gob_metrics.write.prepare import Prepared, WriteLimits, prepare

REASON_RATE_LIMITED = "rate_limited"  # Mimir's discard reason for ingestion_rate

_PROTOBUF_TYPES = {"application/x-protobuf", "application/octet-stream"}


def check_headers(request: web.Request) -> None:
    """415 unless the body is a snappy-compressed remote_write 1.0 protobuf."""
    encoding = request.headers.get("Content-Encoding", "")
    if encoding.strip().lower() != "snappy":
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {encoding!r}: remote_write bodies must be "
            "snappy-compressed (Content-Encoding: snappy)"
        )
    ctype = request.headers.get("Content-Type")
    if ctype is None:
        return  # some senders omit it; the body decides
    mime, _, params = ctype.partition(";")
    if mime.strip().lower() not in _PROTOBUF_TYPES:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype!r}: expected application/x-protobuf"
        )
    proto = params.replace(" ", "")
    if "proto=" in proto and "proto=prometheus.WriteRequest" not in proto:
        raise UnsupportedMediaType(
            f"unsupported remote write message {ctype!r}: only remote_write 1.0 "
            "(prometheus.WriteRequest) is supported"
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes without buffering them."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds "
            f"write.max_request_bytes={limit}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"request body of more than {limit} bytes exceeds write.max_request_bytes={limit}"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def write_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    cfg = app[CONFIG].write
    metrics = app[METRICS]
    tenant = request_tenant(request)
    check_headers(request)
    body = await read_body(request, cfg.max_request_bytes)
    req = parse_write_request(decompress(body, cfg.max_decompressed_bytes),
                              cfg.max_entries_per_request)
    limits = WriteLimits.of(app[OVERRIDES].for_tenant(tenant), tenant, time.time())
    part = prepare(req, tenant, app[SERIES_CACHE], limits)
    try:
        # Mimir's order: validate, then rate-limit what is valid, then series limits.
        await app[RATE_LIMITER].admit(tenant, part.samples + len(part.metadata))
    except TooManyRequests:
        part.discarded[REASON_RATE_LIMITED] += part.samples
        _count(metrics, part)
        raise
    await app[SERIES_REGISTRY].admit(part)
    if part.samples or part.new_series or part.metadata:
        await app[BATCHER].submit(part)
    metrics.series_received.labels(tenant).inc(part.series_seen)
    metrics.samples_received.labels(tenant).inc(part.samples)
    metrics.metadata_received.inc(len(part.metadata))
    _count(metrics, part)
    if part.error_count:
        raise BadRequest(part.error_message())
    return web.Response(status=204)


def _count(metrics: Metrics, part: Prepared) -> None:
    for reason, count in part.discarded.items():
        metrics.discarded.labels(part.tenant, reason).inc(count)
    for reason, count in part.discarded_metadata.items():
        metrics.discarded_metadata.labels(part.tenant, reason).inc(count)
