"""The C wire scanner (gob_metrics/write/_wire.c) against the protobuf library (upb): for
every encoding a sender may produce, and for random corruptions of them, it must accept
exactly what the protobuf parser accepts and return the same series, samples and metadata.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from gob_metrics.proto.gob import ingest_pb2
from gob_metrics.proto.prometheus import remote_pb2
from gob_metrics.write import _wire
from gob_metrics.write.decode import ScannedRequest, parse_write_request
from gob_metrics.write.series import canonicalize
from tests.wire_fuzz import mutate

STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, wt: int, payload: bytes) -> bytes:
    tag = varint(num << 3 | wt)
    if wt == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


def label(name: bytes, value: bytes) -> bytes:
    return field(1, 2, name) + field(2, 2, value)


def sample(value: float, ts: int) -> bytes:
    return field(1, 1, struct.pack("<d", value)) + field(2, 0, varint(ts))


def reference(data: bytes) -> tuple:
    """What the protobuf library makes of ``data``, in the scanner's terms."""
    req = ingest_pb2.RawWriteRequest.FromString(data)
    keys_labels = [list(ts.labels) for ts in req.timeseries]
    counts = [len(ts.samples) for ts in req.timeseries]
    hist = [len(ts.histograms) for ts in req.timeseries]
    ts = [s.timestamp for t in req.timeseries for s in t.samples]
    bits = [struct.pack("<d", s.value) for t in req.timeseries for s in t.samples]
    md = [m.SerializeToString() for m in req.metadata]
    return keys_labels, counts, hist, ts, bits, md


def scanned(data: bytes) -> tuple:
    keys, info, ts, vals, md = _wire.scan(data)
    info = np.frombuffer(info, np.uint32).reshape(-1, _wire.INFO_FIELDS)
    keys_labels = [list(ingest_pb2.RawTimeSeries.FromString(k).labels) for k in keys]
    bits = [vals[i:i + 8] for i in range(0, len(vals), 8)]
    md_norm = [ingest_pb2.RawMetricMetadata.FromString(m).SerializeToString() for m in md]
    return (keys_labels, info[:, 0].tolist(), info[:, 1].tolist(),
            np.frombuffer(ts, np.int64).tolist(), bits, md_norm)


def assert_same(data: bytes) -> None:
    assert scanned(data) == reference(data)


def test_canonical_request_matches_protobuf() -> None:
    req = remote_pb2.WriteRequest()
    for i in range(50):
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value=f"metric_{i % 7}")
        ts.labels.add(name="instance", value=f"host-{i}:9100")
        ts.labels.add(name="job", value="node")
        for j in range(i % 4):
            ts.samples.add(value=i * 1.5 + j, timestamp=1_700_000_000_000 + j * 15_000)
    req.metadata.add(type=1, metric_family_name="metric_1", help="Help.", unit="seconds")
    assert_same(req.SerializeToString())


def test_special_values_and_timestamps_bit_exact() -> None:
    values = [math.nan, STALE_NAN, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    stamps = [0, -1, -(2**63), 2**63 - 1, 1, 2**31, -1000]
    body = field(1, 2, field(1, 2, label(b"__name__", b"m")) + b"".join(
        field(2, 2, sample(v, t)) for v, t in zip(values, stamps, strict=True)))
    _keys, _info, ts, vals, _ = _wire.scan(body)
    assert np.frombuffer(ts, np.int64).tolist() == stamps
    assert vals == b"".join(struct.pack("<d", v) for v in values)
    assert_same(body)


def test_any_field_order_unknown_fields_and_repeats() -> None:
    lab_a = field(1, 2, label(b"job", b"x"))
    lab_b = field(1, 2, label(b"__name__", b"up"))
    s1 = field(2, 2, sample(1.0, 10))
    # A sample whose fields come reversed, repeat (last wins) and carry unknown fields.
    s2 = field(2, 2, field(2, 0, varint(5)) + field(9, 0, varint(1)) + field(1, 1, struct.pack(
        "<d", 7.0)) + field(2, 0, varint(20)) + field(15, 5, b"\0\0\0\0"))
    # A sample field sent with the wrong wire type is an unknown field (skipped).
    wrong = field(2, 0, varint(3))
    unknown = field(7, 2, b"whatever") + field(8, 1, b"\0" * 8) + field(12, 0, varint(300))
    group = varint(6 << 3 | 3) + field(1, 0, varint(1)) + varint(6 << 3 | 4)
    series = lab_a + s1 + unknown + lab_b + wrong + s2 + group + field(3, 2, b"exemplar")
    body = field(5, 0, varint(1)) + field(1, 2, series) + field(1, 0, varint(1)) + group
    assert_same(body)
    keys, _info, ts, _vals, _ = _wire.scan(body)
    assert np.frombuffer(ts, np.int64).tolist() == [10, 20]
    # Labels interleaved with samples: the key is both label entries, in order.
    assert keys[0] == lab_a + lab_b
    _sid, name, labels = canonicalize(ingest_pb2.RawTimeSeries.FromString(keys[0]).labels)
    assert (name, labels) == ("up", {"job": "x"})


def test_label_shape_counts_what_limits_count() -> None:
    labels = (field(1, 2, label(b"__name__", b"node_cpu")) + field(1, 2, label(b"mode", b"")) +
              field(1, 2, label(b"a_long_label_name", b"v")) + field(1, 2, label(b"z", b"x" * 40)))
    body = field(1, 2, labels + field(2, 2, sample(1, 1)))
    info = np.frombuffer(_wire.scan(body)[1], np.uint32)
    # 3 labels with a value (the empty one is dropped), longest name 17, longest value 40
    assert info.tolist() == [1, 0, 3, 17, 40]


def test_unreadable_label_flags_series_not_request() -> None:
    broken = field(1, 2, b"\x0a\x05ab")  # a Label whose name runs past its end
    body = (field(1, 2, broken + field(2, 2, sample(1, 1))) +
            field(1, 2, field(1, 2, label(b"__name__", b"ok")) + field(2, 2, sample(2, 2))))
    _keys, info, *_ = _wire.scan(body)
    info = np.frombuffer(info, np.uint32).reshape(-1, _wire.INFO_FIELDS)
    assert info[0, 2] == _wire.LABELS_UNREADABLE
    assert info[1, 2] == 1
    assert_same(body)


def test_histograms_counted() -> None:
    body = field(1, 2, field(1, 2, label(b"__name__", b"h")) + field(4, 2, b"\x08\x01") +
                 field(4, 2, b""))
    assert np.frombuffer(_wire.scan(body)[1], np.uint32).tolist() == [0, 2, 1, 8, 1]


@pytest.mark.parametrize("body, message", [
    (b"\x0a\x05\x0a", "runs past the end"),
    (b"\x0a", "truncated length prefix"),
    (b"\x00\x01", "invalid field number"),
    (b"\x0f", "invalid wire type"),
    (b"\x0c", "unexpected end of group"),
    (b"\x0b\x08\x01", "unterminated group"),
    (b"\x0b\x14", "mismatched end of group"),
    (b"\x08" + b"\xff" * 11, "truncated varint"),
    (field(1, 2, field(2, 2, b"\x09\x00\x00")), "truncated sample value"),
    (field(1, 2, field(2, 2, b"\x10\x80")), "truncated sample timestamp"),
    (field(3, 2, b"\x12\x09ab"), "runs past the end"),
    (b"\x0b" * 200, "groups nested too deeply"),
])
def test_malformed_rejected_with_offset(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message + ".* at byte [0-9]+"):
        _wire.scan(body)
    with pytest.raises(DecodeError):
        ingest_pb2.RawWriteRequest.FromString(body)


def test_parse_write_request_shape() -> None:
    body = field(1, 2, field(1, 2, label(b"__name__", b"m")) + field(2, 2, sample(1.0, 5)))
    req = parse_write_request(body)
    assert isinstance(req, ScannedRequest)
    assert req.samples.tolist() == [1] and req.timestamps.tolist() == [5]
    assert req.values.tolist() == [1.0] and req.keys == [field(1, 2, label(b"__name__", b"m"))]


def test_empty_request_and_buffer_types() -> None:
    assert _wire.scan(b"") == ([], b"", b"", b"", [])
    assert _wire.scan(b"", 0) == ([], b"", b"", b"", [])  # no entries: within any limit
    body = field(1, 2, field(1, 2, label(b"__name__", b"m")) + field(2, 2, sample(1.0, 5)))
    assert _wire.scan(memoryview(body)) == _wire.scan(bytearray(body)) == _wire.scan(body)
    with pytest.raises(TypeError):
        _wire.scan("text")  # type: ignore[arg-type]


def _corpus() -> list[bytes]:
    req = remote_pb2.WriteRequest()
    for i in range(6):
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value=f"m{i}")
        ts.labels.add(name="k", value="v" * i)
        for j in range(3):
            ts.samples.add(value=j / 3, timestamp=-j if i % 2 else 10**12 + j)
        if i == 3:
            ts.exemplars.add(value=1.0, timestamp=5).labels.add(name="trace_id", value="ab")
    req.metadata.add(type=2, metric_family_name="m1", help="h", unit="u")
    extra = field(1, 2, field(1, 2, label(b"a", b"b")) + field(2, 2, field(9, 3, b"")))
    return [req.SerializeToString(), extra]


def test_random_corruptions_agree_with_protobuf() -> None:
    """Flip, insert, delete and truncate bytes: the scanner accepts a body exactly when the
    protobuf parser does, and then returns the same content."""
    rng = random.Random(20261126)
    checked = accepted = 0
    for base in _corpus():
        for _ in range(3000):
            data = mutate(rng, bytearray(base))
            try:
                ref = reference(data)
            except DecodeError:
                ref = None
            try:
                got = scanned(data)
            except ValueError:
                got = None
            assert got == ref, data.hex()
            checked += 1
            accepted += ref is not None
    assert checked == 6000 and 100 < accepted < 5900  # both outcomes exercised


def test_resolve_fills_ids_and_lists_misses() -> None:
    ids = {b"k1": b"\x01" * 16, b"k3": b"\x03" * 16}
    buf, missing = _wire.resolve(ids, [b"k1", b"k2", b"k3", b"k1", b""])
    assert bytes(buf) == b"\x01" * 16 + b"\0" * 16 + b"\x03" * 16 + b"\x01" * 16 + b"\0" * 16
    assert missing == [1, 4]
    assert _wire.resolve({}, []) == (bytearray(), [])
    with pytest.raises(TypeError):
        _wire.resolve(ids, (b"k1",))  # type: ignore[arg-type]
