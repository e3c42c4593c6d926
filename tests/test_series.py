"""Series identity: canonical label sets and deterministic ids."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.write.decode import snappy_declared_length
from gob_metrics.write.series import InvalidSeries, SeriesCache, canonicalize, series_id


def raw(*pairs: tuple[bytes, bytes]) -> list[bytes]:
    return [ingest_pb2.RawLabel(name=n, value=v).SerializeToString() for n, v in pairs]


def test_series_id_is_labels_hash_then_metric_hash() -> None:
    h = hashlib.blake2b(digest_size=12)
    for part in (b"__name__", b"up", b"job", b"x"):
        h.update(len(part).to_bytes(4, "little") + part)
    metric = hashlib.blake2b(b"up", digest_size=4).digest()
    assert series_id([(b"__name__", b"up"), (b"job", b"x")]) == h.digest() + metric


def test_one_metrics_series_sort_together() -> None:
    # As little-endian UInt128 the metric hash is the most significant part, so sorting by
    # series_id groups series by metric.
    ids = [(int.from_bytes(series_id([(b"__name__", m), (b"i", str(i).encode())]), "little"), m)
           for m in (b"a", b"b", b"c") for i in range(50)]
    names = [m for _, m in sorted(ids)]
    assert sum(1 for x, y in itertools.pairwise(names) if x != y) == 2


def test_order_and_empty_values_do_not_change_identity() -> None:
    a = canonicalize(raw((b"__name__", b"up"), (b"job", b"x")))
    b = canonicalize(raw((b"job", b"x"), (b"zone", b""), (b"__name__", b"up")))
    assert a == b
    assert a[1:] == ("up", {"job": "x"})


def test_length_prefix_prevents_ambiguity() -> None:
    assert series_id([(b"a", b"bc")]) != series_id([(b"ab", b"c")])


@pytest.mark.parametrize(("pairs", "reason"), [
    ((), "missing_labels"),
    (((b"job", b"x"),), "missing_metric_name"),
    (((b"__name__", b""),), "missing_metric_name"),
    (((b"__name__", b"up"), (b"a", b"1"), (b"a", b"2")), "duplicate_label_names"),
    (((b"__name__", b"up"), (b"1a", b"1")), "label_invalid"),
    (((b"__name__", b"up"), (b"a", b"\xc3\x28")), "label_value_invalid"),
    (((b"__name__", b"a-b"),), "metric_name_invalid"),
], ids=["none", "no-name", "empty-name", "dup", "bad-name", "bad-utf8", "bad-metric"])
def test_invalid_series(pairs: tuple[tuple[bytes, bytes], ...], reason: str) -> None:
    with pytest.raises(InvalidSeries) as err:
        canonicalize(raw(*pairs))
    assert err.value.reason == reason


def test_undecodable_label_bytes() -> None:
    with pytest.raises(InvalidSeries) as err:
        canonicalize([b"\x0a\xff"])
    assert err.value.reason == "invalid_label"


def test_cache_is_bounded() -> None:
    cache = SeriesCache(10)
    cache.add_many([(("t", (bytes([i]),)), bytes(16)) for i in range(11)])
    assert len(cache) <= 10
    assert cache.get(("t", (bytes([10]),))) == bytes(16)  # the newest survives


@pytest.mark.parametrize(("data", "n"), [(b"\x00", 0), (b"\x7f", 127), (b"\x80\x01", 128),
                                         (b"\xff\xff\xff\xff\x0f", 2**32 - 1)])
def test_snappy_preamble(data: bytes, n: int) -> None:
    assert snappy_declared_length(data) == n
