"""The values the evaluator passes around, each covering every step of a query at once.

* a scalar is a float64 array, one value per step;
* an instant vector (:class:`Vec`) is a label set per row and ``(rows, steps)`` arrays of
  values and presence (a row is absent at a step when it had no sample there);
* a range vector (:class:`Block`) is the samples of many series concatenated, with the
  window every step looks at: ``[end - range, end]`` (Prometheus 2.42 includes both ends).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from gob_metrics.errors import ExecutionError
from gob_metrics.read.matchers import METRIC_NAME

Labels = tuple[tuple[str, str], ...]
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


# ------------------------------------------------------------------------------ labels


def drop_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != METRIC_NAME)


def keep_only(labels: Labels, names: Iterable[str]) -> Labels:
    wanted = set(names)
    return tuple(p for p in labels if p[0] in wanted)


def without(labels: Labels, names: Iterable[str]) -> Labels:
    unwanted = set(names)
    return tuple(p for p in labels if p[0] not in unwanted)


def get(labels: Labels, name: str) -> str:
    for k, v in labels:
        if k == name:
            return v
    return ""


def with_label(labels: Labels, name: str, value: str) -> Labels:
    """Set (or, for "", delete) one label, keeping the set sorted."""
    rest = [p for p in labels if p[0] != name]
    if value != "":
        rest.append((name, value))
        rest.sort()
    return tuple(rest)


def format_labels(labels: Labels) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


def is_stale(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint64) == np.uint64(STALE_NAN_BITS)


# ------------------------------------------------------------------------------ values


@dataclass
class Vec:
    """An instant vector over every step: rows of labels, values and presence."""

    labels: list[Labels]
    values: np.ndarray  # float64 (rows, steps)
    present: np.ndarray  # bool (rows, steps)

    @classmethod
    def empty(cls, steps: int) -> Vec:
        return cls([], np.empty((0, steps)), np.zeros((0, steps), bool))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: np.ndarray | Sequence[int]) -> Vec:
        rows = np.asarray(rows, dtype=np.int64)
        return Vec([self.labels[i] for i in rows], self.values[rows], self.present[rows])

    def nonempty(self) -> Vec:
        """Only the rows present at some step."""
        keep = np.flatnonzero(self.present.any(axis=1))
        return self if len(keep) == len(self.labels) else self.select(keep)


@dataclass
class Block:
    """Samples of many series, concatenated and sorted by (series, time)."""

    labels: list[Labels]
    ts: np.ndarray  # int64 ms
    values: np.ndarray  # float64
    offsets: np.ndarray  # int64 (series + 1): series i is [offsets[i], offsets[i+1])

    @classmethod
    def build(cls, labels: list[Labels], series: Sequence[tuple[np.ndarray, np.ndarray]]
              ) -> Block:
        lengths = np.fromiter((len(t) for t, _ in series), np.int64, len(series))
        offsets = np.zeros(len(series) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if series:
            ts = np.concatenate([t for t, _ in series]).astype(np.int64, copy=False)
            vals = np.concatenate([v for _, v in series]).astype(np.float64, copy=False)
        else:
            ts, vals = np.empty(0, np.int64), np.empty(0, np.float64)
        return cls(labels, ts, vals, offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def without_stale(self) -> Block:
        """Range vectors never contain staleness markers."""
        stale = is_stale(self.values)
        if not stale.any():
            return self
        keep = ~stale
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        offsets = kept_before[self.offsets]
        return Block(self.labels, self.ts[keep], self.values[keep], offsets)

    def series_index(self) -> np.ndarray:
        """The series number of every sample."""
        return np.repeat(np.arange(len(self.labels)), np.diff(self.offsets))


@dataclass
class Windows:
    """A range vector as functions see it: per series and step, the half-open sample
    index range ``[lo, hi)`` into the block, and the window's end and length."""

    block: Block
    lo: np.ndarray  # int64 (series, steps)
    hi: np.ndarray  # int64 (series, steps)
    end: np.ndarray  # int64 (steps,) window end (evaluation time - offset)
    range: int  # ms
    step_ts: np.ndarray  # int64 (steps,) the evaluation times themselves

    @property
    def count(self) -> np.ndarray:
        return self.hi - self.lo


def windows(block: Block, end: np.ndarray, range_ms: int, step_ts: np.ndarray) -> Windows:
    """Locate every step's window ``[end - range, end]`` in every series with one sorted
    search over the whole block (series number and time packed into one int64 key)."""
    n = len(block.labels)
    if len(block.ts) == 0 or n == 0:
        z = np.zeros((n, len(end)), np.int64)
        return Windows(block, z, z.copy(), end, range_ms, step_ts)
    base = min(int(block.ts.min()), int(end.min()) - range_ms) - 1
    top = max(int(block.ts.max()), int(end.max())) - base + 1
    shift = max(1, int(top).bit_length())
    if shift + max(1, n.bit_length()) > 62:
        raise ExecutionError("the query's time range is too wide to evaluate")
    keys = (block.series_index().astype(np.int64) << shift) + (block.ts - base)
    sid = (np.arange(n, dtype=np.int64) << shift)[:, None]
    lo = _search(keys, block.offsets, sid + (end - range_ms - base)[None, :], "left")
    hi = _search(keys, block.offsets, sid + (end - base)[None, :], "right")
    return Windows(block, lo, hi, end, range_ms, step_ts)


#: samples per searchsorted call in _search: the searched slice stays in the CPU cache
_SEARCH_CHUNK = 1 << 15


def _search(keys: np.ndarray, offsets: np.ndarray, needles: np.ndarray, side: str
            ) -> np.ndarray:
    """``np.searchsorted(keys, needles, side)`` for needles whose row ``i`` belongs to
    series ``i`` (its answers lie in ``[offsets[i], offsets[i + 1]]``), searched a group
    of series at a time in that group's slice of ``keys``: about twice as fast as one
    search of the whole block, whose first probes miss the cache."""
    n = needles.shape[0]
    total = int(offsets[-1])
    if total <= _SEARCH_CHUNK:
        return np.searchsorted(keys, needles, side=side).astype(np.int64, copy=False)
    out = np.empty(needles.shape, np.int64)
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, total, _SEARCH_CHUNK),
                                     side="right") - 1).tolist()
    cuts = [c for c in cuts if c < n] + [n]
    if cuts[0] != 0:
        cuts.insert(0, 0)
    for s0, s1 in pairwise(cuts):
        a, b = int(offsets[s0]), int(offsets[s1])
        out[s0:s1] = np.searchsorted(keys[a:b], needles[s0:s1], side=side)
        out[s0:s1] += a
    return out


def collapse(labels: list[Labels], values: np.ndarray, present: np.ndarray) -> Vec:
    """Merge rows with equal label sets; two present at one step is Prometheus' error
    "vector cannot contain metrics with the same labelset"."""
    index: dict[Labels, int] = {}
    groups: list[list[int]] = []
    for i, lab in enumerate(labels):
        g = index.get(lab)
        if g is None:
            index[lab] = len(groups)
            groups.append([i])
        else:
            groups[g].append(i)
    if len(groups) == len(labels):
        return Vec(labels, values, present)
    out_v = np.empty((len(groups), values.shape[1]))
    out_p = np.zeros((len(groups), values.shape[1]), bool)
    out_l = []
    for g, rows in enumerate(groups):
        out_l.append(labels[rows[0]])
        if len(rows) == 1:
            out_v[g], out_p[g] = values[rows[0]], present[rows[0]]
            continue
        p = present[rows]
        if (p.sum(axis=0) > 1).any():
            raise ExecutionError("vector cannot contain metrics with the same labelset")
        idx = np.argmax(p, axis=0)
        out_v[g] = values[rows][idx, np.arange(values.shape[1])]
        out_p[g] = p.any(axis=0)
    return Vec(out_l, out_v, out_p)
