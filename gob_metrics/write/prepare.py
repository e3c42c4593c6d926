"""Turn a decoded WriteRequest into columns ready to insert: resolve series ids, validate
series, samples and metadata, and record what was discarded and why.

Invalid series are discarded individually; the valid rest of the request is still stored
and the request is then answered 400 naming the first problems (Mimir's behaviour).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.write.series import InvalidSeries, SeriesCache, canonicalize

# Discard reasons: the `reason` label of gob_discarded_samples_total.
REASON_FUTURE = "too_far_in_future"
REASON_HISTOGRAM = "native_histogram_unsupported"

_METRIC_TYPES = {0: "unknown", 1: "counter", 2: "gauge", 3: "histogram",
                 4: "gaugehistogram", 5: "summary", 6: "info", 7: "stateset"}
_MAX_REPORTED_ERRORS = 5


@dataclass
class NewSeries:
    key: tuple[str, tuple[bytes, ...]]
    series_id: bytes
    metric_name: str
    labels: dict[str, str]


@dataclass
class Prepared:
    """What one request contributes to a batch, and what it discarded."""

    tenant: str
    series_ids: bytes = b""  # 16 bytes per sample, concatenated
    timestamps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    new_series: list[NewSeries] = field(default_factory=list)
    metadata: list[tuple[str, str, str, str]] = field(default_factory=list)
    discarded: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    series_seen: int = 0

    @property
    def samples(self) -> int:
        return len(self.timestamps)

    def reject(self, message: str, reason: str, samples: int) -> None:
        self.discarded[reason] += samples
        self.error_count += 1
        if len(self.errors) < _MAX_REPORTED_ERRORS:
            self.errors.append(message)

    def error_message(self) -> str:
        more = self.error_count - len(self.errors)
        text = "; ".join(self.errors)
        if more > 0:
            text += f"; and {more} more"
        total = sum(self.discarded.values())
        return (f"{total} samples discarded, the rest of the request was stored: {text}")


def prepare(
    req: ingest_pb2.RawWriteRequest,
    tenant: str,
    cache: SeriesCache,
    max_timestamp_ms: int,
) -> Prepared:
    """Resolve and validate every series of ``req`` for ``tenant``."""
    out = Prepared(tenant=tenant)
    ids: list[bytes] = []
    ts: list[int] = []
    vals: list[float] = []
    local: dict[tuple[bytes, ...], bytes] = {}
    offsets: list[int] = []  # first sample position of each stored series...
    indexes: list[int] = []  # ...and its index in the request, for error messages
    new: list[NewSeries] = out.new_series
    for index, series in enumerate(req.timeseries):
        out.series_seen += 1
        samples = series.samples
        if series.histograms:
            out.reject(f"series {index}: native histograms are not supported",
                       REASON_HISTOGRAM, len(series.histograms))
        if not samples:
            continue
        raw = tuple(series.labels)
        sid = local.get(raw)
        if sid is None:
            key = (tenant, raw)
            sid = cache.get(key)
            if sid is None:
                try:
                    sid, name, labels = canonicalize(raw)
                except InvalidSeries as exc:
                    out.reject(f"series {index}: {exc}", exc.reason, len(samples))
                    continue
                new.append(NewSeries(key, sid, name, labels))
            local[raw] = sid
        n = len(samples)
        offsets.append(len(ts))
        indexes.append(index)
        for s in samples:
            ts.append(s.timestamp)
            vals.append(s.value)
        ids.append(sid * n)
    out.timestamps = np.array(ts, dtype=np.int64)
    out.values = np.array(vals, dtype=np.float64)
    out.series_ids = b"".join(ids)
    if len(out.timestamps) and int(out.timestamps.max()) > max_timestamp_ms:
        _drop_future(out, max_timestamp_ms, offsets, indexes)
    for md in req.metadata:
        try:
            name = md.metric_family_name.decode("utf-8")
            row = (name, _METRIC_TYPES.get(md.type, "unknown"),
                   md.help.decode("utf-8"), md.unit.decode("utf-8"))
        except UnicodeDecodeError as exc:
            out.error_count += 1
            if len(out.errors) < _MAX_REPORTED_ERRORS:
                out.errors.append(f"metadata for {md.metric_family_name!r} is not valid UTF-8 "
                                  f"({exc.reason} at byte {exc.start})")
            continue
        if name:
            out.metadata.append(row)
    return out


def _drop_future(out: Prepared, max_timestamp_ms: int, offsets: list[int],
                 indexes: list[int]) -> None:
    bad = out.timestamps > max_timestamp_ms
    first = int(np.argmax(bad))
    count = int(bad.sum())
    series_index = indexes[bisect.bisect_right(offsets, first) - 1]
    out.reject(
        f"series {series_index}: sample timestamp {int(out.timestamps[first])} ms is too far "
        f"in the future (after now + write.future_grace = {max_timestamp_ms} ms); "
        f"{count} such samples in this request",
        REASON_FUTURE, count)
    keep = ~bad
    ids = np.frombuffer(out.series_ids, dtype=np.dtype((np.void, 16)))[keep]
    out.timestamps = out.timestamps[keep]
    out.values = out.values[keep]
    out.series_ids = ids.tobytes()
    if out.new_series:
        remaining = set(ids.tolist()) if len(ids) else set()
        out.new_series = [s for s in out.new_series if s.series_id in remaining]
