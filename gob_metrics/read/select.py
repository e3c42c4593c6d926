"""The selector layer shared by remote_read and PromQL: label matchers and a time range
become SQL (constant templates, every label name and value a bound parameter), and the
answer comes back as series with their deduplicated samples ordered by time.

Two storage facts shape every query here:

* ``samples`` is a ReplacingMergeTree: until merges run, one (series_id, timestamp) can
  be stored more than once (a retried batch). Reads use ``FINAL``, which keeps the row
  a merge would keep (the last inserted), so a read never depends on merge timing.
* ``series`` may hold one series twice for the same reason: label lookups take one row
  per series_id.

Selection is one SQL round trip: the matchers select series ids from ``series`` (a
subquery the primary-key index of ``samples`` uses), the samples of those ids in the
range are aggregated into one sorted array pair per series, and joined back to the
labels. Limits are enforced in the same query: it fetches at most limit + 1 series and
samples, so an oversized query costs no more than the limit before it is refused.

With the label-lookup cache (``tenants.lookup_cache``, passed as ``lookups``) the ids a
selector's matchers select come from the cache, and the same query takes them as a bound
``Array(UInt128)`` instead of scanning ``series`` with the matchers: still one round trip
on a hit. A miss costs one more (the ids are loaded, cached, then used). The cache is
skipped, and the matchers run in SQL as without it, when it is off or bypassed (Redis
down) or the selector matches more than ``redis.lookup_cache_max_series`` series.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gob_metrics.errors import BadRequest, GobError
from gob_metrics.read import native
from gob_metrics.read.matchers import METRIC_NAME, Matcher, MatchType, check_selector
from gob_metrics.storage import schema
from gob_metrics.storage.base import Storage
from gob_metrics.tenants.limits import Overrides, limit_message
from gob_metrics.tenants.lookup_cache import LookupCache

Labels = tuple[tuple[str, str], ...]
_UNLIMITED = 2**63 - 1


class LimitExceeded(GobError):
    """A query would fetch more than a configured limit allows: 422, never retried.

    Prometheus answers a limit error of its query API with 422 (errorType "execution");
    Mimir does the same for max_fetched_series_per_query. remote_read uses the same status.
    """

    status = 422
    error_type = "execution"


@dataclass(frozen=True)
class Limits:
    """Per-query fetch limits of one tenant; 0 means unlimited."""

    #: Mimir's max_fetched_series_per_query.
    max_series: int = 0
    #: max_fetched_chunks_per_query, counted in samples here.
    max_samples: int = 0
    #: the tenant, named in error messages.
    tenant: str = ""

    @classmethod
    def of(cls, overrides: Overrides, tenant: str) -> Limits:
        return cls(overrides.max_fetched_series_per_query(tenant),
                   overrides.max_fetched_chunks_per_query(tenant), tenant)

    def check_series(self, n: int) -> None:
        if self.max_series and n > self.max_series:
            limit = limit_message("max_fetched_series_per_query", self.max_series, self.tenant)
            raise LimitExceeded(
                f"the query selects more than {self.max_series} series with samples in its "
                f"time range ({limit}): narrow the selector or the time range, or raise the "
                "limit")

    def check_samples(self, n: int) -> None:
        if self.max_samples and n > self.max_samples:
            limit = limit_message("max_fetched_chunks_per_query", self.max_samples, self.tenant)
            raise LimitExceeded(
                f"the query fetches more than {self.max_samples} samples ({limit}, counted in "
                "samples): narrow the selector or the time range, or raise the limit")

    @property
    def series_cap(self) -> int:
        """Rows of series to fetch: one more than allowed shows the limit was passed."""
        return self.max_series + 1 if self.max_series else _UNLIMITED

    @property
    def samples_cap(self) -> int:
        return self.max_samples + 1 if self.max_samples else _UNLIMITED


@dataclass(frozen=True)
class Selector:
    """A validated series selector with an inclusive millisecond time range."""

    matchers: tuple[Matcher, ...]
    start_ms: int
    end_ms: int


@dataclass
class Series:
    """One selected series: sorted labels (with ``__name__``) and its samples by time."""

    labels: Labels
    timestamps: np.ndarray  # int64 ms
    values: np.ndarray  # float64, bit-exact


@dataclass(frozen=True)
class SeriesRef:
    """A selected series before its samples are fetched (streamed reads)."""

    series_id: int
    labels: Labels
    samples: int


def new_selector(matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> Selector:
    """Validate a selector: non-empty-matching rule and an ordered time range (400)."""
    check_selector(matchers)
    if start_ms > end_ms:
        raise BadRequest(f"start time {start_ms} ms is after end time {end_ms} ms")
    return Selector(tuple(matchers), start_ms, end_ms)


# ------------------------------------------------------------------------------- SQL


def matcher_condition(m: Matcher, key: str, params: dict[str, object]) -> str:
    """SQL for one matcher over a ``series`` row, adding its bound parameters.

    ``__name__`` lives in metric_name; every other label in the labels Map, where a
    missing key reads as "" (ClickHouse's default for Map element access). That is
    exactly Prometheus' rule: a matcher that matches "" also selects series without the
    label, and an absent label is never distinct from an empty one (empty values are
    not stored)."""
    if m.name == METRIC_NAME:
        column = "metric_name"
    else:
        params[f"{key}n"] = m.name
        column = f"labels[{{{key}n:String}}]"
    params[f"{key}v"] = m.pattern
    value = f"{{{key}v:String}}"
    if m.type is MatchType.EQ:
        return f"{column} = {value}"
    if m.type is MatchType.NEQ:
        return f"{column} != {value}"
    if m.type is MatchType.RE:
        return f"match({column}, {value})"
    return f"NOT match({column}, {value})"


def series_condition(matchers: Sequence[Matcher], params: dict[str, object],
                     prefix: str = "m") -> str:
    """AND of the matchers' conditions (parameters named ``<prefix><i>n``/``v``)."""
    return " AND ".join(matcher_condition(m, f"{prefix}{i}", params)
                        for i, m in enumerate(matchers))


def id_set(key: str) -> str:
    """The right side of ``series_id IN`` for the bound id array ``key``.

    A subquery over the array, not the array itself: the embedded ClickHouse took minutes
    (holding the engine) on a constant set of more than about 60,000 ids tested against a
    key column, where the subquery's set takes 0.16 s for 100,000 and the primary key
    is used the same way (``EXPLAIN indexes=1``)."""
    return f"(SELECT arrayJoin({{{key}:Array(UInt128)}}))"


def ids_condition(matchers: Sequence[Matcher], ids: Sequence[bytes], params: dict[str, object],
                  key: str = "ids") -> str:
    """SQL selecting the ``series`` rows of known ids (cached for ``matchers``), adding the
    bound id array. An ``__name__`` equality is kept: it is the key's prefix after the
    tenant, so ClickHouse reads only that metric's granules (the id bloom filter does the
    rest); every other matcher is already answered by the ids."""
    params[key] = [int.from_bytes(i, "little") for i in ids]
    cond = f"series_id IN {id_set(key)}"
    for m in matchers:
        if m.name == METRIC_NAME and m.type is MatchType.EQ:
            params[f"{key}_name"] = m.value
            return f"metric_name = {{{key}_name:String}} AND {cond}"
    return cond


def _source(storage: Storage, selector: Selector, tenant: str,
            ids: Sequence[bytes] | None = None) -> tuple[str, str, dict]:
    """(the right side of ``series_id IN``, labels subquery, params) for a selector: by its
    matchers, or by the series ids the lookup cache gave for them."""
    db = storage.database
    params: dict[str, object] = {"tenant": tenant, "start": selector.start_ms,
                                 "end": selector.end_ms}
    if ids is None:
        cond = series_condition(selector.matchers, params)
        ids_in = (f"(SELECT series_id FROM {db}.{schema.SERIES} "
                  f"WHERE tenant = {{tenant:String}} AND {cond})")
    else:
        cond = ids_condition(selector.matchers, ids, params)
        ids_in = id_set("ids")
    labels = (f"SELECT series_id, metric_name, labels FROM {db}.{schema.SERIES} "
              f"WHERE tenant = {{tenant:String}} AND {cond} LIMIT 1 BY series_id")
    return ids_in, labels, params


def _in_range(db: str) -> str:
    return (f"FROM {db}.{schema.SAMPLES} FINAL WHERE tenant = {{tenant:String}} "
            f"AND timestamp >= {{start:Int64}} AND timestamp <= {{end:Int64}}")


# Timestamps and values aggregated in the same row order, then both sorted by timestamp
# (groupArray's order is not guaranteed once several threads aggregate).
_ARRAYS = ("arraySort(groupArray(timestamp)) AS ts, "
           "arraySort((v, t) -> t, groupArray(value), groupArray(timestamp)) AS vals")


#: Timestamps travel as Int32 offsets from the range's start when the range is narrower than
#: this (24 days): a quarter less to aggregate, write and copy than Int64.
_NARROW_RANGE_MS = 2**31 - 1


def _narrow(selector: Selector) -> bool:
    return selector.end_ms - selector.start_ms <= _NARROW_RANGE_MS


def select_sql(storage: Storage, selector: Selector, tenant: str, limits: Limits,
               ids: Sequence[bytes] | None = None) -> tuple[str, dict]:
    """The one-round-trip selection query and its parameters (``ids``: the selector's
    series ids from the lookup cache): one row per series, its labels as name/value
    pairs, its samples as two arrays, the rows in label order.

    The samples are read in the table's order (``ORDER BY`` the sort key: merged, not
    sorted, and the grouping then runs in order on one sorted stream) and grouped without
    ``arraySort`` (it cost ~10% of the query); :func:`_selection` still checks their
    order and sorts a series that is not in it.
    Rows come ordered by the series' sorted label pairs (``__name__`` included), the
    order Python gives the label tuples (byte-wise UTF-8 is code point order); the
    selection then uses the result's arrays as they are instead of copying every
    sample into label order (it checks the order, and reorders if it differs)."""
    ids_in, labels, params = _source(storage, selector, tenant, ids)
    params["series_cap"] = limits.series_cap
    params["samples_cap"] = limits.samples_cap
    ts = "toInt32(timestamp - {start:Int64})" if _narrow(selector) else "timestamp"
    pairs = "CAST(s.labels, 'Array(Tuple(String, String))')"
    sql = (
        f"SELECT x.series_id AS series_id, CAST(s.metric_name, 'String') AS metric_name, "
        f"{pairs} AS labels, x.ts AS ts, x.vals AS vals "
        f"FROM (SELECT series_id, groupArray({ts}) AS ts, groupArray(value) AS vals "
        f"FROM (SELECT series_id, timestamp, value {_in_range(storage.database)} "
        f"AND series_id IN {ids_in} ORDER BY series_id, timestamp "
        "LIMIT {samples_cap:UInt64}) "
        "GROUP BY series_id LIMIT {series_cap:UInt64}) AS x "
        f"INNER JOIN ({labels}) AS s ON s.series_id = x.series_id "
        f"ORDER BY arraySort(arrayPushFront({pairs}, ('{METRIC_NAME}', "
        "CAST(s.metric_name, 'String')))) "
        "SETTINGS optimize_aggregation_in_order = 1"
    )
    return sql, params


def samples_sql(storage: Storage, selector: Selector, tenant: str, limits: Limits,
                ids: Sequence[bytes]) -> tuple[str, dict]:
    """:func:`select_sql` without the labels, for ids whose labels are all in the label
    cache: the series table is not read and nothing is joined (for a small selection,
    about half of the query's time)."""
    _, _, params = _source(storage, selector, tenant, ids)
    params["series_cap"] = limits.series_cap
    params["samples_cap"] = limits.samples_cap
    ts = "toInt32(timestamp - {start:Int64})" if _narrow(selector) else "timestamp"
    sql = (
        f"SELECT series_id, groupArray({ts}) AS ts, groupArray(value) AS vals "
        f"FROM (SELECT series_id, timestamp, value {_in_range(storage.database)} "
        f"AND series_id IN {id_set('ids')} ORDER BY series_id, timestamp "
        "LIMIT {samples_cap:UInt64}) "
        "GROUP BY series_id LIMIT {series_cap:UInt64} "
        "SETTINGS optimize_aggregation_in_order = 1"
    )
    return sql, params


def plan_sql(storage: Storage, selector: Selector, tenant: str, limits: Limits,
             ids: Sequence[bytes] | None = None) -> tuple[str, dict]:
    """Series ids, labels and exact sample counts of a selection (one round trip)."""
    ids_in, labels, params = _source(storage, selector, tenant, ids)
    params["series_cap"] = limits.series_cap
    sql = (
        "SELECT s.series_id AS series_id, s.metric_name AS metric_name, s.labels AS labels, "
        "x.n AS n "
        f"FROM (SELECT series_id, count() AS n {_in_range(storage.database)} "
        f"AND series_id IN {ids_in} GROUP BY series_id LIMIT {{series_cap:UInt64}}) AS x "
        f"INNER JOIN ({labels}) AS s ON s.series_id = x.series_id"
    )
    return sql, params


# ------------------------------------------------------------------------------- rows


def _labels(metric_name: str, labels: Sequence[tuple[str, str]]) -> Labels:
    return tuple(sorted([(METRIC_NAME, metric_name), *labels]))


def _split(column: pa.ChunkedArray, dtype: type) -> list[np.ndarray]:
    """Split a list<...> column into one numpy array per row (views, no copy per row)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return []
    offsets = arr.offsets.to_numpy()
    flat = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def _series_id(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def cache_key(matchers: Sequence[Matcher]) -> list[tuple[str, str, str]]:
    """A selector's matchers as the lookup cache keys them."""
    return [(m.name, m.type.value, m.value) for m in matchers]


async def series_ids(storage: Storage, tenant: str, matchers: Sequence[Matcher],
                     lookups: LookupCache | None) -> list[bytes] | None:
    """The ids of every series of ``tenant`` the matchers select (whatever their samples),
    from the lookup cache, or loaded (one round trip) and cached. None when the cache
    cannot answer: there is none, it is off or bypassed (Redis down), or the matchers
    select more than its max-series bound; the caller then selects by the matchers."""
    if lookups is None or not lookups.enabled:
        return None
    key = cache_key(matchers)
    probe = await lookups.get(tenant, key)
    if probe.series_ids is not None or probe.too_many or probe.epoch < 0:
        return probe.series_ids
    db = storage.database
    params: dict[str, object] = {"tenant": tenant, "cap": lookups.max_series + 1}
    cond = series_condition(matchers, params)
    table = await storage.query(
        f"SELECT DISTINCT series_id FROM {db}.{schema.SERIES} "
        f"WHERE tenant = {{tenant:String}} AND {cond} LIMIT {{cap:UInt64}}", params)
    ids = table.column("series_id").to_pylist() if table.num_rows else []
    # Cached under the epoch read before the load: a series registered since has moved
    # the epoch, so if this load missed it the entry is never read.
    await lookups.put(tenant, key, probe.epoch, ids)
    return ids if len(ids) <= lookups.max_series else None


@dataclass
class Selection:
    """Selected series in columns: labels sorted, the samples of series ``i`` (ordered by
    time, deduplicated) at ``[offsets[i], offsets[i + 1])`` of ``timestamps``/``values``."""

    labels: list[Labels]
    timestamps: np.ndarray  # int64 ms
    values: np.ndarray  # float64, bit-exact
    offsets: np.ndarray  # int64 (series + 1)

    @classmethod
    def empty(cls) -> Selection:
        return cls([], np.empty(0, np.int64), np.empty(0, np.float64), np.zeros(1, np.int64))

    def series(self) -> list[Series]:
        o = self.offsets.tolist()
        return [Series(lab, self.timestamps[o[i]:o[i + 1]], self.values[o[i]:o[i + 1]])
                for i, lab in enumerate(self.labels)]


def _list_column(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(offsets as int64, flat values) of an Arrow list column."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], arr.values[offsets[0]:offsets[-1]]


#: (series ids as 16 little-endian bytes, labels or None where the result carried none,
#: per-series timestamps, per-series values, and the two flat arrays those slices cover
#: back to back when the result came as one block, else None)
Parts = tuple[list[bytes], list[Labels] | None, list[np.ndarray], list[np.ndarray],
              tuple[np.ndarray, np.ndarray] | None]


def _slices(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    o = offsets.tolist()
    return [flat[o[i]:o[i + 1]] for i in range(len(o) - 1)]


def _label_tuples(names: list[str], pairs: list[tuple[str, str]], offsets: list[int]
                  ) -> list[Labels]:
    return [_labels(n, pairs[offsets[i]:offsets[i + 1]]) for i, n in enumerate(names)]


def _from_arrow(table: pa.Table) -> Parts:
    offsets, ts = _list_column(table.column("ts"))
    _, vals = _list_column(table.column("vals"))
    labels = None
    if "labels" in table.column_names:
        lab_offsets, pairs = _list_column(table.column("labels"))
        flat = list(zip(pairs.field(0).to_pylist(), pairs.field(1).to_pylist(), strict=True))
        labels = _label_tuples(table.column("metric_name").to_pylist(), flat,
                               lab_offsets.tolist())
    ts_flat = ts.to_numpy(zero_copy_only=False)
    val_flat = vals.to_numpy(zero_copy_only=False)
    return (table.column("series_id").to_pylist(), labels, _slices(ts_flat, offsets),
            _slices(val_flat, offsets), (ts_flat, val_flat))


def _from_native(buf: bytes) -> Parts:
    """The rows of a Native result, block by block: each series' samples stay views into
    the result (copied at most once, by _selection)."""
    ids: list[bytes] = []
    labels: list[Labels] | None = []
    ts: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    blocks = native.read_blocks(buf)
    for _, cols in blocks:
        raw = cols["series_id"].tobytes()
        ids += [raw[i:i + 16] for i in range(0, len(raw), 16)]
        if "labels" in cols and labels is not None:
            lab = cols["labels"]
            labels += _label_tuples(cols["metric_name"], list(zip(*lab.values, strict=True)),
                                    lab.offsets.tolist())
        else:
            labels = None
        ts += _slices(cols["ts"].values, cols["ts"].offsets)
        vals += _slices(cols["vals"].values, cols["vals"].offsets)
    whole = None
    if len(blocks) == 1:
        whole = (blocks[0][1]["ts"].values, blocks[0][1]["vals"].values)
    return ids, labels, ts, vals, whole


def _selection(labels: list[Labels], ts_parts: list[np.ndarray], val_parts: list[np.ndarray],
               whole: tuple[np.ndarray, np.ndarray] | None, limits: Limits,
               ts_base: int = 0) -> Selection:
    """One row per series (samples possibly unsorted) as a :class:`Selection`: checked
    against the limits, series by labels, samples by time. ``ts_base`` is added to
    timestamps that came as Int32 offsets. Rows already in label order, from one result
    block, are used as they are (``whole``); otherwise the samples are copied once,
    series by series in label order (one concatenate of slices: a fancy-index gather
    of every sample cost several times more)."""
    limits.check_series(len(labels))
    lengths = np.fromiter(map(len, ts_parts), np.int64, len(ts_parts))
    limits.check_samples(int(lengths.sum()))
    if not labels:
        return Selection.empty()
    perm = sorted(range(len(labels)), key=labels.__getitem__)
    offsets = np.zeros(len(perm) + 1, np.int64)
    if whole is not None and perm == list(range(len(perm))):
        ts, vals = whole
        np.cumsum(lengths, out=offsets[1:])
    else:
        labels = [labels[i] for i in perm]
        ts = np.concatenate([ts_parts[i] for i in perm])
        vals = np.concatenate([val_parts[i] for i in perm])
        np.cumsum(lengths[np.asarray(perm, np.int64)], out=offsets[1:])
    ts = ts.astype(np.int64) + ts_base  # a new, writable array
    vals = vals.astype(np.float64, copy=False)
    if len(ts) > 1:
        falling = ts[1:] <= ts[:-1]
        starts = offsets[1:-1]
        falling[starts[(starts > 0) & (starts < len(ts))] - 1] = False  # a new series
        if falling.any():  # rare: a series whose rows two threads aggregated
            if not vals.flags.writeable:
                vals = vals.copy()
            for i in set(np.searchsorted(offsets, np.flatnonzero(falling) + 1,
                                         side="right").tolist()):
                lo, hi = int(offsets[i - 1]), int(offsets[i])
                order = np.argsort(ts[lo:hi], kind="stable")
                ts[lo:hi], vals[lo:hi] = ts[lo:hi][order], vals[lo:hi][order]
    return Selection(labels, ts, vals, offsets)


class LabelCache:
    """Labels by series id, per tenant, for one storage. A series id is derived from its
    labels, so an entry never goes stale; the cache is bounded by emptying it when full
    (200,000 entries: about 1 KB each for a series of six labels, ~200 MB at most).
    Filled by every selection that reads labels; a selection whose series ids all have
    their labels here (ids from the lookup cache) skips the series table and the join."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._labels: dict[tuple[str, bytes], Labels] = {}

    def get_all(self, tenant: str, ids: Sequence[bytes]) -> list[Labels] | None:
        got = self._labels
        try:
            return [got[(tenant, i)] for i in ids]
        except KeyError:
            return None

    def put(self, tenant: str, ids: Sequence[bytes], labels: Sequence[Labels]) -> None:
        if len(self._labels) + len(ids) > self.max_entries:
            self._labels.clear()
        if len(ids) <= self.max_entries:
            self._labels.update(zip(((tenant, i) for i in ids), labels, strict=True))


_LABEL_CACHES: weakref.WeakKeyDictionary[Storage, LabelCache] = weakref.WeakKeyDictionary()


def label_cache(storage: Storage) -> LabelCache:
    cache = _LABEL_CACHES.get(storage)
    if cache is None:
        cache = _LABEL_CACHES[storage] = LabelCache()
    return cache


async def select_columns(storage: Storage, tenant: str, selector: Selector, limits: Limits,
                         lookups: LookupCache | None = None) -> Selection:
    """Every series of ``tenant`` matching ``selector`` with samples in its range, sorted
    by labels, with their deduplicated samples ordered by time, in columns. One round
    trip (two on a lookup-cache miss); in Native format where the storage offers it."""
    ids = await series_ids(storage, tenant, selector.matchers, lookups)
    if ids is not None and not ids:
        return Selection.empty()
    cache = label_cache(storage)
    known = cache.get_all(tenant, ids) if ids is not None else None
    if known is not None:
        sql, params = samples_sql(storage, selector, tenant, limits, ids)
    else:
        sql, params = select_sql(storage, selector, tenant, limits, ids)
    if storage.native_results:
        parts = _from_native(await storage.query_native(sql, params))
    else:
        table = await storage.query(sql, params)
        if table.num_rows == 0:
            return Selection.empty()
        parts = _from_arrow(table)
    row_ids, labels, ts, vals, whole = parts
    if labels is None:
        by_id = dict(zip(ids or (), known or (), strict=True))
        labels = [by_id[i] for i in row_ids]
    else:
        cache.put(tenant, row_ids, labels)
    return _selection(labels, ts, vals, whole, limits,
                      ts_base=selector.start_ms if _narrow(selector) else 0)


async def select(storage: Storage, tenant: str, selector: Selector, limits: Limits,
                 lookups: LookupCache | None = None) -> list[Series]:
    """:func:`select_columns` as one :class:`Series` per series."""
    return (await select_columns(storage, tenant, selector, limits, lookups)).series()


async def plan(storage: Storage, tenant: str, selector: Selector, limits: Limits,
               lookups: LookupCache | None = None) -> list[SeriesRef]:
    """The series a selection would return, sorted by labels, with their sample counts;
    both limits are checked before any sample is fetched."""
    ids = await series_ids(storage, tenant, selector.matchers, lookups)
    if ids is not None and not ids:
        return []
    sql, params = plan_sql(storage, selector, tenant, limits, ids)
    table = await storage.query(sql, params)
    if table.num_rows == 0:
        return []
    limits.check_series(table.num_rows)
    counts = table.column("n").to_pylist()
    limits.check_samples(sum(counts))
    refs = [SeriesRef(_series_id(sid), _labels(n, lm), int(c)) for sid, n, lm, c in zip(
        table.column("series_id").to_pylist(), table.column("metric_name").to_pylist(),
        table.column("labels").to_pylist(), counts, strict=True)]
    refs.sort(key=lambda r: r.labels)
    return refs


async def fetch(storage: Storage, tenant: str, series_ids: Sequence[int], start_ms: int,
                end_ms: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Deduplicated samples of the given series in [start, end], by series id."""
    if not series_ids:
        return {}
    sql = (f"SELECT series_id, {_ARRAYS} {_in_range(storage.database)} "
           "AND series_id IN {ids:Array(UInt128)} GROUP BY series_id")
    table = await storage.query(sql, {"tenant": tenant, "start": start_ms, "end": end_ms,
                                      "ids": list(series_ids)})
    ids = [_series_id(b) for b in table.column("series_id").to_pylist()]
    ts = _split(table.column("ts"), np.int64)
    vals = _split(table.column("vals"), np.float64)
    return dict(zip(ids, zip(ts, vals, strict=True), strict=True))


async def fetch_page(storage: Storage, tenant: str, series_id: int, start_ms: int,
                     end_ms: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` deduplicated samples of one series from ``start_ms`` on, by time:
    keyset paging along the table's sort key (tenant, series_id, timestamp)."""
    sql = (f"SELECT timestamp, value {_in_range(storage.database)} "
           "AND series_id = {id:UInt128} ORDER BY timestamp LIMIT {limit:UInt64}")
    table = await storage.query(sql, {"tenant": tenant, "start": start_ms, "end": end_ms,
                                      "id": series_id, "limit": limit})
    if table.num_rows == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    ts = table.column("timestamp").to_numpy().astype(np.int64, copy=False)
    vals = table.column("value").to_numpy().astype(np.float64, copy=False)
    return ts, vals
