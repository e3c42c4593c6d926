"""Insert a sealed batch: new series first, then metadata, then samples; only when all
three are durable is the series registry told about the new series."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa

from gob_metrics.metrics import Metrics
from gob_metrics.storage import schema
from gob_metrics.storage.base import Storage
from gob_metrics.write import _values
from gob_metrics.write.batcher import Batch
from gob_metrics.write.prepare import NewSeries

_LABELS_TYPE = pa.map_(pa.string(), pa.string())
_ID_TYPE = pa.binary(16)


def samples_table(batch: Batch, encoder: _values.Encoder) -> pa.Table:
    """The batch's samples as rows of the samples table; ``encoder`` turns each value into
    its stored (mantissa, scale) pair (gob_metrics/write/_values.c, sql/003)."""
    tenants: list[pa.Array] = []
    ids = b"".join(p.series_ids for p in batch.parts)
    ts = np.concatenate([p.timestamps for p in batch.parts])
    vals = np.concatenate([p.values for p in batch.parts])
    mantissas, scales = encoder.encode(ids, vals)
    for p in batch.parts:
        tenants.append(pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(p.samples, np.int32)), pa.array([p.tenant])))
    tenant = pa.chunked_array(tenants, type=pa.dictionary(pa.int32(), pa.string()))
    n = len(ts)
    id_arr = pa.FixedSizeBinaryArray.from_buffers(_ID_TYPE, n, [None, pa.py_buffer(ids)])
    return pa.table({
        "tenant": tenant,
        "series_id": id_arr,
        "timestamp": pa.array(ts, pa.int64()),
        "mantissa": pa.array(np.frombuffer(mantissas, np.int64), pa.int64()),
        "scale": pa.array(np.frombuffer(scales, np.int8), pa.int8()),
    })


def series_table(batch: Batch) -> pa.Table | None:
    seen: set[tuple[str, bytes]] = set()
    tenant, ids, names, labels = [], [], [], []
    for p in batch.parts:
        for s in p.new_series:
            k = (p.tenant, s.series_id)
            if k in seen:
                continue
            seen.add(k)
            tenant.append(p.tenant)
            ids.append(s.series_id)
            names.append(s.metric_name)
            labels.append(list(s.labels.items()))
    if not ids:
        return None
    return pa.table({
        "tenant": pa.array(tenant, pa.string()),
        "series_id": pa.array(ids, _ID_TYPE),
        "metric_name": pa.array(names, pa.string()),
        "labels": pa.array(labels, _LABELS_TYPE),
    })


def metadata_table(batch: Batch, now_ms: int) -> pa.Table | None:
    rows = {(p.tenant, *m) for p in batch.parts for m in p.metadata}
    if not rows:
        return None
    cols = list(zip(*sorted(rows), strict=True))
    return pa.table({
        "tenant": pa.array(cols[0], pa.string()),
        "metric_family_name": pa.array(cols[1], pa.string()),
        "type": pa.array(cols[2], pa.string()),
        "help": pa.array(cols[3], pa.string()),
        "unit": pa.array(cols[4], pa.string()),
        "updated_at": pa.array(np.full(len(rows), now_ms, "datetime64[ms]"), pa.timestamp("ms")),
    })


class SeriesSink(Protocol):
    """Learns of series whose rows are durable (tenants.series_limits.SeriesRegistry)."""

    async def registered(self, series: Sequence[NewSeries]) -> None: ...


class Writer:
    """The batcher's flush function: writes a batch and then updates the cache."""

    def __init__(self, storage: Storage, registry: SeriesSink, metrics: Metrics,
                 series_capacity: int = 1_000_000) -> None:
        self.storage = storage
        self.registry = registry
        self.metrics = metrics
        #: remembers each series' value scale (bounded like the series cache)
        self.encoder = _values.Encoder(series_capacity)

    async def _insert(self, table: str, data: pa.Table) -> None:
        start = time.perf_counter()
        try:
            await self.storage.insert(table, data)
        finally:
            self.metrics.insert_duration.labels(table).observe(time.perf_counter() - start)

    async def __call__(self, batch: Batch) -> None:
        series = series_table(batch)
        if series is not None:
            await self._insert(schema.SERIES, series)
        meta = metadata_table(batch, int(time.time() * 1000))
        if meta is not None:
            await self._insert(schema.METADATA, meta)
        samples = samples_table(batch, self.encoder)
        if samples.num_rows:
            await self._insert(schema.SAMPLES, samples)
            raw = int(np.count_nonzero(samples.column("scale").to_numpy() == _values.RAW))
            self.metrics.samples_stored.labels("raw").inc(raw)
            self.metrics.samples_stored.labels("decimal").inc(samples.num_rows - raw)
        self.metrics.batch_samples.observe(samples.num_rows)
        new = [s for p in batch.parts for s in p.new_series]
        if new:
            await self.registry.registered(new)
            self.metrics.series_created.inc(series.num_rows if series is not None else 0)
