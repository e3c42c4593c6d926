"""The Prometheus metadata API (series, labels, label values, metadata, status) on the
embedded engine, GET and POST form, and its parameter parsing."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from gob_metrics.app import build_app
from gob_metrics.read import api
from tests.readhelpers import module_client
from tests.writes import HEADERS, body

T0 = 1_700_000_000_000  # ms
HOUR = 3_600_000
EARLY = [(T0 + i * 15_000, float(i)) for i in range(10)]  # T0 .. T0 + 135 s
LATE = [(T0 + 2 * HOUR + i * 15_000, float(i)) for i in range(10)]

DATA = [
    ({"__name__": "up", "job": "api", "instance": "a"}, EARLY),
    ({"__name__": "up", "job": "api", "instance": "b"}, LATE),
    ({"__name__": "up", "job": "db", "instance": "a", "env": "prod"}, EARLY + LATE),
    ({"__name__": "node_load1", "job": "node", "zone": "eu"}, LATE),
]
METADATA = [("up", 2, "Whether the target is up.", ""),
            ("node_load1", 2, "1m load average.", ""),
            ("http_requests_total", 1, "Requests served.", ""),
            ("http_requests_total", 1, "Requests served (new help).", "requests")]

UP_A = {"__name__": "up", "instance": "a", "job": "api"}
UP_B = {"__name__": "up", "instance": "b", "job": "api"}
UP_DB = {"__name__": "up", "env": "prod", "instance": "a", "job": "db"}
LOAD = {"__name__": "node_load1", "job": "node", "zone": "eu"}


def secs(ms: int) -> str:
    return f"{ms / 1000:.3f}"


async def load_data(client: Any) -> None:
    resp = await client.post("/api/v1/write", data=body(DATA, metadata=METADATA),
                             headers=HEADERS)
    assert resp.status == 204, await resp.text()


@pytest.fixture
async def client(gob_client: Any) -> Any:
    await load_data(gob_client)
    return gob_client


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One app with DATA loaded, shared by the read-only table cases."""
    async for client in module_client(tmp_path_factory.mktemp("read_api"), load_data):
        yield client


async def call(client: Any, method: str, path: str, params: list[tuple[str, str]]
               ) -> tuple[int, dict[str, Any]]:
    if method == "GET":
        resp = await client.get(path, params=params)
    else:
        resp = await client.post(path, data=params)
    return resp.status, await resp.json()


# (id, path, params, expected data)
OK_CASES: list[tuple[str, str, list[tuple[str, str]], Any]] = [
    ("series-by-name", "/api/v1/series", [("match[]", "up")], [UP_DB, UP_A, UP_B]),
    ("series-union", "/api/v1/series", [("match[]", 'up{job="db"}'), ("match[]", "node_load1")],
     [LOAD, UP_DB]),
    ("series-regex-anchored", "/api/v1/series", [("match[]", '{job=~"ap"}')], []),
    ("series-empty-matcher-selects-absent", "/api/v1/series",
     [("match[]", 'up{env=""}')], [UP_A, UP_B]),
    ("series-name-regex", "/api/v1/series", [("match[]", '{__name__=~"node_.*"}')], [LOAD]),
    ("series-in-range", "/api/v1/series",
     [("match[]", "up"), ("start", secs(T0)), ("end", secs(T0 + HOUR))], [UP_DB, UP_A]),
    ("series-range-rfc3339", "/api/v1/series",
     [("match[]", "up"), ("start", "2023-11-14T22:13:20Z"), ("end", "2023-11-14T23:13:20Z")],
     [UP_DB, UP_A]),
    ("series-only-start", "/api/v1/series",
     [("match[]", "up"), ("start", secs(T0 + HOUR))], [UP_DB, UP_B]),
    ("series-only-end", "/api/v1/series",
     [("match[]", "{job=~\".+\"}"), ("end", secs(T0 + 1000))], [UP_DB, UP_A]),
    ("series-range-between-samples", "/api/v1/series",
     [("match[]", "up"), ("start", secs(T0 + 1)), ("end", secs(T0 + 14_999))], []),
    ("labels-all", "/api/v1/labels", [], ["__name__", "env", "instance", "job", "zone"]),
    ("labels-match", "/api/v1/labels", [("match[]", 'up{job="api"}')],
     ["__name__", "instance", "job"]),
    ("labels-range", "/api/v1/labels", [("start", secs(T0)), ("end", secs(T0 + HOUR))],
     ["__name__", "env", "instance", "job"]),
    ("labels-match-and-range", "/api/v1/labels",
     [("match[]", '{job=~"node|api"}'), ("start", secs(T0 + HOUR))],
     ["__name__", "instance", "job", "zone"]),
    ("values-job", "/api/v1/label/job/values", [], ["api", "db", "node"]),
    ("values-name", "/api/v1/label/__name__/values", [], ["node_load1", "up"]),
    ("values-match", "/api/v1/label/instance/values", [("match[]", 'up{job="db"}')], ["a"]),
    ("values-range", "/api/v1/label/instance/values",
     [("start", secs(T0 + HOUR)), ("end", secs(T0 + 3 * HOUR))], ["a", "b"]),
    ("values-name-range", "/api/v1/label/__name__/values",
     [("end", secs(T0 + HOUR))], ["up"]),
    ("values-absent-label", "/api/v1/label/nothere/values", [], []),
    ("values-match-nothing", "/api/v1/label/job/values", [("match[]", 'x{y=""}')], []),
    ("metadata-all", "/api/v1/metadata", [], {
        "http_requests_total": [
            {"type": "counter", "help": "Requests served.", "unit": ""},
            {"type": "counter", "help": "Requests served (new help).", "unit": "requests"}],
        "node_load1": [{"type": "gauge", "help": "1m load average.", "unit": ""}],
        "up": [{"type": "gauge", "help": "Whether the target is up.", "unit": ""}]}),
    ("metadata-metric", "/api/v1/metadata", [("metric", "up")],
     {"up": [{"type": "gauge", "help": "Whether the target is up.", "unit": ""}]}),
    ("metadata-unknown-metric", "/api/v1/metadata", [("metric", "nope")], {}),
    ("metadata-limit-0", "/api/v1/metadata", [("limit", "0")], {}),
    ("metadata-limit", "/api/v1/metadata", [("limit", "1"), ("limit_per_metric", "1")],
     {"http_requests_total": [{"type": "counter", "help": "Requests served.", "unit": ""}]}),
    ("metadata-negative-limit-is-none", "/api/v1/metadata",
     [("limit", "-1"), ("metric", "node_load1")],
     {"node_load1": [{"type": "gauge", "help": "1m load average.", "unit": ""}]}),
]


# (id, path, params, expected data, truncated)
LIMIT_CASES: list[tuple[str, str, list[tuple[str, str]], Any, bool]] = [
    ("series-truncated", "/api/v1/series", [("match[]", "up"), ("limit", "2")],
     [UP_DB, UP_A], True),
    ("series-exact", "/api/v1/series", [("match[]", "up"), ("limit", "3")],
     [UP_DB, UP_A, UP_B], False),
    ("series-zero-is-none", "/api/v1/series", [("match[]", "up"), ("limit", "0")],
     [UP_DB, UP_A, UP_B], False),
    ("labels-truncated", "/api/v1/labels", [("limit", "2")], ["__name__", "env"], True),
    ("values-truncated", "/api/v1/label/job/values", [("limit", "1")], ["api"], True),
    ("values-exact", "/api/v1/label/job/values", [("limit", "3")], ["api", "db", "node"],
     False),
]


# (id, path, params, status, errorType, message)
BAD_CASES: list[tuple[str, str, list[tuple[str, str]], int, str, str]] = [
    ("series-no-match", "/api/v1/series", [], 400, "bad_data", "no match[] parameter provided"),
    ("series-bad-selector", "/api/v1/series", [("match[]", "up{")], 400, "bad_data",
     'invalid parameter "match[]"'),
    ("series-not-a-selector", "/api/v1/series", [("match[]", "sum(up)")], 400, "bad_data",
     "is not a series selector"),
    ("series-range-selector", "/api/v1/series", [("match[]", "up[5m]")], 400, "bad_data",
     "is not a series selector"),
    ("series-offset", "/api/v1/series", [("match[]", "up offset 5m")], 400, "bad_data",
     "offset, @ and `or` are not allowed"),
    ("series-empty-matching", "/api/v1/series", [("match[]", '{job=~".*"}')], 400, "bad_data",
     "must contain at least one non-empty matcher"),
    ("series-bad-regex", "/api/v1/series", [("match[]", '{job=~"a(b"}')], 400, "bad_data",
     'invalid parameter "match[]"'),
    ("series-go119-named-group", "/api/v1/series", [("match[]", '{job=~"(?<n>a)"}')], 400,
     "bad_data", "named groups must be written (?P<name>...)"),
    ("series-bad-start", "/api/v1/series", [("match[]", "up"), ("start", "yesterday")], 400,
     "bad_data", "invalid parameter \"start\": cannot parse 'yesterday' to a valid timestamp"),
    ("series-bad-end", "/api/v1/series", [("match[]", "up"), ("end", "NaN")], 400, "bad_data",
     'invalid parameter "end"'),
    ("series-end-before-start", "/api/v1/series",
     [("match[]", "up"), ("start", "20"), ("end", "10")], 400, "bad_data",
     "end timestamp must not be before start time"),
    ("series-bad-limit", "/api/v1/series", [("match[]", "up"), ("limit", "x")], 400, "bad_data",
     'invalid parameter "limit"'),
    ("series-negative-limit", "/api/v1/series", [("match[]", "up"), ("limit", "-1")], 400,
     "bad_data", "limit must not be negative"),
    ("labels-bad-match", "/api/v1/labels", [("match[]", "{}")], 400, "bad_data",
     'invalid parameter "match[]"'),
    ("labels-bad-start", "/api/v1/labels", [("start", "2023-13-01T00:00:00Z")], 400,
     "bad_data", 'invalid parameter "start"'),
    ("values-bad-name", "/api/v1/label/a-b/values", [], 400, "bad_data",
     "invalid label name: 'a-b'"),
    ("metadata-bad-limit", "/api/v1/metadata", [("limit", "ten")], 400, "bad_data",
     "limit must be a number"),
    ("metadata-bad-limit-per-metric", "/api/v1/metadata", [("limit_per_metric", "1.5")], 400,
     "bad_data", "limit_per_metric must be a number"),
]


async def test_series_over_the_series_limit_is_422(aiohttp_client: Any, make_config: Any
                                                    ) -> None:
    client = await aiohttp_client(build_app(make_config(
        **{"limits.max_fetched_series_per_query": 2})))
    resp = await client.post("/api/v1/write", data=body(DATA), headers=HEADERS)
    assert resp.status == 204
    status, answer = await call(client, "GET", "/api/v1/series", [("match[]", "up")])
    assert status == 422
    assert answer["errorType"] == "execution"
    assert "max_fetched_series_per_query=2 for tenant 'anonymous'" in answer["error"]
    status, answer = await call(client, "GET", "/api/v1/series",
                                [("match[]", "up"), ("limit", "1")])
    assert status == 200 and answer["data"] == [UP_DB]


async def test_metadata_api_is_tenant_scoped(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(
        **{"tenancy.multitenancy_enabled": True})))
    for tenant, job, meta in [("team-a", "a", METADATA[:1]), ("team-b", "b", METADATA[1:2])]:
        resp = await client.post("/api/v1/write", headers={**HEADERS, "X-Scope-OrgID": tenant},
                                 data=body([({"__name__": "up", "job": job}, EARLY)],
                                           metadata=meta))
        assert resp.status == 204, await resp.text()
    for tenant, job, metric in [("team-a", "a", "up"), ("team-b", "b", "node_load1")]:
        h = {"X-Scope-OrgID": tenant}
        for path, params, want in [
            ("/api/v1/series", {"match[]": "up"}, [{"__name__": "up", "job": job}]),
            ("/api/v1/labels", {}, ["__name__", "job"]),
            ("/api/v1/label/job/values", {}, [job]),
            ("/api/v1/label/job/values", {"start": secs(T0), "end": secs(T0 + HOUR)}, [job]),
        ]:
            resp = await client.get(path, params=params, headers=h)
            assert (await resp.json())["data"] == want, (tenant, path)
        resp = await client.get("/api/v1/metadata", headers=h)
        assert list((await resp.json())["data"]) == [metric]
    resp = await client.get("/api/v1/label/job/values", headers={"X-Scope-OrgID": "team-c"})
    assert (await resp.json())["data"] == []


async def test_duplicate_series_rows_listed_once(client: Any) -> None:
    # Registering the same series again (another process, a lost cache) adds a row.
    from gob_metrics.keys import STORAGE

    storage = client.server.app[STORAGE]
    db = storage.database
    await storage.execute(f"INSERT INTO {db}.series SELECT * FROM {db}.series")
    status, answer = await call(client, "GET", "/api/v1/series", [("match[]", "up")])
    assert status == 200 and answer["data"] == [UP_DB, UP_A, UP_B]
    status, answer = await call(client, "GET", "/api/v1/label/instance/values", [])
    assert status == 200 and answer["data"] == ["a", "b"]


async def test_status_endpoints(client: Any) -> None:
    status, answer = await call(client, "GET", "/api/v1/status/buildinfo", [])
    assert status == 200
    assert answer["data"]["version"] == api.PROMETHEUS_API_VERSION
    assert answer["data"]["application"] == "gob-metrics"
    assert {"revision", "branch", "buildUser", "buildDate", "goVersion"} <= set(answer["data"])
    status, answer = await call(client, "GET", "/api/v1/status/flags", [])
    assert status == 200
    assert answer["data"]["limits.max_fetched_series_per_query"] == "0"
    assert answer["data"]["read.max_bytes_in_frame"] == "1048576"
    assert all(isinstance(v, str) for v in answer["data"].values())
    status, answer = await call(client, "POST", "/api/v1/status/runtimeinfo", [])
    assert status == 200
    assert answer["data"]["startTime"].endswith("Z")
    assert {"CWD", "reloadConfigSuccess", "lastConfigTime", "corruptionCount",
            "goroutineCount", "GOMAXPROCS", "storageRetention"} <= set(answer["data"])


@pytest.mark.parametrize(("text", "ms"), [
    ("1700000000", 1_700_000_000_000),
    ("1700000000.123", 1_700_000_000_123),
    ("1.5", 1500), ("-1.5", -1500), ("0", 0), ("1e3", 1_000_000), (".5", 500),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T22:13:20.781Z", 1_700_000_000_781),
    ("2023-11-14T22:13:20.781999999Z", 1_700_000_000_781),
    ("2023-11-14T22:13:20.5Z", 1_700_000_000_500),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
    ("2023-11-14T20:13:20-02:00", 1_700_000_000_000),
    ("1969-12-31T23:59:59.5Z", -500),
    ("-292273086-05-16T16:47:06Z", None), ("292277025-08-18T07:12:54.999999999Z", None),
], ids=lambda v: str(v))
def test_parse_time(text: str, ms: int | None) -> None:
    assert api.parse_time(text) == ms


@pytest.mark.parametrize("text", ["", "now", "NaN", "Inf", "1e400", "2023-11-14 22:13:20Z",
                                  "2023-11-14T22:13:20", "2023-02-30T00:00:00Z",
                                  "2023-11-14T24:00:00Z", "0x10"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        api.parse_time(text)


@pytest.mark.parametrize(("url", "shown"), [
    ("clickhouse://default:secret@ch:9000/gob", "clickhouse://default:<secret>@ch:9000/gob"),
    ("clickhouse://ch:9000/gob", "clickhouse://ch:9000/gob"),
    ("redis://:pw@localhost:6379/0", "redis://:<secret>@localhost:6379/0"),
])
def test_flags_redact_passwords(url: str, shown: str) -> None:
    assert api.redact(url) == shown


# ------------------------------------------------- the same answers as Prometheus 2.42

DIFF_VALUES = ["a\nb", "a.b", "¥", "ab", "api", "API", "x y", "a\\b", "b", "a", "123", "é"]
DIFF_SELECTORS = [
    'm{v=~"a.b"}', 'm{v=~"(?s)a.b"}', 'm{v=~"."}', 'm{v=~"a"}', 'm{v=~"(?i)api"}',
    'm{v=~"\\\\pL+"}', 'm{v!~"a.*"}', 'm{v=""}', 'm{v!=""}', 'm{v=~"a|"}', 'm{v!~"a|"}',
    'm{v=~"[[:alpha:]]+"}', 'm{v=~"\\\\d+"}', 'm{v=~"a\\\\.b"}', 'm{v=~"x y|é"}',
    'm{v=~"(a)|(b)"}', 'm{v=~"a\\\\\\\\b"}', 'm{v=~"\\\\w+"}', 'm{v=~".*\\\\n.*"}',
    'm{v=~"(?m)^b$"}', 'm{v=~"[^a]"}', '{__name__=~"m|n", v=~"a.+"}', 'm{v=~"\\\\x{a5}"}',
    'm{v=~"(?U)a.*?b"}', 'm{v=~"[\\\\p{Greek}\\\\p{Latin}]"}', 'm{v=~"a\\\\b.*"}',
    'm{v=~"(?s).+\\\\B.+"}',
]


# Not here, because promql-parser checks regexes with Rust's regex crate and refuses two
# that Go accepts, so this API answers 400 where Prometheus answers: 'm{v=~"a)|(b"}'
# (Prometheus compiles "^(?:a)|(b)$": what starts with a or ends with b) and \Q...\E
# quoting. remote_read parses no PromQL and matches both like Prometheus.
@pytest.mark.integration
async def test_series_match_prometheus(client: Any, tmp_path: Any) -> None:
    """Every selector above selects the same series here as in a real Prometheus 2.42
    (/api/v1/series on both, same data sent to both by remote_write)."""
    import asyncio

    import aiohttp

    from tests.services.prometheus import base_url, start_prometheus

    now = T0
    series = [({"__name__": "m", "v": v, "i": str(k)}, [(now, 1.0)])
              for k, v in enumerate(DIFF_VALUES)]
    series += [({"__name__": "m", "i": "none"}, [(now, 1.0)]),
               ({"__name__": "n", "v": "ab"}, [(now, 1.0)])]
    payload = body(series)
    resp = await client.post("/api/v1/write", data=payload, headers=HEADERS)
    assert resp.status == 204
    prom = await asyncio.to_thread(start_prometheus, tmp_path / "prom",
                                   remote_write_receiver=True, scrape_self=False,
                                   extra_flags=["--storage.tsdb.retention.time=100y"])
    try:
        url = base_url(prom)
        async with aiohttp.ClientSession() as session:
            # The head accepts old samples only on an empty TSDB: send everything at once.
            async with session.post(f"{url}/api/v1/write", data=payload, headers=HEADERS) as r:
                assert r.status // 100 == 2, await r.text()
            for selector in DIFF_SELECTORS:
                params = [("match[]", selector), ("start", secs(now - HOUR)),
                          ("end", secs(now + HOUR))]
                async with session.get(f"{url}/api/v1/series", params=params) as r:
                    want = await r.json()
                got = (await call(client, "GET", "/api/v1/series", params))[1]
                assert got.get("data") == want.get("data"), selector
    finally:
        await asyncio.to_thread(prom.stop)


@pytest.mark.asyncio(loop_scope="class")
class TestOnSharedData:
    """Read-only cases on one app loaded once. chdb allows one data path per process at a
    time, so the shared app lives only while this class runs."""

    @pytest.mark.parametrize(("path", "params", "data"), [c[1:] for c in OK_CASES],
                             ids=[c[0] for c in OK_CASES])
    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_ok(self, shared: Any, method: str, path: str, params: list[tuple[str, str]],
                      data: Any) -> None:
        status, answer = await call(shared, method, path, params)
        assert status == 200, answer
        assert answer["status"] == "success"
        if path == "/api/v1/metadata":
            # Entries of one metric are newest first; both help texts arrived together here.
            answer["data"] = {k: sorted(v, key=lambda e: e["help"])
                              for k, v in answer["data"].items()}
            data = {k: sorted(v, key=lambda e: e["help"]) for k, v in data.items()}
            if "limit_per_metric" in dict(params):
                assert len(answer["data"]["http_requests_total"]) == 1
                answer["data"]["http_requests_total"] = data["http_requests_total"]
        assert answer["data"] == data
        assert "warnings" not in answer

    @pytest.mark.parametrize(("path", "params", "data", "truncated"),
                             [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES])
    async def test_limit_param(self, shared: Any, path: str, params: list[tuple[str, str]],
                               data: Any, truncated: bool) -> None:
        status, answer = await call(shared, "GET", path, params)
        assert status == 200, answer
        assert answer["data"] == data
        warnings = ["results truncated due to limit"] if truncated else []
        assert answer.get("warnings", []) == warnings

    @pytest.mark.parametrize(("path", "params", "status", "error_type", "message"),
                             [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
    async def test_bad_params(self, shared: Any, path: str, params: list[tuple[str, str]],
                              status: int, error_type: str, message: str) -> None:
        got, answer = await call(shared, "GET", path, params)
        assert got == status, answer
        if status != 200:
            assert answer["status"] == "error"
            assert answer["errorType"] == error_type
            assert message in answer["error"]
