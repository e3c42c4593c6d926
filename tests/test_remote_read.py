"""POST /api/v1/read on the embedded engine: matcher semantics, ranges, dedup, limits,
every bad input, and streamed (XOR chunk) answers equal to SAMPLES answers."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import snappy

from gob_metrics.app import build_app
from gob_metrics.proto.prometheus import remote_pb2, types_pb2
from gob_metrics.read import codec, xor
from tests.readhelpers import module_client
from tests.writes import HEADERS, STALE_NAN, STALE_NAN_BITS, bits, body

T0 = 1_700_000_000_000
STEP = 15_000
N = 10
EQ, NEQ, RE, NRE = (types_pb2.LabelMatcher.EQ, types_pb2.LabelMatcher.NEQ,
                    types_pb2.LabelMatcher.RE, types_pb2.LabelMatcher.NRE)
READ_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Read-Version": "0.1.0"}
STREAMED = [remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS, remote_pb2.ReadRequest.SAMPLES]

# The data set every table case reads: short name -> labels. Series k has N samples at
# T0 + i*STEP with value k*100 + i.
SERIES: dict[str, dict[str, str]] = {
    "api_a": {"__name__": "up", "job": "api", "instance": "a"},
    "api_b": {"__name__": "up", "job": "api", "instance": "b"},
    "db_a": {"__name__": "up", "job": "db", "instance": "a", "env": "prod"},
    "ab": {"__name__": "up", "job": "ab"},
    "cpu": {"__name__": "node_cpu_seconds_total", "job": "api", "mode": "idle"},
    "newline": {"__name__": "text", "note": "a\nb"},
    "yen": {"__name__": "text", "note": "¥"},
    "dots": {"__name__": "text", "note": "a.b"},
    "backslash": {"__name__": "text", "note": "a\\b"},
}
NAMES = list(SERIES)


def samples_of(name: str) -> list[tuple[int, float]]:
    k = NAMES.index(name)
    return [(T0 + i * STEP, float(k * 100 + i)) for i in range(N)]


def read_request(*queries: tuple[Sequence[tuple[int, str, str]], int, int],
                 accepted: Sequence[int] = ()) -> bytes:
    req = remote_pb2.ReadRequest(accepted_response_types=list(accepted))
    for matchers, start, end in queries:
        q = req.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
        for mtype, name, value in matchers:
            q.matchers.add(type=mtype, name=name, value=value)
    return snappy.compress(req.SerializeToString())


async def load(client: Any, series: Sequence[tuple[dict[str, str], Sequence[tuple[int, float]]]]
               ) -> None:
    resp = await client.post("/api/v1/write", data=body(series), headers=HEADERS)
    assert resp.status == 204, await resp.text()


async def load_all(client: Any) -> None:
    await load(client, [(labels, samples_of(name)) for name, labels in SERIES.items()])


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One app with SERIES loaded, shared by the read-only table cases."""
    async for client in module_client(tmp_path_factory.mktemp("remote_read"), load_all):
        yield client


def as_dicts(result: remote_pb2.QueryResult) -> list[tuple[dict[str, str], list[tuple[int, int]]]]:
    return [({lb.name: lb.value for lb in ts.labels},
             [(s.timestamp, bits(s.value)) for s in ts.samples]) for ts in result.timeseries]


async def read_samples(client: Any, data: bytes) -> remote_pb2.ReadResponse:
    resp = await client.post("/api/v1/read", data=data, headers=READ_HEADERS)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/x-protobuf"
    assert resp.headers["Content-Encoding"] == "snappy"
    out = remote_pb2.ReadResponse()
    out.ParseFromString(snappy.uncompress(await resp.read()))
    return out


async def read_streamed(client: Any, data: bytes) -> list[list[tuple[dict[str, str],
                                                                      list[tuple[int, int]]]]]:
    """A streamed answer decoded into the shape of as_dicts(), one list per query."""
    resp = await client.post("/api/v1/read", data=data, headers=READ_HEADERS)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == codec.STREAMED_CONTENT_TYPE
    return _frames_by_query(await resp.read())


def _frames_to_dicts(raw: bytes) -> list[tuple[dict[str, str], list[tuple[int, int]]]]:
    results = _frames_by_query(raw)
    return results[0] if results else []


def _frames_by_query(raw: bytes) -> list[list[tuple[dict[str, str], list[tuple[int, int]]]]]:
    results: dict[int, list[tuple[dict[str, str], list[tuple[int, int]]]]] = {}
    for frame in codec.read_frames(raw):
        out = results.setdefault(frame.query_index, [])
        for cs in frame.chunked_series:
            labels = {lb.name: lb.value for lb in cs.labels}
            samples = []
            for ch in cs.chunks:
                assert ch.type == types_pb2.Chunk.XOR
                ts, vals = xor.decode_chunk(ch.data)
                assert len(ts) <= xor.MAX_SAMPLES_PER_CHUNK
                assert (ch.min_time_ms, ch.max_time_ms) == (ts[0], ts[-1])
                samples.extend(zip(ts, vals, strict=True))
            if out and out[-1][0] == labels:  # a series continued in the next frame
                out[-1][1].extend(samples)
            else:
                out.append((labels, samples))
    return [results.get(i, []) for i in range(max(results, default=-1) + 1)]


def expected(names: Sequence[str], start: int = T0, end: int = T0 + N * STEP
             ) -> list[tuple[dict[str, str], list[tuple[int, int]]]]:
    rows = [(SERIES[n], [(t, bits(v)) for t, v in samples_of(n) if start <= t <= end])
            for n in names]
    rows = [r for r in rows if r[1]]
    return sorted(rows, key=lambda r: sorted(r[0].items()))


# (id, matchers, [start, end] or None for all, series expected)
MATCHER_CASES: list[tuple[str, list[tuple[int, str, str]], tuple[int, int] | None, list[str]]] = [
    ("eq-name", [(EQ, "__name__", "up")], None, ["api_a", "api_b", "db_a", "ab"]),
    ("eq-label", [(EQ, "__name__", "up"), (EQ, "job", "api")], None, ["api_a", "api_b"]),
    ("neq", [(EQ, "__name__", "up"), (NEQ, "job", "api")], None, ["db_a", "ab"]),
    ("re", [(RE, "job", "api|db")], None, ["api_a", "api_b", "db_a", "cpu"]),
    ("nre", [(EQ, "__name__", "up"), (NRE, "job", "a.*")], None, ["db_a"]),
    ("re-anchored", [(RE, "job", "a")], None, []),
    ("re-anchored-prefix", [(RE, "job", "ap")], None, []),
    ("re-anchored-ab", [(RE, "job", "ab")], None, ["ab"]),
    ("re-prefix-wildcard", [(RE, "job", "a.*")], None, ["api_a", "api_b", "ab", "cpu"]),
    ("re-alternation-anchored", [(RE, "job", "a|api")], None, ["api_a", "api_b", "cpu"]),
    ("name-regex", [(RE, "__name__", "u.|node_.+")], None,
     ["api_a", "api_b", "db_a", "ab", "cpu"]),
    ("name-nre", [(NRE, "__name__", "up|text"), (RE, "job", ".+")], None, ["cpu"]),
    ("eq-empty-selects-absent", [(EQ, "__name__", "up"), (EQ, "env", "")], None,
     ["api_a", "api_b", "ab"]),
    ("neq-empty-requires-label", [(EQ, "__name__", "up"), (NEQ, "env", "")], None, ["db_a"]),
    ("re-matching-empty-selects-absent", [(EQ, "__name__", "up"), (RE, "env", "prod|")], None,
     ["api_a", "api_b", "db_a", "ab"]),
    ("re-dotstar-selects-absent", [(EQ, "__name__", "up"), (RE, "instance", ".*")], None,
     ["api_a", "api_b", "db_a", "ab"]),
    ("re-dotplus-requires-label", [(EQ, "__name__", "up"), (RE, "instance", ".+")], None,
     ["api_a", "api_b", "db_a"]),
    ("nre-empty-requires-label", [(EQ, "__name__", "up"), (NRE, "env", "")], None, ["db_a"]),
    ("nre-not-matching-empty-selects-absent", [(EQ, "__name__", "up"), (NRE, "env", "prod")],
     None, ["api_a", "api_b", "ab"]),
    ("unknown-label-eq-empty", [(EQ, "job", "db"), (EQ, "nonexistent", "")], None, ["db_a"]),
    ("dot-does-not-match-newline", [(RE, "note", "a.b")], None, ["dots", "backslash"]),
    ("dotall-flag-matches-newline", [(RE, "note", "(?s)a.b")], None,
     ["newline", "dots", "backslash"]),
    ("eq-newline-value", [(EQ, "note", "a\nb")], None, ["newline"]),
    ("eq-backslash-value", [(EQ, "note", "a\\b")], None, ["backslash"]),
    ("neq-backslash-value", [(EQ, "__name__", "text"), (NEQ, "note", "a\\b")], None,
     ["newline", "yen", "dots"]),
    ("re-escaped-backslash", [(RE, "note", "a\\\\b")], None, ["backslash"]),
    ("re-newline-escape", [(RE, "note", "a\\nb")], None, ["newline"]),
    ("re-tab-and-quote-escapes", [(RE, "note", "[\\t'\\\\]|a.b")], None,
     ["dots", "backslash"]),
    ("dot-matches-one-utf8-char", [(RE, "note", ".")], None, ["yen"]),
    ("escaped-dot", [(RE, "note", "a\\.b")], None, ["dots"]),
    # Prometheus concatenates "^(?:" + re + ")$": this regex escapes its group the same way.
    ("re-group-breakout-like-prometheus", [(RE, "job", "a)|(b")], None,
     ["api_a", "api_b", "db_a", "ab", "cpu"]),
    ("re-quoted-literal", [(RE, "note", "\\Qa.b\\E")], None, ["dots"]),
    ("case-insensitive-flag", [(RE, "job", "(?i)API")], None, ["api_a", "api_b", "cpu"]),
    ("perl-class", [(RE, "instance", "\\w")], None, ["api_a", "api_b", "db_a"]),
    ("no-match", [(EQ, "__name__", "nope")], None, []),
    ("range-inclusive", [(EQ, "__name__", "up"), (EQ, "instance", "a")],
     (T0 + STEP, T0 + 3 * STEP), ["api_a", "db_a"]),
    ("range-single-ms", [(EQ, "job", "ab")], (T0 + 2 * STEP, T0 + 2 * STEP), ["ab"]),
    ("range-between-samples", [(EQ, "job", "ab")], (T0 + 1, T0 + STEP - 1), []),
    ("range-before-data", [(EQ, "job", "ab")], (0, T0 - 1), []),
    ("range-huge", [(EQ, "job", "ab")], (-(2**63), 2**63 - 1), ["ab"]),
]


async def test_stale_nan_and_special_values_are_bit_exact(gob_client: Any) -> None:
    nan_payload = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000123))[0]
    values = [1.0, STALE_NAN, -0.0, float("inf"), float("-inf"), nan_payload, 5e-324, 2.0]
    await load(gob_client, [({"__name__": "special"}, [(T0 + i, v) for i, v in
                                                       enumerate(values)])])
    want = [({"__name__": "special"}, [(T0 + i, bits(v)) for i, v in enumerate(values)])]
    query = ([(EQ, "__name__", "special")], T0, T0 + 100)
    got = await read_samples(gob_client, read_request(query))
    assert as_dicts(got.results[0]) == want
    assert got.results[0].timeseries[0].samples[1].value != 0  # NaN, not a dropped field
    assert bits(got.results[0].timeseries[0].samples[1].value) == STALE_NAN_BITS
    assert (await read_streamed(gob_client, read_request(query, accepted=STREAMED)))[0] == want


async def test_duplicate_rows_are_read_once_last_write_wins(gob_client: Any) -> None:
    labels = {"__name__": "dup", "job": "x"}
    await load(gob_client, [(labels, [(T0, 1.0), (T0 + 1000, 2.0)])])
    await load(gob_client, [(labels, [(T0, 1.0), (T0 + 1000, 2.0)])])  # a sender's retry
    await load(gob_client, [(labels, [(T0 + 1000, 3.0), (T0 + 2000, 4.0)])])
    query = ([(EQ, "__name__", "dup")], T0, T0 + 5000)
    want = [(labels, [(T0, bits(1.0)), (T0 + 1000, bits(3.0)), (T0 + 2000, bits(4.0))])]
    got = await read_samples(gob_client, read_request(query))
    assert as_dicts(got.results[0]) == want
    assert (await read_streamed(gob_client, read_request(query, accepted=STREAMED)))[0] == want


# (id, config overrides, matchers, status, message)
LIMIT_CASES = [
    ("series-at-limit", {"limits.max_fetched_series_per_query": 3}, [(EQ, "job", "api")], 200,
     ""),
    ("series-over-limit", {"limits.max_fetched_series_per_query": 2}, [(EQ, "job", "api")],
     422, "more than 2 series with samples in its time range "
     "(max_fetched_series_per_query=2 for tenant 'anonymous')"),
    ("samples-at-limit", {"limits.max_fetched_chunks_per_query": 3 * N}, [(EQ, "job", "api")],
     200, ""),
    ("samples-over-limit", {"limits.max_fetched_chunks_per_query": 3 * N - 1},
     [(EQ, "job", "api")], 422, f"more than {3 * N - 1} samples "
     f"(max_fetched_chunks_per_query={3 * N - 1} for tenant 'anonymous', counted in samples)"),
    ("query-length-at-limit", {"limits.max_query_length": "150s"}, [(EQ, "job", "api")], 200,
     ""),
    ("query-length-over-limit", {"limits.max_query_length": "1m"}, [(EQ, "job", "api")],
     422, "query 0: the time range of 150000 ms exceeds max_query_length=1m for tenant "
     "'anonymous'"),
    ("unlimited", {"limits.max_fetched_series_per_query": 0,
                   "limits.max_fetched_chunks_per_query": 0}, [(EQ, "job", "api")], 200, ""),
]


@pytest.mark.parametrize(("overrides", "matchers", "status", "message"),
                         [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES])
@pytest.mark.parametrize("accepted", [[], STREAMED], ids=["samples", "streamed"])
async def test_limits(aiohttp_client: Any, make_config: Any, overrides: dict[str, Any],
                      matchers: list[tuple[int, str, str]], status: int, message: str,
                      accepted: list[int]) -> None:
    client = await aiohttp_client(build_app(make_config(**overrides)))
    await load_all(client)
    resp = await client.post("/api/v1/read", headers=READ_HEADERS, data=read_request(
        (matchers, T0, T0 + N * STEP), accepted=accepted))
    text = await resp.text() if resp.status != 200 else ""
    assert resp.status == status, text
    assert message in text
    if status != 200:
        assert resp.headers["Content-Type"].startswith("application/json")
        assert (await resp.json())["errorType"] == "execution"


async def test_reads_are_tenant_scoped(aiohttp_client: Any, make_config: Any) -> None:
    """The same series written by two tenants: each reads only its own samples."""
    client = await aiohttp_client(build_app(make_config(
        **{"tenancy.multitenancy_enabled": True})))
    labels = {"__name__": "up", "job": "api"}
    for tenant, value in [("team-a", 1.0), ("team-b", 2.0)]:
        resp = await client.post("/api/v1/write", data=body([(labels, [(T0, value)])]),
                                 headers={**HEADERS, "X-Scope-OrgID": tenant})
        assert resp.status == 204, await resp.text()
    query = read_request(([(EQ, "job", "api")], T0, T0))
    for tenant, value in [("team-a", 1.0), ("team-b", 2.0), ("team-c", None)]:
        for accepted in ([], STREAMED):
            resp = await client.post("/api/v1/read", headers={
                **READ_HEADERS, "X-Scope-OrgID": tenant}, data=read_request(
                ([(EQ, "job", "api")], T0, T0), accepted=accepted))
            assert resp.status == 200
            raw = await resp.read()
            if accepted:
                got = [(labels, [(ts, bits_) for ts, bits_ in s]) for labels, s in
                       _frames_to_dicts(raw)]
            else:
                out = remote_pb2.ReadResponse()
                out.ParseFromString(snappy.uncompress(raw))
                got = as_dicts(out.results[0])
            want = [] if value is None else [(labels, [(T0, bits(value))])]
            assert got == want, (tenant, accepted)
    resp = await client.post("/api/v1/read", headers=READ_HEADERS, data=query)
    assert resp.status == 401


def _bad_type_request() -> bytes:
    req = remote_pb2.ReadRequest()
    q = req.queries.add(start_timestamp_ms=0, end_timestamp_ms=1)
    q.matchers.add(name="job", value="api").type = 7  # proto3 keeps unknown enum values
    return snappy.compress(req.SerializeToString())


OK_QUERY = ([(EQ, "job", "api")], T0, T0 + 1)

# (id, body, headers, status, substring of the answer)
BAD_CASES: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("empty-body", b"", READ_HEADERS, 400, "empty request body"),
    ("corrupt-snappy", b"\x10\xff\xff\xff\xff", READ_HEADERS, 400, "corrupt snappy"),
    ("bad-snappy-preamble", b"\xff" * 12, READ_HEADERS, 400, "corrupt snappy"),
    ("corrupt-protobuf", snappy.compress(b"\x0a\xff\xff\xff\x0f"), READ_HEADERS, 400,
     "invalid protobuf ReadRequest"),
    ("not-snappy", remote_pb2.ReadRequest().SerializeToString() + b"\x0a\x00", READ_HEADERS,
     400, "corrupt snappy"),
    ("no-queries", read_request(), READ_HEADERS, 400, "the ReadRequest has no queries"),
    ("no-matchers", read_request(([], 0, 1)), READ_HEADERS, 400,
     "query 0: a selector needs at least one matcher"),
    ("empty-matching-eq", read_request(([(EQ, "job", "")], 0, 1)), READ_HEADERS, 400,
     'selector {job=""} must contain at least one matcher that does not match the empty'),
    ("empty-matching-regex", read_request(([(RE, "job", ".*"), (NEQ, "x", "y")], 0, 1)),
     READ_HEADERS, 400, "must contain at least one matcher that does not match the empty"),
    ("invalid-regex", read_request(OK_QUERY, ([(RE, "job", "a(b")], 0, 1)), READ_HEADERS, 400,
     "query 1: invalid regular expression 'a(b' in matcher job=~: missing ): "),
    ("backreference", read_request(([(RE, "job", "(a)\\1")], 0, 1)), READ_HEADERS, 400,
     "invalid regular expression '(a)\\\\1'"),
    ("any-byte-escape", read_request(([(NRE, "job", "a\\C")], 0, 1)), READ_HEADERS, 400,
     "\\C (match any byte) is not supported"),
    ("go119-named-group", read_request(([(RE, "job", "(?<n>a)")], 0, 1)), READ_HEADERS, 400,
     "named groups must be written (?P<name>...)"),
    ("lookahead", read_request(([(RE, "job", "a(?=b)")], 0, 1)), READ_HEADERS, 400,
     "invalid regular expression"),
    ("inverted-range", read_request(([(EQ, "job", "api")], 10, 9)), READ_HEADERS, 400,
     "query 0: start time 10 ms is after end time 9 ms"),
    ("unknown-matcher-type", _bad_type_request(), READ_HEADERS, 400,
     "query 0: unknown matcher type 7"),
    ("unsupported-response-type", read_request(OK_QUERY, accepted=[5]), READ_HEADERS, 400,
     "server does not support any of the requested response types [5]"),
    ("gzip-encoding", read_request(OK_QUERY), {**READ_HEADERS, "Content-Encoding": "gzip"}, 415,
     "unsupported Content-Encoding 'gzip'"),
    ("snappy-bomb", b"\x80\x80\x80\x80\x08" + b"\x00" * 8, READ_HEADERS, 413,
     "decompressed body of 2147483648 bytes exceeds read.max_decompressed_bytes=4194304"),
    ("body-too-large", b"\x00" * (1024 * 1024 + 1), READ_HEADERS, 413,
     "exceeds read.max_request_bytes=1048576"),
]


@pytest.mark.parametrize("text", ["a\\b", "a\\\\b", "a\nb\tc\r", "\\N", "it's", "\\",
                                  "x\\", "¥\x00"], ids=repr)
async def test_bound_strings_arrive_verbatim(gob_client: Any, text: str) -> None:
    """Label values and regexes are bound parameters: storage must pass them unchanged."""
    from gob_metrics.keys import STORAGE

    storage = gob_client.server.app[STORAGE]
    table = await storage.query("SELECT {s:String} AS s, {a:Array(String)} AS a",
                                {"s": text, "a": [text, "x"]})
    assert table.column("s").to_pylist() == [text]
    assert table.column("a").to_pylist() == [[text, "x"]]


async def test_no_headers_accepted(gob_client: Any) -> None:
    await load_all(gob_client)
    resp = await gob_client.post("/api/v1/read", data=read_request(OK_QUERY))
    assert resp.status == 200


def _series_of(rng: np.random.Generator, n: int) -> list[tuple[int, float]]:
    ts = T0 + np.cumsum(rng.integers(1, 40_000, n))
    vals = rng.standard_normal(n)
    vals[rng.integers(0, n, max(1, n // 50))] = STALE_NAN
    return list(zip(ts.tolist(), vals.tolist(), strict=True))


@pytest.mark.parametrize(("batch", "frame_bytes"), [(500_000, 1 << 20), (240, 1 << 20),
                                                    (240, 300), (1000, 1)],
                         ids=["defaults", "small-batches", "small-frames", "tiny-everything"])
async def test_streamed_equals_samples(aiohttp_client: Any, make_config: Any, batch: int,
                                       frame_bytes: int) -> None:
    """Series of 1..1000 samples (several bigger than a fetch batch, so fetched in pages;
    several small ones grouped in one fetch) answer the same both ways."""
    client = await aiohttp_client(build_app(make_config(**{
        "read.stream_batch_samples": batch, "read.max_bytes_in_frame": frame_bytes})))
    rng = np.random.default_rng(3)
    sizes = [1, 2, 119, 120, 121, 239, 240, 241, 1000, 7, 480, 3]
    await load(client, [({"__name__": "big", "i": f"{k:02d}"}, _series_of(rng, n))
                        for k, n in enumerate(sizes)])
    queries = [([(EQ, "__name__", "big")], T0, T0 + 10**9),
               ([(RE, "i", "0[0-4]|1.")], T0 + 100_000, T0 + 5_000_000)]
    samples = await read_samples(client, read_request(*queries))
    want = [as_dicts(r) for r in samples.results]
    # Query 1 selects 7 series, of which 4 have samples in its range (series with no
    # sample in the range are not returned).
    assert [len(r) for r in want] == [len(sizes), 4]
    assert sum(len(s) for _, s in want[0]) == sum(sizes)
    assert await read_streamed(client, read_request(*queries, accepted=STREAMED)) == want


@pytest.mark.parametrize(("sizes", "budget", "groups"), [
    ([1, 2, 3], 10, [[0, 1, 2]]),
    ([5, 5, 5], 10, [[0, 1], [2]]),
    ([20, 1, 1], 10, [[0], [1, 2]]),
    ([1, 20, 1], 10, [[0], [1], [2]]),
    ([10, 10], 10, [[0], [1]]),
    ([], 10, []),
], ids=["fits", "split", "big-first", "big-middle", "exact", "empty"])
def test_stream_groups(sizes: list[int], budget: int, groups: list[list[int]]) -> None:
    from gob_metrics.read.remote_read import _groups
    from gob_metrics.read.select import SeriesRef

    refs = [SeriesRef(i, (("__name__", str(i)),), n) for i, n in enumerate(sizes)]
    assert [[r.series_id for r in g] for g in _groups(refs, budget)] == groups


@pytest.mark.asyncio(loop_scope="class")
class TestOnSharedData:
    """Read-only cases on one app loaded once. chdb allows one data path per process at a
    time, so the shared app lives only while this class runs."""

    @pytest.mark.parametrize(("matchers", "span", "names"), [c[1:] for c in MATCHER_CASES],
                             ids=[c[0] for c in MATCHER_CASES])
    async def test_matchers(self, loaded: Any, matchers: list[tuple[int, str, str]],
                            span: tuple[int, int] | None, names: list[str]) -> None:
        gob_client = loaded
        start, end = span or (0, T0 + 10 * N * STEP)
        want = expected(names, start, end)
        got = await read_samples(gob_client, read_request((matchers, start, end)))
        assert len(got.results) == 1
        assert as_dicts(got.results[0]) == want
        streamed = await read_streamed(gob_client, read_request((matchers, start, end),
                                                                accepted=STREAMED))
        assert (streamed[0] if streamed else []) == want

    async def test_multiple_queries_answer_in_query_order(self, loaded: Any) -> None:
        gob_client = loaded
        span = (T0, T0 + N * STEP)
        queries = [([(EQ, "job", "db")], *span), ([(EQ, "__name__", "nope")], *span),
                   ([(EQ, "job", "api")], *span), ([(EQ, "job", "db")], T0, T0)]
        got = await read_samples(gob_client, read_request(*queries))
        assert [as_dicts(r) for r in got.results] == [
            expected(["db_a"]), [], expected(["api_a", "api_b", "cpu"]),
            expected(["db_a"], T0, T0)]
        streamed = await read_streamed(gob_client, read_request(*queries, accepted=STREAMED))
        assert streamed == [expected(["db_a"]), [], expected(["api_a", "api_b", "cpu"]),
                            expected(["db_a"], T0, T0)]

    @pytest.mark.parametrize(("data", "headers", "status", "message"),
                             [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
    async def test_bad_requests(self, loaded: Any, data: bytes, headers: dict[str, str],
                                status: int, message: str) -> None:
        resp = await loaded.post("/api/v1/read", data=data, headers=headers)
        answer = await resp.json()
        assert resp.status == status, answer
        assert answer["status"] == "error" and answer["errorType"] == "bad_data"
        assert message in answer["error"]
