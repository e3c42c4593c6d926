"""remote_write 1.0 body decoding: pure functions over bytes.

The protobuf is read by the C wire scanner ``_wire.scan`` (gob_metrics/write/_wire.c): one
pass, flat arrays out, so the per-series Python work is a dict lookup (see prepare.py).

The snappy block's declared length is read and checked against the limit *before*
decompressing, so a small body that claims gigabytes (a snappy bomb) is refused without
allocating anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import snappy
from google.protobuf.message import DecodeError

from gob_metrics.errors import BadRequest, PayloadTooLarge
from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.write import _wire

RawTimeSeries = ingest_pb2.RawTimeSeries


def snappy_declared_length(body: bytes) -> int:
    """Return the uncompressed length a snappy block declares (its varint preamble)."""
    result = 0
    for i in range(min(len(body), 10)):
        byte = body[i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i > 4 or result > 0xFFFFFFFF:
                break
            return result
    raise BadRequest("corrupt snappy block: invalid length preamble")


def decompress(body: bytes, max_decompressed_bytes: int, *,
               setting: str = "write.max_decompressed_bytes",
               message: str = "WriteRequest") -> bytes:
    """Snappy-decompress ``body`` (a serialized ``message``), refusing declared sizes over
    the limit; errors name ``setting``."""
    if not body:
        raise BadRequest(f"empty request body: expected a snappy-compressed {message}")
    declared = snappy_declared_length(body)
    if declared > max_decompressed_bytes:
        raise PayloadTooLarge(
            f"decompressed body of {declared} bytes exceeds "
            f"{setting}={max_decompressed_bytes}"
        )
    try:
        data = snappy.uncompress(body)
    except Exception as exc:  # cramjam raises its own error types
        raise BadRequest(f"corrupt snappy block: {exc}") from exc
    if len(data) != declared:
        raise BadRequest(
            f"corrupt snappy block: declared {declared} bytes, decompressed {len(data)}"
        )
    return bytes(data)


@dataclass(frozen=True)
class ScannedRequest:
    """A WriteRequest as the wire scanner (``_wire.scan``) returns it: flat arrays, one
    entry per TimeSeries or per float sample, and no Python object per label or sample."""

    keys: list[bytes]  # per series: its label entries as sent (the series cache key)
    info: np.ndarray  # per series, uint32: samples, histograms, label shape (see _wire.c)
    timestamps: np.ndarray  # int64 per float sample, series after series
    values: np.ndarray  # float64 per float sample
    metadata: list[bytes]  # each a serialized MetricMetadata

    @property
    def samples(self) -> np.ndarray:
        return self.info[:, 0]

    @property
    def histograms(self) -> np.ndarray:
        return self.info[:, 1]

    @property
    def shapes(self) -> np.ndarray:
        """Labels with a value (``__name__`` included), longest name, longest value."""
        return self.info[:, 2:]


def parse_write_request(data: bytes, max_entries: int = -1) -> ScannedRequest:
    """Scan a serialized prometheus.WriteRequest; 400 when it is not a valid message, 413
    when it holds more than ``max_entries`` series, samples and metadata (-1: no limit)."""
    try:
        keys, info, ts, vals, metadata = _wire.scan(data, max_entries)
    except _wire.LimitExceeded as exc:
        raise PayloadTooLarge(f"request holds {exc}: write.max_entries_per_request="
                              f"{max_entries}") from exc
    except ValueError as exc:
        raise BadRequest(f"invalid protobuf WriteRequest: {exc}") from exc
    return ScannedRequest(
        keys,
        np.frombuffer(info, np.uint32).reshape(-1, _wire.INFO_FIELDS),
        np.frombuffer(ts, np.int64),
        np.frombuffer(vals, np.float64),
        metadata,
    )


def series_labels(key: bytes) -> tuple[bytes, ...]:
    """The serialized Label messages of a series cache key (label entries as sent)."""
    try:
        return tuple(RawTimeSeries.FromString(key).labels)
    except DecodeError as exc:  # the scanner accepted them: cannot happen
        raise BadRequest(f"invalid protobuf WriteRequest: {exc}") from exc


def parse_metadata(raw: bytes) -> ingest_pb2.RawMetricMetadata:
    """Decode one MetricMetadata entry (the scanner checked it is well-formed)."""
    try:
        return ingest_pb2.RawMetricMetadata.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(f"invalid protobuf WriteRequest: metadata: {exc}") from exc
