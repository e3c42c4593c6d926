"""Series identity and validation: canonical label sets, 128-bit series ids, and the
bounded cache that lets a known series skip label decoding altogether.

A series id is 16 bytes, read by ClickHouse as a little-endian UInt128: the first 12 are
blake2b-96 over the canonical label set (labels sorted by name, each name and value
prefixed by its 4-byte little-endian length), the last 4 (the most significant) blake2b-32
of the metric name. Every replica computes the same id with no lookup and no coordination,
and because `samples` is sorted by (tenant, series_id, timestamp), one metric's series lie
together on disk, so selecting a metric reads its own granules, not granules spread over
the whole table.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence

from gob_metrics.proto.gob import ingest_pb2

_RawLabel = ingest_pb2.RawLabel

# remote_write 1.0 spec: "Label names MUST adhere to the regex [a-zA-Z_]([a-zA-Z0-9_])*",
# "Metric names MUST adhere to the regex [a-zA-Z_:]([a-zA-Z0-9_:])*".
LABEL_NAME_RE = re.compile(rb"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_NAME_RE = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEN = struct.Struct("<I")


class InvalidSeries(ValueError):
    """A series that can never be stored, with a reason constant for the discard counter."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def series_id(labels: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Return the 16-byte id of a label set already sorted by name."""
    h = hashlib.blake2b(digest_size=12)
    metric = b""
    for name, value in labels:
        h.update(_LEN.pack(len(name)))
        h.update(name)
        h.update(_LEN.pack(len(value)))
        h.update(value)
        if name == b"__name__":
            metric = value
    return h.digest() + hashlib.blake2b(metric, digest_size=4).digest()


def canonicalize(raw_labels: Sequence[bytes]) -> tuple[bytes, str, dict[str, str]]:
    """Decode, validate and sort one series' labels.

    Returns (series id, metric name, labels without __name__). Labels with empty values
    are dropped, as in Prometheus ("a label with an empty value is equivalent to no label").
    """
    pairs: list[tuple[bytes, bytes]] = []
    for raw in raw_labels:
        lab = _RawLabel()
        try:
            lab.ParseFromString(raw)
        except Exception as exc:
            raise InvalidSeries("invalid_label", f"undecodable label: {exc}") from exc
        if lab.value:
            pairs.append((lab.name, lab.value))
    if not raw_labels:
        raise InvalidSeries("missing_labels", "series has no labels")
    pairs.sort()
    names = [n for n, _ in pairs]
    for i in range(1, len(names)):
        if names[i] == names[i - 1]:
            raise InvalidSeries(
                "duplicate_label_names",
                f"duplicate label name {_show(names[i])}",
            )
    metric_name = None
    labels: dict[str, str] = {}
    for name, value in pairs:
        if not LABEL_NAME_RE.fullmatch(name):
            raise InvalidSeries("label_invalid", f"invalid label name {_show(name)}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidSeries(
                "label_value_invalid",
                f"label {_show(name)} has a value that is not valid UTF-8 ({exc.reason} "
                f"at byte {exc.start})",
            ) from exc
        if name == b"__name__":
            if not METRIC_NAME_RE.fullmatch(value):
                raise InvalidSeries("metric_name_invalid", f"invalid metric name {text!r}")
            metric_name = text
        else:
            labels[name.decode("ascii")] = text
    if metric_name is None:
        raise InvalidSeries("missing_metric_name", "series has no __name__ label")
    return series_id(pairs), metric_name, labels


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", errors="backslashreplace"))


CacheKey = tuple[str, bytes]  # (tenant, the series' label entries as sent)


class SeriesCache:
    """Remembers which series are registered, keyed by tenant and the series' label entries
    exactly as sent (see ``_wire.scan``); the value is the series id.

    One dict per tenant, so the hot path looks a series up by its raw label bytes alone.
    Bounded: past ``capacity`` entries in all, the oldest half of every tenant's entries is
    dropped (insertion order), which costs one re-registration per evicted series that comes
    back. Only series whose registration is durable are put here.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._tenants: dict[str, dict[bytes, bytes]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _of(self, tenant: str) -> dict[bytes, bytes]:
        ids = self._tenants.get(tenant)
        if ids is None:
            ids = self._tenants[tenant] = {}
        return ids

    def tenant_ids(self, tenant: str) -> dict[bytes, bytes]:
        """One tenant's series ids by raw label bytes (read it, never write it: use
        :meth:`add_many`, which keeps the size bound)."""
        return self._of(tenant)

    def get(self, key: CacheKey) -> bytes | None:
        ids = self._tenants.get(key[0])
        return None if ids is None else ids.get(key[1])

    def forget_tenant(self, tenant: str) -> None:
        """Drop every entry of ``tenant`` (its series were deleted)."""
        ids = self._tenants.get(tenant)
        if ids:
            self._size -= len(ids)
            ids.clear()

    def add_many(self, items: Sequence[tuple[CacheKey, bytes]]) -> None:
        for (tenant, raw), value in items:
            ids = self._of(tenant)
            before = len(ids)
            ids[raw] = value
            self._size += len(ids) - before
        if self._size > self.capacity:
            for ids in self._tenants.values():
                for raw in list(ids)[: (len(ids) + 1) // 2]:
                    del ids[raw]
            self._size = sum(len(ids) for ids in self._tenants.values())
