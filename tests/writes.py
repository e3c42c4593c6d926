"""Builders for remote_write bodies and readers of what was stored, shared by tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import snappy

from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.storage.base import Storage

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}

Labels = dict[str, str] | Sequence[tuple[str | bytes, str | bytes]]


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


def write_request(
    series: Iterable[tuple[Labels, Sequence[tuple[int, float]]]],
    metadata: Iterable[tuple[str, int, str, str]] = (),
) -> bytes:
    """Serialize a WriteRequest; labels keep the given order (dicts are not sorted) and
    may carry raw bytes, so tests can send what a faulty sender would."""
    req = ingest_pb2.RawWriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        pairs = labels.items() if isinstance(labels, dict) else labels
        for name, value in pairs:
            ts.labels.append(ingest_pb2.RawLabel(name=_b(name), value=_b(value))
                             .SerializeToString())
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
    for name, mtype, help_, unit in metadata:
        req.metadata.add(metric_family_name=_b(name), type=mtype, help=_b(help_), unit=_b(unit))
    return req.SerializeToString()


def body(series: Iterable[tuple[Labels, Sequence[tuple[int, float]]]], **kw: Any) -> bytes:
    return snappy.compress(write_request(series, **kw))


def bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


async def stored(storage: Storage) -> list[tuple[str, dict[str, str], int, int]]:
    """Every stored sample as (metric name, labels, timestamp, value bits), sorted."""
    db = storage.database
    t = await storage.query(
        f"SELECT s.metric_name AS name, s.labels AS labels, x.timestamp AS ts, "
        f"reinterpretAsUInt64(x.value) AS bits "
        f"FROM {db}.samples AS x FINAL "
        f"INNER JOIN (SELECT series_id, any(metric_name) AS metric_name, any(labels) AS labels "
        f"FROM {db}.series GROUP BY series_id) AS s ON s.series_id = x.series_id "
        f"ORDER BY name, toString(labels), ts")
    return [(r["name"], dict(r["labels"]), r["ts"], r["bits"]) for r in t.to_pylist()]


async def count(storage: Storage, table: str) -> int:
    t = await storage.query(f"SELECT count() AS n FROM {storage.database}.{table}")
    return int(t.column("n")[0].as_py())
