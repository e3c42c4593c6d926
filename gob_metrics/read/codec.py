"""remote_read 1.0 wire format: pure functions over bytes (Prometheus
``storage/remote/codec.go`` and ``chunked.go``).

* Requests: a snappy block holding a ``prometheus.ReadRequest``.
* SAMPLES responses: a snappy block holding a ``ReadResponse``. It is serialized here
  directly with numpy rather than through one protobuf object per sample (a read returns
  millions of them); both fields of every Sample are always written, so values keep their
  exact bits (-0.0 and every NaN payload included) and any protobuf decoder reads it.
* STREAMED_XOR_CHUNKS responses: a sequence of frames, each the uvarint length of a
  ``ChunkedReadResponse`` message, its CRC32 (Castagnoli) big-endian, then the message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

import google_crc32c
import numpy as np
from google.protobuf.message import DecodeError

from gob_metrics.errors import BadRequest
from gob_metrics.proto.prometheus import remote_pb2, types_pb2
from gob_metrics.read.matchers import Matcher, MatchType, new_matcher
from gob_metrics.read.select import Labels, LimitExceeded, Selector, Series, new_selector
from gob_metrics.read.xor import encode_series, uvarint
from gob_metrics.tenants.limits import limit_message
from gob_metrics.write.decode import decompress

SAMPLES = remote_pb2.ReadRequest.SAMPLES
STREAMED_XOR_CHUNKS = remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS
SAMPLES_CONTENT_TYPE = "application/x-protobuf"
STREAMED_CONTENT_TYPE = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"

_MATCH_TYPES = {
    types_pb2.LabelMatcher.EQ: MatchType.EQ,
    types_pb2.LabelMatcher.NEQ: MatchType.NEQ,
    types_pb2.LabelMatcher.RE: MatchType.RE,
    types_pb2.LabelMatcher.NRE: MatchType.NRE,
}
_SUPPORTED = (SAMPLES, STREAMED_XOR_CHUNKS)


# ---------------------------------------------------------------------------- request


def decode_read_request(body: bytes, max_decompressed_bytes: int) -> remote_pb2.ReadRequest:
    """Decompress and parse a remote_read body (400 when corrupt, 413 when too large)."""
    data = decompress(body, max_decompressed_bytes, setting="read.max_decompressed_bytes",
                      message="ReadRequest")
    req = remote_pb2.ReadRequest()
    try:
        req.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"invalid protobuf ReadRequest: {exc}") from exc
    return req


def negotiate_response_type(accepted: Sequence[int]) -> int:
    """The first response type the client accepts that this server supports (SAMPLES
    when it names none), as Prometheus' NegotiateResponseType."""
    for rtype in accepted or (SAMPLES,):
        if rtype in _SUPPORTED:
            return rtype
    raise BadRequest(
        f"server does not support any of the requested response types {list(accepted)}: "
        "supported are SAMPLES (0) and STREAMED_XOR_CHUNKS (1)")


def query_matchers(query: remote_pb2.Query, index: int) -> list[Matcher]:
    out = []
    for m in query.matchers:
        mtype = _MATCH_TYPES.get(m.type)
        if mtype is None:
            raise BadRequest(f"query {index}: unknown matcher type {m.type} for label {m.name!r}")
        try:
            out.append(new_matcher(mtype, m.name, m.value))
        except BadRequest as exc:
            raise BadRequest(f"query {index}: {exc}") from None
    return out


def request_selectors(req: remote_pb2.ReadRequest, max_query_length: float = 0.0,
                      tenant: str = "") -> list[Selector]:
    """Validate every query of a ReadRequest into a Selector (400 naming the query; 422
    when its time range is longer than ``max_query_length`` seconds, if that is set)."""
    if not req.queries:
        raise BadRequest("the ReadRequest has no queries")
    selectors = []
    for i, q in enumerate(req.queries):
        matchers = query_matchers(q, i)
        start, end = q.start_timestamp_ms, q.end_timestamp_ms
        try:
            sel = new_selector(matchers, start, end)
        except BadRequest as exc:
            raise BadRequest(f"query {i}: {exc}") from None
        if max_query_length and end - start > max_query_length * 1000:
            raise LimitExceeded(
                f"query {i}: the time range of {end - start} ms exceeds "
                f"{limit_message('max_query_length', max_query_length, tenant)}")
        selectors.append(sel)
    return selectors


# --------------------------------------------------------------------------- SAMPLES


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, uvarint length, payload."""
    return bytes((tag,)) + uvarint(len(payload)) + payload


def encode_labels(labels: Labels) -> bytes:
    """TimeSeries.labels (field 1) entries."""
    return b"".join(
        _field(0x0A, _field(0x0A, n.encode()) + _field(0x12, v.encode())) for n, v in labels)


def encode_samples(timestamps: np.ndarray, values: np.ndarray) -> bytes:
    """TimeSeries.samples (field 2) entries, vectorized.

    Each entry: 0x12, length, then Sample{value: 0x09 + 8 bytes little-endian,
    timestamp: 0x10 + varint of the two's complement int64}."""
    n = len(timestamps)
    if n == 0:
        return b""
    u = np.ascontiguousarray(timestamps, dtype=np.int64).view(np.uint64)
    vlen = np.ones(n, dtype=np.uint8)
    for k in range(1, 10):
        vlen += (u >= np.uint64(1 << (7 * k))).astype(np.uint8)
    rows = np.zeros((n, 22), dtype=np.uint8)
    rows[:, 0] = 0x12
    rows[:, 1] = 10 + vlen
    rows[:, 2] = 0x09
    rows[:, 3:11] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(n, 8)
    rows[:, 11] = 0x10
    for k in range(10):
        byte = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        rows[:, 12 + k] = byte | np.where(k < vlen - 1, 0x80, 0).astype(np.uint8)
    keep = np.arange(22, dtype=np.uint8)[None, :] < (12 + vlen)[:, None]
    return rows[keep].tobytes()


def encode_read_response(results: Sequence[Sequence[Series]]) -> bytes:
    """Serialize a ReadResponse: one QueryResult per query, in query order."""
    out = []
    for series in results:
        qr = b"".join(
            _field(0x0A, encode_labels(s.labels) + encode_samples(s.timestamps, s.values))
            for s in series)
        out.append(_field(0x0A, qr))
    return b"".join(out)


# --------------------------------------------------------------- STREAMED_XOR_CHUNKS


def frame(message: bytes) -> bytes:
    """One frame of a streamed response: uvarint size, CRC32C big-endian, message."""
    return uvarint(len(message)) + struct.pack(">I", google_crc32c.value(message)) + message


def chunked_frames(query_index: int, labels: Labels,
                   chunks: Iterable[tuple[int, int, bytes]],
                   max_bytes_in_frame: int) -> Iterator[bytes]:
    """Frames for one series: like Prometheus' StreamChunkedReadResponses, a frame holds
    one ChunkedSeries (labels repeated) with chunks added until the frame reaches
    ``max_bytes_in_frame`` (it may pass it by at most one chunk)."""
    pb_labels = [types_pb2.Label(name=n, value=v) for n, v in labels]
    label_bytes = sum(len(n) + len(v) + 4 for n, v in labels)
    pending: list[types_pb2.Chunk] = []
    size = label_bytes
    for min_t, max_t, data in chunks:
        pending.append(types_pb2.Chunk(min_time_ms=min_t, max_time_ms=max_t,
                                       type=types_pb2.Chunk.XOR, data=data))
        size += len(data) + 24
        if size >= max_bytes_in_frame:
            yield _chunked_message(query_index, pb_labels, pending)
            pending, size = [], label_bytes
    if pending:
        yield _chunked_message(query_index, pb_labels, pending)


def _chunked_message(query_index: int, labels: list[types_pb2.Label],
                     chunks: list[types_pb2.Chunk]) -> bytes:
    msg = remote_pb2.ChunkedReadResponse(query_index=query_index)
    msg.chunked_series.add(labels=labels, chunks=chunks)
    return frame(msg.SerializeToString())


def series_frames(query_index: int, series: Series, max_bytes_in_frame: int) -> Iterator[bytes]:
    """Frames carrying one whole series as XOR chunks of at most 120 samples."""
    return chunked_frames(query_index, series.labels,
                          encode_series(series.timestamps, series.values), max_bytes_in_frame)


class FrameDecodeError(ValueError):
    """A streamed response is truncated or a frame's checksum does not match."""


def read_frames(data: bytes) -> Iterator[remote_pb2.ChunkedReadResponse]:
    """Parse a whole streamed response (a client's view; used by tests and tools)."""
    pos = 0
    while pos < len(data):
        size = shift = 0
        while True:
            if pos >= len(data):
                raise FrameDecodeError("truncated frame length")
            b = data[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if pos + 4 + size > len(data):
            raise FrameDecodeError("truncated frame")
        crc = struct.unpack_from(">I", data, pos)[0]
        msg = data[pos + 4:pos + 4 + size]
        pos += 4 + size
        if google_crc32c.value(msg) != crc:
            raise FrameDecodeError("frame checksum mismatch")
        resp = remote_pb2.ChunkedReadResponse()
        resp.ParseFromString(msg)
        yield resp
