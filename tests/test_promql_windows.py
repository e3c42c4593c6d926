"""values.windows on blocks large enough to be searched a group of series at a time
agrees with one search of the whole block."""

from __future__ import annotations

import numpy as np
import pytest

from gob_metrics.promql import values


def _reference(block: values.Block, end: np.ndarray, range_ms: int
               ) -> tuple[np.ndarray, np.ndarray]:
    lo = np.empty((len(block.labels), len(end)), np.int64)
    hi = np.empty_like(lo)
    for i in range(len(block.labels)):
        a, b = block.offsets[i], block.offsets[i + 1]
        lo[i] = a + np.searchsorted(block.ts[a:b], end - range_ms, side="left")
        hi[i] = a + np.searchsorted(block.ts[a:b], end, side="right")
    return lo, hi


@pytest.mark.parametrize(("series", "per", "empty"), [
    (2000, 100, 0.0), (700, 100, 0.3), (20000, 3, 0.5), (1, 70000, 0.0), (3, 20000, 0.0)])
@pytest.mark.parametrize(("step", "range_ms"), [(30_000, 300_000), (7_000, 90_000),
                                                (15_000, 15_000)])
def test_windows_match_a_search_per_series(series: int, per: int, empty: float, step: int,
                                           range_ms: int) -> None:
    rng = np.random.default_rng(series + per + step)
    lengths = np.where(rng.random(series) < empty, 0, per)
    if series > 2:
        lengths[0] = lengths[-1] = 0
    ts = np.concatenate([np.sort(rng.choice(3_000_000, n, replace=False)) * 3
                         for n in lengths]).astype(np.int64)
    offsets = np.zeros(series + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    block = values.Block([(("i", str(i)),) for i in range(series)], ts,
                         rng.random(len(ts)), offsets)
    end = np.arange(600_000, 9_000_000, step, dtype=np.int64)
    w = values.windows(block, end, range_ms, end)
    lo, hi = _reference(block, end, range_ms)
    assert (w.lo == lo).all()
    assert (w.hi == hi).all()
