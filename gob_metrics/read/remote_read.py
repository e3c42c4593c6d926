"""POST /api/v1/read: negotiate HTTP, select, encode. Errors are raised; the app's
middleware maps them to statuses (400 bad request, 413 too large, 422 over a limit).

SAMPLES responses are built whole (they are one protobuf message). STREAMED_XOR_CHUNKS
responses are planned first — every query's series and exact sample counts, so limits
fail with a proper 4xx before the first byte is sent — then fetched in groups of at most
``read.stream_batch_samples`` samples, encoded and written, so a large read holds one
group in memory at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import numpy as np
import snappy
from aiohttp import web

from gob_metrics.errors import PayloadTooLarge, UnsupportedMediaType
from gob_metrics.keys import CONFIG, LOOKUP_CACHE, OVERRIDES, STORAGE
from gob_metrics.read import codec
from gob_metrics.read.select import Limits, Selector, Series, SeriesRef, fetch, fetch_page, plan
from gob_metrics.read.select import select as select_series
from gob_metrics.read.xor import MAX_SAMPLES_PER_CHUNK
from gob_metrics.storage.base import Storage
from gob_metrics.tenancy import request_tenant

log = logging.getLogger(__name__)


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes without buffering them."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds "
                              f"read.max_request_bytes={limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body of more than {limit} bytes exceeds "
                                  f"read.max_request_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def check_encoding(request: web.Request) -> None:
    """Prometheus sends ``Content-Encoding: snappy``; a body in another encoding is 415.
    (A missing header is accepted: the snappy framing itself is checked.)"""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "snappy"):
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {encoding!r}: remote_read bodies are "
            "snappy-compressed (Content-Encoding: snappy)")


async def read_handler(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG].read
    check_encoding(request)
    body = await read_body(request, cfg.max_request_bytes)
    req = codec.decode_read_request(body, cfg.max_decompressed_bytes)
    tenant = request_tenant(request)
    overrides = request.app[OVERRIDES]
    selectors = codec.request_selectors(req, overrides.max_query_length(tenant), tenant)
    rtype = codec.negotiate_response_type(list(req.accepted_response_types))
    storage = request.app[STORAGE]
    lookups = request.app[LOOKUP_CACHE]
    limits = Limits.of(overrides, tenant)
    if rtype == codec.SAMPLES:
        results: list[list[Series]] = []
        for sel in selectors:
            results.append(await select_series(storage, tenant, sel, limits, lookups))
        payload = snappy.compress(codec.encode_read_response(results))
        return web.Response(body=payload, headers={"Content-Type": codec.SAMPLES_CONTENT_TYPE,
                                                   "Content-Encoding": "snappy"})
    plans = [await plan(storage, tenant, sel, limits, lookups) for sel in selectors]
    response = web.StreamResponse(headers={"Content-Type": codec.STREAMED_CONTENT_TYPE})
    await response.prepare(request)
    try:
        for index, (sel, refs) in enumerate(zip(selectors, plans, strict=True)):
            async for series in stream_series(storage, tenant, sel, refs,
                                              cfg.stream_batch_samples):
                for frame in codec.series_frames(index, series, cfg.max_bytes_in_frame):
                    await response.write(frame)
        await response.write_eof()
    except ConnectionError:
        log.debug("remote_read client went away mid-stream", extra={"path": request.path})
    except Exception:
        # The status line is sent: the only honest signal left is a truncated stream,
        # which the client's frame reader reports (never a clean end with data missing).
        log.exception("streamed remote_read failed after the response started",
                      extra={"path": request.path})
        if request.transport is not None:
            request.transport.close()
    return response


# Series ids per fetch: bounds the size of the bound id array.
_MAX_GROUP_SERIES = 10_000


def _groups(refs: Sequence[SeriesRef], budget: int) -> list[list[SeriesRef]]:
    """Consecutive series whose samples add up to at most ``budget`` (a series larger
    than the budget is a group of its own, fetched in pages)."""
    groups: list[list[SeriesRef]] = []
    current: list[SeriesRef] = []
    total = 0
    for ref in refs:
        if current and (total + ref.samples > budget or len(current) >= _MAX_GROUP_SERIES):
            groups.append(current)
            current, total = [], 0
        current.append(ref)
        total += ref.samples
    if current:
        groups.append(current)
    return groups


async def stream_series(storage: Storage, tenant: str, sel: Selector,
                        refs: Sequence[SeriesRef], budget: int) -> AsyncIterator[Series]:
    """Yield the planned series in order with their samples, holding at most about
    ``budget`` samples at a time. A series larger than the budget is yielded in parts,
    each a multiple of 120 samples long so chunk boundaries are those of one pass."""
    page = max(MAX_SAMPLES_PER_CHUNK, budget - budget % MAX_SAMPLES_PER_CHUNK)
    for group in _groups(refs, budget):
        if len(group) == 1 and group[0].samples > budget:
            ref = group[0]
            start = sel.start_ms
            while start <= sel.end_ms:
                ts, vals = await fetch_page(storage, tenant, ref.series_id, start,
                                            sel.end_ms, page)
                if len(ts):
                    yield Series(ref.labels, ts, vals)
                if len(ts) < page:
                    break
                start = int(ts[-1]) + 1
            continue
        found = await fetch(storage, tenant, [r.series_id for r in group],
                            sel.start_ms, sel.end_ms)
        for ref in group:
            ts, vals = found.get(ref.series_id, (np.empty(0, np.int64), np.empty(0)))
            if len(ts):
                yield Series(ref.labels, ts, vals)
