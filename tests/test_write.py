"""remote_write handler: every status, with what was and was not stored."""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any

import pytest
import snappy

from gob_metrics.app import build_app
from gob_metrics.errors import PayloadTooLarge
from gob_metrics.keys import STORAGE
from gob_metrics.write.decode import parse_write_request
from tests.writes import HEADERS, STALE_NAN, STALE_NAN_BITS, bits, body, count, stored

NOW = int(time.time() * 1000)
UP = {"__name__": "up", "job": "node", "instance": "a:9100"}
GOOD = (UP, [(NOW - 1000, 1.0)])


def snappy_bomb(declared: int) -> bytes:
    """A tiny body whose snappy preamble claims ``declared`` bytes."""
    out = bytearray()
    n = declared
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + b"\x00" * 8


# (id, request body, headers, status, substring of the answer, samples stored)
CASES: list[tuple[str, bytes, dict[str, str], int, str, int]] = [
    ("ok", body([GOOD]), HEADERS, 204, "", 1),
    ("ok-no-content-type", body([GOOD]), {"Content-Encoding": "snappy"}, 204, "", 1),
    ("ok-proto-param", body([GOOD]),
     {**HEADERS, "Content-Type": "application/x-protobuf;proto=prometheus.WriteRequest"}, 204,
     "", 1),
    ("empty-request", body([]), HEADERS, 204, "", 0),
    ("corrupt-snappy", b"\x10\xff\xff\xff\xff", HEADERS, 400, "corrupt snappy", 0),
    ("bad-snappy-preamble", b"\xff" * 12, HEADERS, 400, "corrupt snappy", 0),
    ("empty-body", b"", HEADERS, 400, "empty request body", 0),
    ("corrupt-protobuf", snappy.compress(b"\x0a\xff\xff\xff\x0f"), HEADERS, 400,
     "invalid protobuf", 0),
    ("no-metric-name", body([({"job": "x"}, [(NOW, 1.0)])]), HEADERS, 400,
     "series 0: series has no __name__ label", 0),
    ("no-labels", body([({}, [(NOW, 1.0)])]), HEADERS, 400, "series 0: series has no labels", 0),
    ("duplicate-label", body([([("__name__", "up"), ("job", "a"), ("job", "b")],
                               [(NOW, 1.0)])]), HEADERS, 400,
     "series 0: duplicate label name 'job'", 0),
    ("invalid-utf8-value", body([([("__name__", "up"), ("job", b"\xff\xfe")], [(NOW, 1.0)])]),
     HEADERS, 400, "series 0: label 'job' has a value that is not valid UTF-8", 0),
    ("invalid-label-name", body([([("__name__", "up"), ("bad-name", "x")], [(NOW, 1.0)])]),
     HEADERS, 400, "series 0: invalid label name 'bad-name'", 0),
    ("invalid-metric-name", body([({"__name__": "1up"}, [(NOW, 1.0)])]), HEADERS, 400,
     "series 0: invalid metric name '1up'", 0),
    ("future-sample", body([(UP, [(NOW + 3_600_000, 1.0)])]), HEADERS, 400,
     "series 0: sample timestamp", 0),
    ("partial-valid-kept", body([({"job": "x"}, [(NOW, 1.0)]), GOOD]), HEADERS, 400,
     "1 samples discarded, the rest of the request was stored", 1),
    ("future-partial", body([(UP, [(NOW - 1, 1.0), (NOW + 3_600_000, 2.0)])]), HEADERS, 400,
     "too far in the future", 1),
    ("wrong-content-type", body([GOOD]), {**HEADERS, "Content-Type": "application/json"}, 415,
     "unsupported Content-Type", 0),
    ("remote-write-2", body([GOOD]),
     {**HEADERS, "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"},
     415, "only remote_write 1.0", 0),
    ("no-encoding", body([GOOD]), {"Content-Type": "application/x-protobuf"}, 415,
     "unsupported Content-Encoding ''", 0),
    ("gzip-encoding", body([GOOD]), {**HEADERS, "Content-Encoding": "gzip"}, 415,
     "unsupported Content-Encoding 'gzip'", 0),
    ("snappy-bomb", snappy_bomb(2**31), HEADERS, 413,
     "decompressed body of 2147483648 bytes exceeds write.max_decompressed_bytes=1048576", 0),
    ("decompressed-too-large",
     body([(UP | {"pad": "x" * 2_000_000}, [(NOW, 1.0)])]), HEADERS, 413,
     "exceeds write.max_decompressed_bytes=1048576", 0),
    ("compressed-too-large", b"\x00" * 300_000, HEADERS, 413,
     "exceeds write.max_request_bytes=262144", 0),
]


@pytest.mark.parametrize(("data", "headers", "status", "message", "samples"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_write_statuses(aiohttp_client: Any, make_config: Any, data: bytes,
                              headers: dict[str, str], status: int, message: str,
                              samples: int) -> None:
    cfg = make_config(**{"write.max_request_bytes": "256KiB",
                         "write.max_decompressed_bytes": "1MiB"})
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/v1/write", data=data, headers=headers)
    text = await resp.text()
    assert resp.status == status, text
    assert message in text
    storage = client.app[STORAGE]
    assert await count(storage, "samples") == samples
    if status == 204:
        assert text == ""
    if samples:
        assert [r[:2] for r in await stored(storage)] == [("up", {"job": "node",
                                                                  "instance": "a:9100"})]


async def test_too_many_entries_is_413_and_nothing_stored(aiohttp_client: Any,
                                                          make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(
        **{"write.max_entries_per_request": "100"})))
    many = [({"__name__": "m", "i": str(i)}, [(NOW - 1000, 1.0)]) for i in range(60)]
    resp = await client.post("/api/v1/write", data=body(many), headers=HEADERS)
    assert resp.status == 413
    assert (await resp.text()) == ("request holds more than 100 series, samples and metadata "
                                   "entries: write.max_entries_per_request=100\n")
    assert await count(client.app[STORAGE], "samples") == 0
    resp = await client.post("/api/v1/write", data=body(many[:50]), headers=HEADERS)
    assert resp.status == 204  # 50 series + 50 samples: at the limit, stored
    assert await count(client.app[STORAGE], "samples") == 50


def test_hostile_tiny_entries_stop_at_the_limit_with_bounded_memory() -> None:
    """64 MiB of empty series (2 bytes each, 3 MiB snappy-compressed) would make the
    scanner allocate about 1 GB; the entry limit stops it early."""
    data = b"\x0a\x00" * (32 * 1024 * 1024)
    assert len(snappy.compress(data)) < 4 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match=r"write\.max_entries_per_request=1000000"):
            parse_write_request(data, 1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 1024 * 1024


async def test_push_alias_and_get_not_allowed(gob_client: Any) -> None:
    resp = await gob_client.post("/api/v1/push", data=body([GOOD]), headers=HEADERS)
    assert resp.status == 204
    resp = await gob_client.get("/api/v1/write")
    assert resp.status == 405


async def test_values_bit_exact(gob_client: Any) -> None:
    values = [STALE_NAN, math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308,
              -1.5, 1e-300]
    samples = [(NOW - 10_000 + i, v) for i, v in enumerate(values)]
    resp = await gob_client.post("/api/v1/write", data=body([(UP, samples)]), headers=HEADERS)
    assert resp.status == 204
    rows = await stored(gob_client.app[STORAGE])
    assert [(r[2], r[3]) for r in rows] == [(t, bits(v)) for t, v in samples]
    assert rows[0][3] == STALE_NAN_BITS


async def test_labels_sorted_and_empty_values_dropped(gob_client: Any) -> None:
    reordered = [("job", "node"), ("instance", "a:9100"), ("__name__", "up"), ("zone", "")]
    resp = await gob_client.post(
        "/api/v1/write", headers=HEADERS,
        data=body([(UP, [(NOW - 2000, 1.0)]), (reordered, [(NOW - 1000, 2.0)])]))
    assert resp.status == 204
    storage = gob_client.app[STORAGE]
    rows = await stored(storage)
    # One series: the unsorted label set with an empty-valued label is the same series.
    assert await count(storage, "series") == 1
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("up", {"instance": "a:9100", "job": "node"}, NOW - 2000),
        ("up", {"instance": "a:9100", "job": "node"}, NOW - 1000),
    ]


async def test_out_of_order_and_old_samples_accepted(gob_client: Any) -> None:
    year_ago = NOW - 365 * 86_400_000
    for ts in (NOW - 1000, NOW - 5000, year_ago, NOW - 1000):
        resp = await gob_client.post("/api/v1/write", data=body([(UP, [(ts, 1.0)])]),
                                     headers=HEADERS)
        assert resp.status == 204
    rows = await stored(gob_client.app[STORAGE])
    # The duplicate (same series, timestamp and value) collapses when read with FINAL.
    assert [r[2] for r in rows] == [year_ago, NOW - 5000, NOW - 1000]


async def test_metadata_stored(gob_client: Any) -> None:
    resp = await gob_client.post(
        "/api/v1/write", headers=HEADERS,
        data=body([GOOD], metadata=[("http_requests_total", 1, "Requests served.", ""),
                                    ("node_memory_bytes", 2, "Memory.", "bytes")]))
    assert resp.status == 204
    storage = gob_client.app[STORAGE]
    t = await storage.query(
        f"SELECT metric_family_name AS n, type, help, unit FROM {storage.database}.metadata "
        "ORDER BY n")
    assert t.to_pylist() == [
        {"n": "http_requests_total", "type": "counter", "help": "Requests served.", "unit": ""},
        {"n": "node_memory_bytes", "type": "gauge", "help": "Memory.", "unit": "bytes"},
    ]


async def test_invalid_metadata_utf8_rejected_samples_kept(gob_client: Any) -> None:
    resp = await gob_client.post(
        "/api/v1/write", headers=HEADERS,
        data=body([GOOD], metadata=[("up", 2, "bad \xff".encode("latin-1").decode("latin-1"),
                                     "")]))
    # A str help is valid UTF-8 once encoded; build a truly invalid one from raw bytes.
    assert resp.status == 204
    from gob_metrics.proto.gob import ingest_pb2

    req = ingest_pb2.RawWriteRequest()
    req.metadata.add(metric_family_name=b"up", type=2, help=b"\xff")
    resp = await gob_client.post("/api/v1/write", data=snappy.compress(req.SerializeToString()),
                                 headers=HEADERS)
    assert resp.status == 400
    assert "metadata for b'up' is not valid UTF-8" in await resp.text()


async def test_series_registered_once(gob_client: Any) -> None:
    for i in range(3):
        resp = await gob_client.post("/api/v1/write", data=body([(UP, [(NOW - 1000 + i, 1.0)])]),
                                     headers=HEADERS)
        assert resp.status == 204
    storage = gob_client.app[STORAGE]
    assert await count(storage, "series") == 1
    assert await count(storage, "samples") == 3


async def test_storage_failure_is_503_and_nothing_acknowledged(gob_client: Any) -> None:
    storage = gob_client.app[STORAGE]
    await storage.execute(f"DROP TABLE {storage.database}.samples")
    resp = await gob_client.post("/api/v1/write", data=body([GOOD]), headers=HEADERS)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "insert into samples failed" in await resp.text()
    # The new series was not remembered as registered: a retry would register it again.
    from gob_metrics.keys import SERIES_CACHE

    assert len(gob_client.app[SERIES_CACHE]) == 0


async def test_restart_keeps_data(aiohttp_client: Any, make_config: Any) -> None:
    cfg = make_config()
    client = await aiohttp_client(build_app(cfg))
    samples = [(NOW - 3000, STALE_NAN), (NOW - 2000, 2.5)]
    resp = await client.post("/api/v1/write", data=body([(UP, samples)]), headers=HEADERS)
    assert resp.status == 204
    before = await stored(client.app[STORAGE])
    await client.close()
    client2 = await aiohttp_client(build_app(cfg))
    assert await stored(client2.app[STORAGE]) == before
    assert [r[3] for r in before] == [STALE_NAN_BITS, bits(2.5)]


async def test_stored_encodings_are_counted(gob_client: Any) -> None:
    samples = [(1000, 1.5), (2000, 1.25), (3000, STALE_NAN), (4000, 2.0)]
    resp = await gob_client.post("/api/v1/write", data=body([
        ({"__name__": "a"}, samples), ({"__name__": "b"}, [(1000, 1 / 7), (2000, 0.5)])]),
        headers=HEADERS)
    assert resp.status == 204, await resp.text()
    text = await (await gob_client.get("/metrics")).text()
    # a: three short decimals and a StaleNaN; b: raw from its first value on
    assert 'gob_write_samples_stored_total{encoding="decimal"} 3.0' in text
    assert 'gob_write_samples_stored_total{encoding="raw"} 3.0' in text
