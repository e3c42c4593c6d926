"""The XOR chunk codec and the streamed-response framing: round trips on hard inputs, and
decoding the chunks a real Prometheus 2.42 wrote to a TSDB block (an independent encoder)."""

from __future__ import annotations

import json
import math
import struct
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gob_metrics.read import codec, xor
from gob_metrics.read.select import Series
from tests.writes import STALE_NAN_BITS, body

SPECIAL_BITS = [
    STALE_NAN_BITS, 0x7FF8000000000001, 0xFFF8000000000000,  # NaNs with payloads
    struct.unpack("<Q", struct.pack("<d", math.inf))[0],
    struct.unpack("<Q", struct.pack("<d", -math.inf))[0],
    0x8000000000000000,  # -0.0
    0, 1, 0x000FFFFFFFFFFFFF,  # +0.0, smallest and largest subnormal
    0x7FEFFFFFFFFFFFFF, 0xFFEFFFFFFFFFFFFF,  # +-max float
    0x3FF0000000000000, 0x3FF0000000000001, 0xBFF0000000000000,
]


def _bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.uint64).tolist()


def _round_trip(ts: list[int], bits: list[int]) -> None:
    data = xor.encode_chunk(ts, bits)
    got_ts, got_bits = xor.decode_chunk(data)
    assert got_ts == ts
    assert got_bits == bits


def _from_dods(t0: int, first_delta: int, dods: list[int]) -> list[int]:
    ts, delta = [t0, t0 + first_delta], first_delta
    for d in dods:
        delta += d
        ts.append(ts[-1] + delta)
    return ts


RNG = np.random.default_rng(42)

# (id, timestamps, value bits)
CASES = [
    ("one-sample", [1_700_000_000_000], [STALE_NAN_BITS]),
    ("two-samples", [0, 15_000], [0, 0x3FF0000000000000]),
    ("regular-constant", list(range(0, 120 * 15_000, 15_000)), [0x4059000000000000] * 120),
    ("negative-timestamps", [-(2**40), -(2**40) + 1, -5, 0, 7], [1, 2, 3, 4, 5]),
    ("dod-bucket-edges", _from_dods(10**12, 1000, [0, -8191, 8191, 8192, -8192, 8193, -65535,
                                                  65536, 65537, -(2**19) + 1, 2**19, 2**19 + 1,
                                                  -(2**19), 2**40, -(2**40), 0, 0]),
     list(range(19))),
    ("extreme-timestamps", [-(2**63), 0, 2**62, 2**63 - 1], [1, 1, 1, 1]),
    ("special-values", list(range(0, len(SPECIAL_BITS) * 1000, 1000)), SPECIAL_BITS),
    ("special-values-repeated", list(range(0, 4 * len(SPECIAL_BITS) * 7, 7)),
     [b for b in SPECIAL_BITS for _ in range(4)]),
    ("random-normal", np.cumsum(RNG.integers(1, 60_000, 500)).tolist(),
     _bits(RNG.standard_normal(500))),
    ("random-bits", np.cumsum(RNG.integers(1, 10**9, 300)).tolist(),
     RNG.integers(0, 2**63, 300, dtype=np.uint64).tolist()),
    ("counter", list(range(0, 300 * 10_000, 10_000)),
     _bits(np.cumsum(RNG.integers(0, 100, 300)).astype(np.float64))),
    ("window-reuse-and-reset", list(range(8)),
     _bits(np.array([1.0, 1.5, 1.75, 1e300, 1.75, -0.0, 3.0, 3.0]))),
]


@pytest.mark.parametrize(("ts", "bits"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chunk_round_trip(ts: list[int], bits: list[int]) -> None:
    _round_trip(ts, bits)


@pytest.mark.parametrize(("n", "sizes"), [(1, [1]), (119, [119]), (120, [120]),
                                          (121, [120, 1]), (240, [120, 120]),
                                          (361, [120, 120, 120, 1])],
                         ids=["1", "119", "120", "121", "240", "361"])
def test_series_cut_into_chunks_of_120(n: int, sizes: list[int]) -> None:
    ts = np.cumsum(RNG.integers(1, 30_000, n)).astype(np.int64)
    vals = RNG.standard_normal(n)
    vals[::5] = np.frombuffer(struct.pack("<Q", STALE_NAN_BITS), dtype=np.float64)[0]
    chunks = list(xor.encode_series(ts, vals))
    assert [struct.unpack(">H", c[:2])[0] for _, _, c in chunks] == sizes
    got_ts, got_vals = [], []
    for mint, maxt, data in chunks:
        t, v = xor.decode_chunk_arrays(data)
        assert (mint, maxt) == (int(t[0]), int(t[-1]))
        got_ts.append(t)
        got_vals.append(v)
    assert np.array_equal(np.concatenate(got_ts), ts)
    assert np.array_equal(np.concatenate(got_vals).view(np.uint64), vals.view(np.uint64))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x02\x02", b"\x00\x05" + b"\xff" * 12],
                         ids=["empty", "half-header", "truncated", "garbage"])
def test_decode_rejects_malformed_chunks(data: bytes) -> None:
    with pytest.raises(xor.ChunkDecodeError):
        xor.decode_chunk(data)


def test_frame_layout_and_crc32c() -> None:
    framed = codec.frame(b"123456789")
    # uvarint length, CRC32C("123456789") = 0xE3069283 big-endian, the message.
    assert framed == b"\x09" + bytes.fromhex("e3069283") + b"123456789"


def test_frames_split_by_bytes_and_repeat_labels() -> None:
    n = 1000
    series = Series((("__name__", "x"), ("job", "a")), np.arange(n, dtype=np.int64) * 1000,
                    RNG.standard_normal(n))
    data = b"".join(codec.series_frames(3, series, max_bytes_in_frame=2000))
    frames = list(codec.read_frames(data))
    assert len(frames) > 1
    ts, vals = [], []
    for fr in frames:
        assert fr.query_index == 3
        (cs,) = fr.chunked_series
        assert [(lb.name, lb.value) for lb in cs.labels] == list(series.labels)
        for ch in cs.chunks:
            t, v = xor.decode_chunk_arrays(ch.data)
            assert (ch.min_time_ms, ch.max_time_ms) == (t[0], t[-1])
            ts.append(t)
            vals.append(v)
    assert np.array_equal(np.concatenate(ts), series.timestamps)
    assert np.array_equal(np.concatenate(vals), series.values)


def test_read_frames_detects_corruption() -> None:
    data = bytearray(codec.frame(b"\x10\x01"))
    data[-1] ^= 0xFF
    with pytest.raises(codec.FrameDecodeError, match="checksum"):
        list(codec.read_frames(bytes(data)))
    with pytest.raises(codec.FrameDecodeError, match="truncated"):
        list(codec.read_frames(codec.frame(b"\x10\x01")[:-1]))


# ------------------------------------------------------- against a real Prometheus 2.42

_CHUNKS_MAGIC = 0x85BD40DD


def read_chunk_segment(path: Path) -> list[tuple[int, bytes]]:
    """Every (encoding, data) of a TSDB block chunk segment file."""
    raw = path.read_bytes()
    assert struct.unpack_from(">I", raw)[0] == _CHUNKS_MAGIC, "not a chunks segment"
    assert raw[4] == 1, "unknown chunks segment version"
    import google_crc32c

    pos, out = 8, []
    while pos < len(raw):
        size = shift = 0
        while True:
            b = raw[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        encoding, data = raw[pos], raw[pos + 1:pos + 1 + size]
        crc = struct.unpack_from(">I", raw, pos + 1 + size)[0]
        assert google_crc32c.value(raw[pos:pos + 1 + size]) == crc, "chunk CRC mismatch"
        out.append((encoding, data))
        pos += 1 + size + 4
    return out


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


@pytest.mark.integration
def test_decode_chunks_written_by_prometheus(tmp_path: Path) -> None:
    """Samples sent to Prometheus by remote_write, written by its TSDB as XOR chunks in a
    block (admin snapshot): our decoder reads every chunk back bit-exact, agrees with its
    query API, and our encoder reproduces each chunk's bytes exactly."""
    from tests.services.prometheus import base_url, start_prometheus

    now = int(time.time() * 1000)
    rng = np.random.default_rng(7)
    n = 400
    # Irregular scrapes (every delta-of-delta bucket), all in the head's appendable hour.
    steps = rng.choice([1, 1875, 1876, 1874, 1125, 8750, 37_500, 300_001], n, p=[
        0.05, 0.5, 0.1, 0.1, 0.1, 0.1, 0.04, 0.01])
    ts = (now - 59 * 60_000 + np.cumsum(steps)).astype(np.int64)
    assert ts[-1] < now - 60_000
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, kind in enumerate(["gauge", "counter", "special"]):
        if kind == "gauge":
            vals = rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5, n)
        elif kind == "counter":
            vals = np.cumsum(rng.integers(0, 1000, n)).astype(np.float64)
        else:
            vals = rng.choice(np.array(SPECIAL_BITS, dtype=np.uint64), n).view(np.float64)
        vals = np.array(vals, dtype=np.float64)
        vals[0] = float(k)  # tells the series apart by their first value
        written[f"xor_test_{kind}"] = (ts, vals)
    payload = body([({"__name__": name, "job": "xor"}, list(zip(t.tolist(), v.tolist(),
                                                                 strict=True)))
                    for name, (t, v) in written.items()])
    prom = start_prometheus(tmp_path / "prom", remote_write_receiver=True, scrape_self=False,
                            extra_flags=["--web.enable-admin-api"])
    try:
        url = base_url(prom)
        _http(f"{url}/api/v1/write", payload,
              {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
               "X-Prometheus-Remote-Write-Version": "0.1.0"})
        snap = json.loads(_http(f"{url}/api/v1/admin/tsdb/snapshot", b""))["data"]["name"]
        api_values: dict[str, list[tuple[int, float]]] = {}
        for name in written:
            q = urllib.parse.urlencode({"query": f"{name}[2h]", "time": (now + 1000) / 1000})
            (result,) = json.loads(_http(f"{url}/api/v1/query?{q}"))["data"]["result"]
            api_values[name] = [(round(float(t) * 1000), float(v)) for t, v in result["values"]]
    finally:
        prom.stop()
    segments = sorted((tmp_path / "prom" / "data" / "snapshots" / snap).glob("*/chunks/*"))
    assert segments, "the snapshot holds no block"
    # A block stores each series' chunks consecutively: regroup them by the first sample.
    by_series: dict[str, list[tuple[np.ndarray, np.ndarray, bytes]]] = {n: [] for n in written}
    current = None
    for seg in segments:
        for encoding, data in read_chunk_segment(seg):
            assert encoding == 1  # XOR
            t, v = xor.decode_chunk_arrays(data)
            first = [name for name, (wt, wv) in written.items()
                     if wt[0] == t[0] and wv.view(np.uint64)[0] == v.view(np.uint64)[0]]
            current = first[0] if first else current
            assert current is not None, "a chunk before any series' first chunk"
            by_series[current].append((t, v, data))
    assert sum(len(c) for c in by_series.values()) >= 3 * len(written), "expected several chunks"
    for name, (wt, wv) in written.items():
        got_t = np.concatenate([t for t, _, _ in by_series[name]])
        got_v = np.concatenate([v for _, v, _ in by_series[name]])
        assert np.array_equal(got_t, wt), name
        assert np.array_equal(got_v.view(np.uint64), wv.view(np.uint64)), name
        # What Prometheus' query API shows (it hides stale markers) agrees too.
        fresh = got_v.view(np.uint64) != STALE_NAN_BITS
        shown = list(zip(got_t[fresh].tolist(), got_v[fresh].tolist(), strict=True))
        assert len(api_values[name]) == len(shown), name
        for (t1, v1), (t2, v2) in zip(api_values[name], shown, strict=True):
            assert t1 == t2 and (v1 == v2 or (math.isnan(v1) and math.isnan(v2))), name
        # And our encoder writes the very bytes Prometheus wrote for the same samples.
        for t, v, data in by_series[name]:
            assert xor.encode_chunk(t.tolist(), v.view(np.uint64).tolist()) == data, name
