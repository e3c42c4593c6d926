"""Turn a decoded WriteRequest into columns ready to insert: resolve series ids, validate
series, samples and metadata against the tenant's limits, and record what was discarded
and why.

Invalid series are discarded individually; the valid rest of the request is still stored
and the request is then answered 400 naming the first problems (Mimir's behaviour).
"""

from __future__ import annotations

import bisect
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gob_metrics.config import Limits
from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.tenants.limits import limit_message
from gob_metrics.write import _wire
from gob_metrics.write.decode import ScannedRequest, parse_metadata, series_labels
from gob_metrics.write.series import CacheKey, InvalidSeries, SeriesCache, canonicalize

# Discard reasons: the `reason` label of gob_discarded_samples_total (Mimir's where one
# exists; greater_than_max_sample_age is Cortex's).
REASON_FUTURE = "too_far_in_future"
REASON_TOO_OLD = "greater_than_max_sample_age"
REASON_HISTOGRAM = "native_histogram_unsupported"
REASON_MAX_LABEL_NAMES = "max_label_names_per_series"
REASON_LABEL_NAME_TOO_LONG = "label_name_too_long"
REASON_LABEL_VALUE_TOO_LONG = "label_value_too_long"
# ...and of gob_discarded_metadata_total.
REASON_METADATA_NAME_TOO_LONG = "metric_name_too_long"
REASON_HELP_TOO_LONG = "help_too_long"
REASON_UNIT_TOO_LONG = "unit_too_long"
REASON_METADATA_INVALID_UTF8 = "metadata_invalid_utf8"

_METRIC_TYPES = {0: "unknown", 1: "counter", 2: "gauge", 3: "histogram",
                 4: "gaugehistogram", 5: "summary", 6: "info", 7: "stateset"}
_MAX_REPORTED_ERRORS = 5
_UNLIMITED = sys.maxsize

_ID = np.dtype((np.void, 16))  # a series id as numpy sees it


@dataclass(frozen=True)
class WriteLimits:
    """One tenant's write-path limits at one instant, read once per request."""

    tenant: str
    max_label_names_per_series: int
    max_label_name_length: int
    max_label_value_length: int
    max_metadata_length: int
    creation_grace_period: float
    reject_old_samples_max_age: float | None
    max_timestamp_ms: int
    min_timestamp_ms: int | None

    @classmethod
    def of(cls, limits: Limits, tenant: str, now: float) -> WriteLimits:
        """Snapshot ``limits`` of ``tenant`` at ``now`` (unix seconds)."""
        old = limits.reject_old_samples_max_age if limits.reject_old_samples else None
        return cls(
            tenant=tenant,
            max_label_names_per_series=limits.max_label_names_per_series,
            max_label_name_length=limits.max_label_name_length,
            max_label_value_length=limits.max_label_value_length,
            max_metadata_length=limits.max_metadata_length,
            creation_grace_period=limits.creation_grace_period,
            reject_old_samples_max_age=old,
            max_timestamp_ms=int((now + limits.creation_grace_period) * 1000),
            min_timestamp_ms=int((now - old) * 1000) if old else None,
        )


@dataclass
class NewSeries:
    key: CacheKey  # (tenant, label entries as sent): what the series cache remembers it by
    series_id: bytes
    metric_name: str
    labels: dict[str, str]
    index: int = -1  # position in the request, for error messages


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
    discarded_metadata: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    series_seen: int = 0
    offsets: list[int] = field(default_factory=list)  # first sample of each stored series...
    indexes: list[int] = field(default_factory=list)  # ...and its index in the request

    @property
    def samples(self) -> int:
        return len(self.timestamps)

    def _error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_REPORTED_ERRORS:
            self.errors.append(message)

    def reject(self, message: str, reason: str, samples: int) -> None:
        self.discarded[reason] += samples
        self._error(message)

    def reject_metadata(self, message: str, reason: str) -> None:
        self.discarded_metadata[reason] += 1
        self._error(message)

    def error_message(self) -> str:
        more = self.error_count - len(self.errors)
        text = "; ".join(self.errors)
        if more > 0:
            text += f"; and {more} more"
        total = sum(self.discarded.values())
        meta = sum(self.discarded_metadata.values())
        what = f"{total} samples" + (f" and {meta} metadata" if meta else "")
        return f"{what} discarded, the rest of the request was stored: {text}"

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the samples where ``keep`` is true (and their series' spans)."""
        ids = np.frombuffer(self.series_ids, dtype=np.dtype((np.void, 16)))[keep]
        self.timestamps = self.timestamps[keep]
        self.values = self.values[keep]
        self.series_ids = ids.tobytes()
        kept_before = np.concatenate(([0], np.cumsum(keep)))
        self.offsets = kept_before[self.offsets].tolist()
        if self.new_series:
            remaining = set(ids.tolist()) if len(ids) else set()
            self.new_series = [s for s in self.new_series if s.series_id in remaining]

    def drop_series(self, bad: dict[bytes, tuple[str, str]]) -> None:
        """Discard every sample of the series ids in ``bad`` (id -> (reason, message))."""
        keep = np.ones(self.samples, dtype=bool)
        ends = [*self.offsets[1:], self.samples]
        reported: set[bytes] = set()
        for start, end in zip(self.offsets, ends, strict=True):
            if start == end:
                continue
            sid = self.series_ids[start * 16:start * 16 + 16]
            verdict = bad.get(sid)
            if verdict is None:
                continue
            keep[start:end] = False
            reason, message = verdict
            if sid in reported:
                self.discarded[reason] += end - start
            else:
                reported.add(sid)
                self.reject(message, reason, end - start)
        if not keep.all():
            self.keep(keep)


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def describe_series(metric_name: str, labels: dict[str, str], limit: int = 160) -> str:
    text = metric_name + "{" + ", ".join(f"{k}={v!r}" for k, v in labels.items()) + "}"
    return text if len(text) <= limit else text[:limit] + "...}"


def _shape_problem(index: int, key: bytes, shape: np.ndarray,
                   lim: WriteLimits) -> tuple[str, str]:
    """The reason and message for a series over a label limit (decodes its labels again:
    rare, and it names the offending label). ``shape`` is the scanner's (labels, longest
    name, longest value)."""
    names, name_len, value_len = (int(x) for x in shape)
    _, name, labels = canonicalize(series_labels(key))
    what = f"series {index} ({describe_series(name, labels)})"
    pairs = [("__name__", name), *labels.items()]
    max_names = lim.max_label_names_per_series
    if max_names and names > max_names:
        return REASON_MAX_LABEL_NAMES, (
            f"{what}: {names} labels exceed "
            f"{limit_message('max_label_names_per_series', max_names, lim.tenant)}")
    if lim.max_label_name_length and name_len > lim.max_label_name_length:
        label = next(k for k, _ in pairs if _byte_len(k) == name_len)
        return REASON_LABEL_NAME_TOO_LONG, (
            f"{what}: label name {label[:40]!r}... of {name_len} bytes exceeds "
            f"{limit_message('max_label_name_length', lim.max_label_name_length, lim.tenant)}")
    label = next(k for k, v in pairs if _byte_len(v) == value_len)
    return REASON_LABEL_VALUE_TOO_LONG, (
        f"{what}: value of label {label!r} of {value_len} bytes exceeds "
        f"{limit_message('max_label_value_length', lim.max_label_value_length, lim.tenant)}")


def prepare(req: ScannedRequest, tenant: str, cache: SeriesCache,
            limits: WriteLimits) -> Prepared:
    """Resolve and validate every series of ``req`` for ``tenant`` under ``limits``.

    The per-series work is one dict lookup by the series' raw label bytes, done in C
    (``_wire.resolve``); everything per sample is numpy. Only a series this process
    has not registered yet has its labels decoded, validated and hashed (``canonicalize``).
    """
    out = Prepared(tenant=tenant)
    counts = req.samples
    n = len(req.keys)
    out.series_seen = n
    for index in np.flatnonzero(req.histograms).tolist():
        out.reject(f"series {index}: native histograms are not supported",
                   REASON_HISTOGRAM, int(req.histograms[index]))
    ids, missing = _wire.resolve(cache.tenant_ids(tenant), req.keys)
    stored = counts > 0
    if missing:
        _resolve_new(req, ids, missing, stored, out, limits)
    shapes = req.shapes
    over = stored & (
        (shapes[:, 0] > (limits.max_label_names_per_series or _UNLIMITED))
        | (shapes[:, 1] > (limits.max_label_name_length or _UNLIMITED))
        | (shapes[:, 2] > (limits.max_label_value_length or _UNLIMITED)))
    if over.any():
        # Limits can change at run time (overrides): cached series are checked every time.
        for index in np.flatnonzero(over).tolist():
            reason, message = _shape_problem(index, req.keys[index], shapes[index], limits)
            out.reject(message, reason, int(counts[index]))
        stored &= ~over
        out.new_series = [s for s in out.new_series if not over[s.index]]
    kept = np.flatnonzero(stored)
    kept_counts = counts[kept].astype(np.int64)
    per_series = np.frombuffer(ids, _ID)
    if len(kept) == n:
        out.timestamps, out.values = req.timestamps, req.values
    else:
        per_series = per_series[kept]
        keep = np.repeat(stored, counts)
        out.timestamps, out.values = req.timestamps[keep], req.values[keep]
    out.series_ids = np.repeat(per_series, kept_counts).tobytes()
    out.indexes = kept.tolist()
    out.offsets = (np.cumsum(kept_counts) - kept_counts).tolist()
    if len(out.timestamps):
        if int(out.timestamps.max()) > limits.max_timestamp_ms:
            _drop_out_of_bounds(out, out.timestamps > limits.max_timestamp_ms, limits, True)
        if (limits.min_timestamp_ms is not None and len(out.timestamps)
                and int(out.timestamps.min()) < limits.min_timestamp_ms):
            _drop_out_of_bounds(out, out.timestamps < limits.min_timestamp_ms, limits, False)
    for md in req.metadata:
        _add_metadata(out, parse_metadata(md), limits)
    return out


def _resolve_new(req: ScannedRequest, ids: bytearray, missing: list[int], stored: np.ndarray,
                 out: Prepared, limits: WriteLimits) -> None:
    """Fill in the ids the cache did not know (16 bytes each in ``ids``): decode, validate
    and hash those series (a series sent twice in one request is decoded once). Invalid
    series are rejected and cleared from ``stored``."""
    local: dict[bytes, bytes] = {}
    tenant = limits.tenant
    counts = req.samples
    for index in missing:
        if not stored[index]:
            continue
        key = req.keys[index]
        sid = local.get(key)
        if sid is None:
            try:
                sid, name, labels = canonicalize(series_labels(key))
            except InvalidSeries as exc:
                out.reject(f"series {index}: {exc}", exc.reason, int(counts[index]))
                stored[index] = False
                continue
            local[key] = sid
            out.new_series.append(NewSeries((tenant, key), sid, name, labels, index))
        ids[index * 16:index * 16 + 16] = sid


def _add_metadata(out: Prepared, md: ingest_pb2.RawMetricMetadata, lim: WriteLimits) -> None:
    try:
        name = md.metric_family_name.decode("utf-8")
        row = (name, _METRIC_TYPES.get(md.type, "unknown"),
               md.help.decode("utf-8"), md.unit.decode("utf-8"))
    except UnicodeDecodeError as exc:
        out.reject_metadata(f"metadata for {md.metric_family_name!r} is not valid UTF-8 "
                            f"({exc.reason} at byte {exc.start})", REASON_METADATA_INVALID_UTF8)
        return
    if not name:
        return
    limit = lim.max_metadata_length
    if limit:
        for field_name, value, reason in (("metric name", md.metric_family_name,
                                           REASON_METADATA_NAME_TOO_LONG),
                                          ("help", md.help, REASON_HELP_TOO_LONG),
                                          ("unit", md.unit, REASON_UNIT_TOO_LONG)):
            if len(value) > limit:
                out.reject_metadata(
                    f"metadata for {name[:80]!r}: {field_name} of {len(value)} bytes exceeds "
                    f"{limit_message('max_metadata_length', limit, lim.tenant)}", reason)
                return
    out.metadata.append(row)


def _drop_out_of_bounds(out: Prepared, bad: np.ndarray, lim: WriteLimits, future: bool) -> None:
    first = int(np.argmax(bad))
    count = int(bad.sum())
    series_index = out.indexes[bisect.bisect_right(out.offsets, first) - 1]
    stamp = int(out.timestamps[first])
    if future:
        setting = limit_message("creation_grace_period", lim.creation_grace_period, lim.tenant)
        out.reject(
            f"series {series_index}: sample timestamp {stamp} ms is too far in the future "
            f"(after now + {setting}: {lim.max_timestamp_ms} ms); "
            f"{count} such samples in this request", REASON_FUTURE, count)
    else:
        setting = limit_message("reject_old_samples_max_age", lim.reject_old_samples_max_age,
                                lim.tenant)
        out.reject(
            f"series {series_index}: sample timestamp {stamp} ms is too old (before now - "
            f"{setting}: {lim.min_timestamp_ms} ms; reject_old_samples is on); "
            f"{count} such samples in this request", REASON_TOO_OLD, count)
    out.keep(~bad)

