"""Compare the query results of a reference and a system under test, with the rules of the
Prometheus PromQL compliance tester (../shared/compliance/promql/tester-defaults.yml, read
from prometheus/compliance ``promql/comparer/comparer.go``):

* a ``should_fail`` case passes when both systems answer with an error; the reference
  succeeding is a harness error, the test target succeeding is an *unexpected success*;
* any other case: an error from the test target is an *unexpected failure* (*unsupported*
  when its text contains ``501``); otherwise the results must be equal;
* equal means: same result type; the same number of series in the same order, the test
  result having been sorted first (the reference is taken as returned); label sets equal
  exactly; per series the same number of points with identical millisecond timestamps;
  values equal as go-cmp's ``EquateApprox(fraction, margin)`` and ``EquateNaNs`` define it
  (±Inf only equal themselves, NaN equals NaN);
* the two orders differ (Prometheus sorts by ``labels.Compare``, the tester re-sorts the
  test result by ``LabelSet.Before``, fewer labels first), so a result that mixes label
  sets of different sizes can differ even from itself; no upstream case does that;
* a ``null`` result is not the same as an empty one (go-cmp tells a nil slice from an
  empty one unless told otherwise, and the tester does not tell it).

The Go tester only runs range queries. Instant queries (``/api/v1/query``) are judged by the
same rules with one change, ``judge(..., as_sets=True)``: Prometheus does not sort an
instant vector (nor the matrix of a bare range selector), so both results are sorted before
they are compared, i.e. compared as sets of series. A scalar is one point; a string result
compares its text exactly (and its timestamp).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from compliance.cases import Case

DEFAULT_FRACTION = 1e-5
DEFAULT_MARGIN = 0.0


@dataclass(frozen=True)
class Series:
    """One series of a range-query result: its labels and its (ms timestamp, value) points."""

    labels: dict[str, str]
    points: Sequence[tuple[int, float]]


@dataclass(frozen=True)
class QueryResult:
    """A successful answer. ``series`` is None when the API answered ``"result": null``."""

    result_type: str
    series: Sequence[Series] | None
    #: not compared (the tester ignores them), but shown with a difference: a Prometheus
    #: whose remote_read fails answers an empty result with the error as a warning.
    warnings: tuple[str, ...] = ()
    #: the text of a ``string`` result (its one point carries the timestamp and NaN)
    string_value: str | None = None


@dataclass(frozen=True)
class QueryError:
    """A failed query, as the tester's client would report it."""

    message: str


Answer = QueryResult | QueryError


class Status(Enum):
    PASSED = "passed"
    DIFFERENT = "different result"
    UNEXPECTED_FAILURE = "unexpected failure"
    UNSUPPORTED = "unsupported"
    UNEXPECTED_SUCCESS = "unexpected success"
    REFERENCE_ERROR = "reference error"


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: Status
    detail: str = ""
    #: series in the reference answer (None when it failed): 0 means the case compared
    #: two empty results, which proves little about the data path.
    reference_series: int | None = None
    #: where the case was run when it is not the only place, e.g. ``time=1705286021.234``
    #: for an instant query (empty for the range window of a comparison)
    where: str = ""

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


@dataclass(frozen=True)
class Tolerance:
    fraction: float = DEFAULT_FRACTION
    margin: float = DEFAULT_MARGIN


def values_equal(x: float, y: float, tol: Tolerance = Tolerance()) -> bool:
    """go-cmp ``EquateApprox`` + ``EquateNaNs`` on two sample values."""
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= max(tol.margin, tol.fraction * min(abs(x), abs(y)))


def label_set_before(a: dict[str, str], b: dict[str, str]) -> bool:
    """prometheus/common ``LabelSet.Before``: fewer labels first; else, walking the sorted
    union of names, the first name missing from one side puts that side first, and the
    first differing value decides."""
    if len(a) != len(b):
        return len(a) < len(b)
    for name in sorted([*a, *b]):
        if name not in a:
            return True
        if name not in b:
            return False
        if a[name] != b[name]:
            return a[name] < b[name]
    return False


def _order(a: Series, b: Series) -> int:
    if label_set_before(a.labels, b.labels):
        return -1
    return 1 if label_set_before(b.labels, a.labels) else 0


def sort_series(series: Sequence[Series]) -> list[Series]:
    """Sort as ``model.Matrix`` sorts: by ``LabelSet.Before``."""
    return sorted(series, key=functools.cmp_to_key(_order))


def format_labels(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}"


def first_difference(ref: QueryResult, test: QueryResult,
                     tol: Tolerance = Tolerance()) -> str | None:
    """Describe the first way ``test`` differs from ``ref`` (None when equal); ``test``
    must already be sorted."""
    if ref.result_type != test.result_type:
        return f"result type: reference {ref.result_type}, test {test.result_type}"
    if ref.string_value != test.string_value:
        return f"string: reference {ref.string_value!r}, test {test.string_value!r}"
    if ref.series is None or test.series is None:
        if (ref.series is None) != (test.series is None):
            def shown(s: Sequence[Series] | None) -> str:
                return "null" if s is None else f"{len(s)} series"
            return f"result: reference {shown(ref.series)}, test {shown(test.series)}"
        return None
    if len(ref.series) != len(test.series):
        missing = [format_labels(s.labels) for s in ref.series if s.labels not in
                   [t.labels for t in test.series]]
        extra = [format_labels(s.labels) for s in test.series if s.labels not in
                 [r.labels for r in ref.series]]
        return (f"series count: reference {len(ref.series)}, test {len(test.series)}; "
                f"missing from test: {missing[:3]}; only in test: {extra[:3]}")
    for r, t in zip(ref.series, test.series, strict=True):
        if r.labels != t.labels:
            return (f"labels (in sorted order): reference {format_labels(r.labels)}, "
                    f"test {format_labels(t.labels)}")
        where = format_labels(r.labels)
        if len(r.points) != len(t.points):
            rts = {p[0] for p in r.points}
            tts = {p[0] for p in t.points}
            return (f"{where}: {len(r.points)} points in reference, {len(t.points)} in test; "
                    f"only in reference at {sorted(rts - tts)[:3]}, "
                    f"only in test at {sorted(tts - rts)[:3]}")
        for (rt, rv), (tt, tv) in zip(r.points, t.points, strict=True):
            if rt != tt:
                return f"{where}: timestamp reference {rt} ms, test {tt} ms"
            if not values_equal(rv, tv, tol):
                return f"{where} at {rt} ms: reference {rv!r}, test {tv!r}"
    return None


def judge(case: Case, ref: Answer, test: Answer, tol: Tolerance = Tolerance(), *,
          as_sets: bool = False, where: str = "") -> Outcome:
    """Apply the tester's rules to one case's two answers. ``as_sets`` sorts the reference
    too (instant queries); ``where`` is recorded in the outcome."""
    if isinstance(ref, QueryError) != case.should_fail:
        if isinstance(ref, QueryError):
            return Outcome(case, Status.REFERENCE_ERROR, f"reference failed: {ref.message}",
                           where=where)
        return Outcome(case, Status.REFERENCE_ERROR, "reference succeeded on a should_fail case",
                       where=where)
    if isinstance(test, QueryError) != case.should_fail:
        if isinstance(test, QueryError):
            status = Status.UNSUPPORTED if "501" in test.message else Status.UNEXPECTED_FAILURE
            return Outcome(case, status, test.message, where=where)
        return Outcome(case, Status.UNEXPECTED_SUCCESS, "test target succeeded, expected an error",
                       where=where)
    if case.should_fail or case.skip_comparison:
        return Outcome(case, Status.PASSED, where=where)
    assert isinstance(ref, QueryResult) and isinstance(test, QueryResult)
    n_ref = len(ref.series or ())
    if test.series is not None:
        test = replace(test, series=sort_series(test.series))
    if as_sets and ref.series is not None:
        ref = replace(ref, series=sort_series(ref.series))
    diff = first_difference(ref, test, tol)
    if diff is not None:
        if test.warnings:
            diff += f"; test warnings: {'; '.join(test.warnings)[:500]}"
        return Outcome(case, Status.DIFFERENT, diff, n_ref, where)
    return Outcome(case, Status.PASSED, "", n_ref, where)
