"""The compliance harness (compliance/): a stable data set, the suite's expansion, the
tester's comparison rules, and full runs against real Prometheus 2.42 and gob-metrics."""

from __future__ import annotations

import itertools
import json
import math
import struct
from decimal import Decimal
from pathlib import Path

import pytest

from compliance.__main__ import DEFAULT_SUITE_DIR, EXTRA_QUERIES, parser
from compliance.cases import Case, CaseFileError, Template, expand, load_cases, render
from compliance.compare import (
    QueryError,
    QueryResult,
    Series,
    Status,
    Tolerance,
    judge,
    label_set_before,
    values_equal,
)
from compliance.dataset import STALE_NAN_BITS
from compliance.query import decode
from compliance.remote_write import build_dataset
from compliance.run import InstantTimes, RangeWindow, comparison_jobs, spread_times
from gob_metrics.proto.prometheus import remote_pb2

SUITE = DEFAULT_SUITE_DIR / "promql"
# Pinned: a change to the generator (or to how requests are encoded) must be deliberate,
# because every recorded result (docs/compliance.md) is about this exact data set.
DATASET_SHA256 = "724bd2a6e159586488f5eefe1c73d64c0279682be89884d9559b070a694eb068"
NAN = float("nan")
INF = float("inf")
A = {"__name__": "m", "instance": "a", "job": "demo"}
B = {"__name__": "m", "instance": "b", "job": "demo"}


@pytest.fixture(scope="module")
def dataset():
    return build_dataset()


def test_dataset_is_stable(dataset) -> None:
    assert dataset.sha256 == DATASET_SHA256
    assert build_dataset().sha256 == dataset.sha256
    assert (len(dataset.requests), dataset.series, dataset.samples) == (180, 825, 1_776_625)
    assert (dataset.first_ms, dataset.last_ms) == (1_705_276_800_000, 1_705_287_598_721)


def test_dataset_content(dataset) -> None:
    """Time order per series, staleness markers bit-exact, a counter reset, up=0 gap."""
    series: dict[tuple, list[tuple[int, float]]] = {}
    for body in dataset.requests:
        for ts in remote_pb2.WriteRequest.FromString(body).timeseries:
            key = tuple((lb.name, lb.value) for lb in ts.labels)
            assert list(key) == sorted(key)
            series.setdefault(key, []).extend((s.timestamp, s.value) for s in ts.samples)
    bits = {k: [struct.unpack("<Q", struct.pack("<d", v))[0] for _, v in pts]
            for k, pts in series.items()}
    for pts in series.values():
        assert all(a[0] < b[0] for a, b in itertools.pairwise(pts))
    names = {dict(k)["__name__"] for k in series}
    assert {"demo_cpu_usage_seconds_total", "demo_memory_usage_bytes", "demo_num_cpus",
            "demo_disk_usage_bytes", "demo_disk_total_bytes", "demo_items_shipped_total",
            "demo_batch_last_success_timestamp_seconds", "demo_intermittent_metric",
            "demo_api_request_duration_seconds_bucket", "demo_api_request_duration_seconds_sum",
            "demo_api_request_duration_seconds_count", "up"} <= names
    stale = {dict(k)["__name__"] for k, b in bits.items() if STALE_NAN_BITS in b}
    assert "demo_intermittent_metric" in stale
    cpu = [v for k, pts in series.items() if dict(k)["__name__"] == "demo_cpu_usage_seconds_total"
           and dict(k)["instance"].endswith(":10001") and dict(k)["mode"] == "user"
           for _, v in pts if not math.isnan(v)]
    assert any(b < a for a, b in itertools.pairwise(cpu)), "no counter reset"
    up = [v for k, pts in series.items() if dict(k)["__name__"] == "up" for _, v in pts]
    assert up.count(0.0) == 9


def test_expansion_reproduces_expanded_test_cases() -> None:
    cases = load_cases([SUITE / "promql-test-queries.yml"], SUITE / "variant-args.yml")
    expected = json.loads((SUITE / "expanded-test-cases.json").read_text())
    assert [c.as_json() for c in cases] == expected
    assert len(cases) == 539
    assert sum(c.should_fail for c in cases) == 5


def test_extra_cases_expand() -> None:
    cases = load_cases([EXTRA_QUERIES], SUITE / "variant-args.yml")
    assert len(cases) > 40
    assert len({c.query for c in cases}) == len(cases)


@pytest.mark.parametrize(("template", "args", "expected"), [
    ("rate(x[{{.range}}])", {"range": "5m"}, "rate(x[5m])"),
    ("{{ .a }} {{.b}}{{.a}}", {"a": "1", "b": "2"}, "1 21"),
    ('{__name__=~".*"}', {}, '{__name__=~".*"}'),
], ids=["one", "spaces-and-repeats", "no-placeholder"])
def test_render(template: str, args: dict[str, str], expected: str) -> None:
    assert render(template, args) == expected


@pytest.mark.parametrize("template", ["x{{.missing}}", "x{{if .a}}y{{end}}"],
                         ids=["unlisted-placeholder", "template-action"])
def test_render_rejects(template: str) -> None:
    with pytest.raises(CaseFileError):
        render(template, {"a": "1"})


def test_expand_order_first_arg_outer() -> None:
    t = Template(0, "{{.a}}{{.b}}", ("a", "b"))
    got = [c.query for c in expand([t], {"a": ["1", "2"], "b": ["x", "y"]})]
    assert got == ["1x", "1y", "2x", "2y"]


def _m(*series: tuple[dict[str, str], list[tuple[int, float]]]) -> QueryResult:
    return QueryResult("matrix", [Series(dict(lb), pts) for lb, pts in series])


OK = Case(0, "q", "q", False, False)
FAIL = Case(0, "q", "q", True, False)


@pytest.mark.parametrize(("case", "ref", "test", "status"), [
    (OK, _m((A, [(1000, 1.0)])), _m((A, [(1000, 1.0)])), Status.PASSED),
    (OK, _m((A, [(1000, 1.0)])), _m((A, [(1000, 1.0 + 0.9e-5)])), Status.PASSED),
    (OK, _m((A, [(1000, 1.0)])), _m((A, [(1000, 1.0 + 1.1e-5)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 0.0)])), _m((A, [(1000, 1e-300)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, -2.0)])), _m((A, [(1000, -2.00001)])), Status.PASSED),
    (OK, _m((A, [(1000, NAN)])), _m((A, [(1000, NAN)])), Status.PASSED),
    (OK, _m((A, [(1000, NAN)])), _m((A, [(1000, 0.0)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, INF)])), _m((A, [(1000, INF)])), Status.PASSED),
    (OK, _m((A, [(1000, INF)])), _m((A, [(1000, -INF)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, INF)])), _m((A, [(1000, 1e308)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 1.0)])), _m((B, [(1000, 1.0)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 1.0)])), _m(({**A, "x": ""}, [(1000, 1.0)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 1.0)])), _m((A, [(1001, 1.0)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 1.0), (2000, 1.0)])), _m((A, [(1000, 1.0)])), Status.DIFFERENT),
    (OK, _m((A, [(1000, 1.0)])), _m((A, [(1000, 1.0)]), (B, [(1000, 1.0)])),
     Status.DIFFERENT),
    (OK, _m((A, [(1, 1.0)]), (B, [(1, 2.0)])), _m((B, [(1, 2.0)]), (A, [(1, 1.0)])),
     Status.PASSED),
    (OK, _m(), QueryResult("matrix", None), Status.DIFFERENT),
    (OK, _m((A, [(1, 1.0)])), QueryResult("vector", [Series(A, [(1, 1.0)])]),
     Status.DIFFERENT),
    (OK, _m((A, [(1, 1.0)])), QueryError("bad_data: nope"), Status.UNEXPECTED_FAILURE),
    (OK, _m((A, [(1, 1.0)])), QueryError("server_error: server error: 501"),
     Status.UNSUPPORTED),
    (OK, QueryError("bad_data: nope"), _m(), Status.REFERENCE_ERROR),
    (FAIL, QueryError("bad_data: a"), QueryError("bad_data: b"), Status.PASSED),
    (FAIL, QueryError("bad_data: a"), _m(), Status.UNEXPECTED_SUCCESS),
    (FAIL, _m(), QueryError("bad_data: b"), Status.REFERENCE_ERROR),
], ids=[
    "equal", "within-1e-5", "beyond-1e-5", "zero-vs-tiny", "negative-within",
    "nan-nan", "nan-number", "inf-inf", "inf-neg-inf", "inf-huge", "other-labels",
    "extra-empty-label", "timestamp-off-by-1ms", "point-count", "series-count",
    "test-sorted-before-compare", "null-vs-empty", "result-type", "test-error",
    "test-501-unsupported", "reference-error", "should-fail-both-fail",
    "should-fail-test-succeeds", "should-fail-reference-succeeds",
])
def test_judge(case: Case, ref, test, status: Status) -> None:
    assert judge(case, ref, test).status is status


@pytest.mark.parametrize(("x", "y", "tol", "equal"), [
    (100.0, 100.5, Tolerance(0.0, 1.0), True),
    (100.0, 101.5, Tolerance(0.0, 1.0), False),
    (1e6, 1e6 + 10, Tolerance(1e-5, 0.0), True),
], ids=["margin-within", "margin-beyond", "fraction-of-smaller"])
def test_values_equal_tolerance(x: float, y: float, tol: Tolerance, equal: bool) -> None:
    assert values_equal(x, y, tol) is equal


@pytest.mark.parametrize(("a", "b", "before"), [
    ({"a": "1"}, {"a": "1", "b": "1"}, True),
    ({"a": "2", "b": "1"}, {"a": "1", "c": "1"}, False),
    ({"a": "1", "c": "1"}, {"b": "1", "c": "1"}, False),
    ({"b": "1", "c": "1"}, {"a": "1", "c": "1"}, True),
    ({"a": "1"}, {"a": "1"}, False),
], ids=["fewer-labels-first", "longer-set-compares-names", "missing-name-goes-first",
        "missing-name-goes-first-reversed", "equal"])
def test_label_set_before(a: dict[str, str], b: dict[str, str], before: bool) -> None:
    assert label_set_before(a, b) is before


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"1"},'
          b'"values":[[1705286400.123,"NaN"],[1705286410,"+Inf"]]}]}}',
     QueryResult("matrix", [Series({"a": "1"}, [(1705286400123, NAN), (1705286410000, INF)])])),
    (200, b'{"status":"success","data":{"resultType":"matrix","result":null}}',
     QueryResult("matrix", None)),
    (400, b'{"status":"error","errorType":"bad_data","error":"parse error"}',
     QueryError("bad_data: parse error")),
    (404, b"404 page not found", QueryError("client_error: client error: 404: 404 page not found")),
], ids=["matrix-nan-inf-ms", "null", "api-error", "http-error"])
def test_decode(status: int, body: bytes, expected) -> None:
    got = decode(status, body)
    if isinstance(expected, QueryResult):
        assert isinstance(got, QueryResult) and got.result_type == expected.result_type
        assert got.series is None if expected.series is None else (
            [s.labels for s in got.series] == [s.labels for s in expected.series])
        for g, e in zip(got.series or (), expected.series or (), strict=True):
            assert [t for t, _ in g.points] == [t for t, _ in e.points]
            assert all(values_equal(a, b) for (_, a), (_, b) in zip(g.points, e.points,
                                                                      strict=True))
    else:
        assert got == expected


def _v(*series: tuple[dict[str, str], float]) -> QueryResult:
    return QueryResult("vector", [Series(dict(lb), [(1000, v)]) for lb, v in series])


@pytest.mark.parametrize(("ref", "test", "as_sets", "status"), [
    (_v((B, 2.0), (A, 1.0)), _v((A, 1.0), (B, 2.0)), True, Status.PASSED),
    (_v((B, 2.0), (A, 1.0)), _v((B, 2.0), (A, 1.0)), True, Status.PASSED),
    # range rules: the reference is taken in the order Prometheus returns
    (_v((B, 2.0), (A, 1.0)), _v((B, 2.0), (A, 1.0)), False, Status.DIFFERENT),
    (_v((B, 2.0), (A, 1.0)), _v((A, 2.0), (B, 1.0)), True, Status.DIFFERENT),
    (_v((A, 1.0)), _v((A, 1.0), (B, 2.0)), True, Status.DIFFERENT),
    (_v((A, NAN)), _v((A, NAN)), True, Status.PASSED),
    (_v((A, 1.0)), _v((A, 1.0 + 1.1e-5)), True, Status.DIFFERENT),
    (_v((A, 1.0)), QueryResult("vector", [Series(A, [(1001, 1.0)])]), True, Status.DIFFERENT),
    (_v(), QueryResult("vector", None), True, Status.DIFFERENT),
    (QueryResult("scalar", [Series({}, [(1000, 1.0)])]),
     QueryResult("scalar", [Series({}, [(1000, 1.0)])]), True, Status.PASSED),
    (QueryResult("scalar", [Series({}, [(1000, 1.0)])]), _v(({}, 1.0)), True,
     Status.DIFFERENT),
    (QueryResult("string", [Series({}, [(1000, NAN)])], string_value="a"),
     QueryResult("string", [Series({}, [(1000, NAN)])], string_value="a"), True,
     Status.PASSED),
    (QueryResult("string", [Series({}, [(1000, NAN)])], string_value="a"),
     QueryResult("string", [Series({}, [(1000, NAN)])], string_value="b"), True,
     Status.DIFFERENT),
], ids=["vector-other-order", "vector-same-order", "unsorted-reference-without-as-sets",
        "values-swapped", "extra-series", "nan", "beyond-1e-5", "timestamp", "null-vs-empty",
        "scalar", "scalar-vs-vector", "string", "string-text"])
def test_judge_instant(ref, test, as_sets: bool, status: Status) -> None:
    outcome = judge(OK, ref, test, as_sets=as_sets, where="time=1")
    assert outcome.status is status, outcome.detail
    assert outcome.where == "time=1"


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},'
     b'"value":[1705286021.234,"-Inf"]}]}}',
     QueryResult("vector", [Series({"a": "1"}, [(1705286021234, -INF)])])),
    (b'{"status":"success","data":{"resultType":"scalar","result":[1705286021.5,"2.5"]}}',
     QueryResult("scalar", [Series({}, [(1705286021500, 2.5)])])),
    (b'{"status":"success","data":{"resultType":"string","result":[1705286021,"x y"]}}',
     QueryResult("string", [Series({}, [(1705286021000, NAN)])], string_value="x y")),
], ids=["vector", "scalar", "string"])
def test_decode_instant(body: bytes, expected: QueryResult) -> None:
    got = decode(200, body)
    assert isinstance(got, QueryResult)
    assert (got.result_type, got.string_value) == (expected.result_type, expected.string_value)
    assert judge(OK, expected, got).status is Status.PASSED


def test_spread_times() -> None:
    window = RangeWindow(Decimal(1000), Decimal(10), Decimal(1))
    assert spread_times(window, 1) == (Decimal(1000),)
    assert spread_times(window, 3) == (Decimal(990), Decimal(995), Decimal(1000))
    assert [str(t) for t in spread_times(window, 4)] == ["990", "993.333", "996.667", "1000"]
    with pytest.raises(ValueError):
        spread_times(window, 0)


def test_comparison_jobs_order() -> None:
    cases = [Case(0, "a", "a", False, False), Case(1, "b", "b", False, False)]
    assert [(c.query, w) for c, w, _ in comparison_jobs(cases, RangeWindow())] == [
        ("a", ""), ("b", "")]
    jobs = comparison_jobs(cases, InstantTimes((Decimal(1), Decimal("2.5"))))
    assert [(c.query, w) for c, w, _ in jobs] == [
        ("a", "time=1"), ("a", "time=2.5"), ("b", "time=1"), ("b", "time=2.5")]


@pytest.mark.parametrize(("argv", "windows", "instant"), [
    ([], [], None),
    (["--instant-times", "5"], [], 5),
    (["--instant-times", "1705286000,"], [], (Decimal(1705286000),)),
    (["--instant-times", "1705286000,1705286021.234"], [],
     (Decimal(1705286000), Decimal("1705286021.234"))),
    (["--window", "1705287000,1800,7", "--window", "1705286213.5,3600,15"],
     [RangeWindow(Decimal(1705287000), Decimal(1800), Decimal(7)),
      RangeWindow(Decimal("1705286213.5"), Decimal(3600), Decimal(15))], None),
], ids=["default", "count", "one-time", "times", "windows"])
def test_cli_comparisons(argv: list[str], windows, instant) -> None:
    args = parser().parse_args(["run", *argv])
    assert (args.window, args.instant_times) == (windows, instant)


@pytest.mark.parametrize("argv", [["--instant-times", "x"], ["--instant-times", ","],
                                  ["--window", "1,2"], ["--window", "1,600,0"],
                                  ["--step", "-1"], ["--end", "nan"]])
def test_cli_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["run", *argv])


def _run_mode(tmp_path: Path, **options):
    from compliance.run import RunOptions, run

    cases = load_cases([SUITE / "promql-test-queries.yml"], SUITE / "variant-args.yml")
    report = run(cases, RunOptions(workdir=tmp_path, **options))
    failures = "\n".join(f"[{o.status.value}] {o.case.query}: {o.detail}"
                         for o in report.outcomes if not o.passed)
    return report, failures


@pytest.mark.integration
def test_harness_self_check_remote_read_of_reference(tmp_path: Path) -> None:
    """Remote-reading the reference's own data must match it exactly: proves the harness."""
    report, failures = _run_mode(tmp_path, mode="remote-read", read_from="reference")
    assert report.passed == len(report.outcomes) == 539, failures


@pytest.mark.integration
def test_remote_read_through_gob_metrics(tmp_path: Path) -> None:
    """The issue's goal: an empty Prometheus remote-reading gob-metrics passes 539/539."""
    report, failures = _run_mode(tmp_path, mode="remote-read", read_from="gob")
    assert report.passed == len(report.outcomes) == 539, failures
