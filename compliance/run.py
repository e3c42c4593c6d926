"""One compliance run: start the programs, load the data set into them, run every case
against the reference and the system under test, and report.

Modes (the reference is always a Prometheus 2.42 fed by remote_write):

* ``remote-read``: the system under test is a second, empty Prometheus 2.42 whose
  ``remote_read`` (``read_recent: true``) points at gob-metrics' ``/api/v1/read``. With
  ``read_from="reference"`` it reads the reference's own ``/api/v1/read`` instead, which
  checks the harness itself (it must pass every case).
* ``promql``: the system under test is a PromQL HTTP API: gob-metrics' own (``gob``), a
  second remote_write-fed Prometheus (``prometheus``, a self-check), or any URL.

One run loads the data once and then makes one or more comparisons of every case: range
queries over each :class:`RangeWindow` of ``RunOptions.windows``, then, when
``RunOptions.instant_times`` is set, instant queries at each of those times.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path

import aiohttp

from compliance import services
from compliance.cases import Case
from compliance.compare import Answer, Outcome, QueryError, Status, Tolerance, judge
from compliance.query import query_instant, query_range
from compliance.remote_write import EncodedDataset, build_dataset, send_all

# The data set covers 00:00-03:00; queries look back up to 1h10m (plus 5m lookback) and
# forward 10m (``offset -10m``) from the 02:30-02:40 window.
DEFAULT_END = Decimal(1_705_286_400)  # 2024-01-15T02:40:00Z
DEFAULT_RANGE_S = 600
DEFAULT_STEP_S = 10


@dataclass(frozen=True)
class RangeWindow:
    """Every case as ``/api/v1/query_range`` from ``end - range_s`` to ``end``."""

    end: Decimal = DEFAULT_END
    range_s: Decimal = Decimal(DEFAULT_RANGE_S)
    step_s: Decimal = Decimal(DEFAULT_STEP_S)

    @property
    def start(self) -> Decimal:
        return self.end - Decimal(self.range_s)

    def describe(self) -> str:
        return f"range queries, end {self.end}, range {self.range_s}s, step {self.step_s}s"


@dataclass(frozen=True)
class InstantTimes:
    """Every case as ``/api/v1/query`` at each of ``times`` (Unix seconds)."""

    times: tuple[Decimal, ...]

    def describe(self) -> str:
        return (f"instant queries at {len(self.times)} times "
                f"({', '.join(str(t) for t in self.times)})")


Comparison = RangeWindow | InstantTimes


def spread_times(window: RangeWindow, count: int) -> tuple[Decimal, ...]:
    """``count`` instants evenly over ``window``, both ends included, at ms resolution
    (one instant: the end)."""
    if count < 1:
        raise ValueError("the number of instant times must be at least 1")
    if count == 1:
        return (window.end,)
    gap = Decimal(window.range_s) / (count - 1)
    out = []
    for i in range(count):
        t = (window.start + i * gap).quantize(Decimal("0.001"))
        out.append(t.to_integral_value() if t == t.to_integral_value() else t)
    return tuple(out)


def gob_args() -> list[str]:
    """Settings for the gob-metrics under test: loading-speed knobs, never query behaviour."""
    from gob_metrics.config import Config

    # gob-metrics answers a remote_write only once its batch is durable; with one request
    # in flight a short batch age keeps loading fast.
    args = ["--set", "write.batch_max_age=10ms"]
    if hasattr(Config(), "limits"):
        # The per-tenant ingestion rate (Mimir's default, 10k samples/s) would stretch the
        # one-shot load of 1.8M samples to three minutes; 0 disables it.
        args += ["--set", "limits.ingestion_rate=0"]
    return args


@dataclass
class RunOptions:
    mode: str = "remote-read"                 # remote-read | promql
    read_from: str = "gob"                    # remote-read: gob | reference | URL
    test_url: str = "gob"                     # promql: gob | prometheus | URL
    test_write_url: str | None = None         # promql with a URL: where to load (None: URL)
    #: range-query comparisons, in order (the first is the default window)
    windows: tuple[RangeWindow, ...] = (RangeWindow(),)
    #: when not empty, one more comparison: instant queries at each of these times
    instant_times: tuple[Decimal, ...] = ()
    parallelism: int = 4
    timeout_s: float = 10.0
    tolerance: Tolerance = field(default_factory=Tolerance)
    workdir: Path | None = None               # kept after the run when given
    verbose: bool = False

    @property
    def comparisons(self) -> list[Comparison]:
        out: list[Comparison] = list(self.windows)
        if self.instant_times:
            out.append(InstantTimes(tuple(self.instant_times)))
        return out


@dataclass
class ComparisonReport:
    """The outcomes of one comparison: one per case (range), one per case and time
    (instant, case by case, the times in the order given)."""

    comparison: Comparison
    outcomes: list[Outcome]
    seconds: float

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.passed == len(self.outcomes)

    def cases_passed(self) -> tuple[int, int]:
        """(cases that passed everywhere they ran, cases)."""
        failed = {o.case for o in self.outcomes if not o.passed}
        cases = {o.case for o in self.outcomes}
        return len(cases) - len(failed), len(cases)


@dataclass
class RunReport:
    comparisons: list[ComparisonReport]
    seconds: float
    load_seconds: float
    dataset: EncodedDataset
    description: str

    @property
    def outcomes(self) -> list[Outcome]:
        """Every comparison's outcomes, in order."""
        return [o for c in self.comparisons for o in c.outcomes]

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.passed == len(self.outcomes)


def select_cases(cases: list[Case], pattern: str | None, limit: int | None) -> list[Case]:
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.query)]
    return cases[:limit] if limit is not None else cases


#: one query of a case on one system: (session, base URL, query) -> answer
Ask = Callable[[aiohttp.ClientSession, str, str], Awaitable[Answer]]


def comparison_jobs(cases: list[Case], comparison: Comparison) -> list[tuple[Case, str, Ask]]:
    """(case, where, how to ask) for every query pair of ``comparison``, in report order."""
    if isinstance(comparison, RangeWindow):
        ask: Ask = partial(query_range, start=comparison.start, end=comparison.end,
                           step=Decimal(comparison.step_s))
        return [(c, "", ask) for c in cases]
    asks = [(f"time={t}", partial(query_instant, time=t)) for t in comparison.times]
    return [(c, where, a) for c in cases for where, a in asks]


async def run_comparison(cases: list[Case], comparison: Comparison, ref_url: str,
                         test_url: str, opts: RunOptions,
                         progress: Callable[[int, Outcome], None] | None = None
                         ) -> list[Outcome]:
    """Query both systems for every query pair of ``comparison`` (``opts.parallelism``
    pairs at a time, each within ``opts.timeout_s``) and judge the answers with
    :func:`judge` (instant results as sets); outcomes in :func:`comparison_jobs` order."""
    as_sets = isinstance(comparison, InstantTimes)
    sem = asyncio.Semaphore(opts.parallelism)
    done = 0

    async def one(case: Case, where: str, ask: Ask,
                  session: aiohttp.ClientSession) -> Outcome:
        nonlocal done
        async with sem:
            ref_task = asyncio.ensure_future(ask(session, ref_url, case.query))
            test_task = asyncio.ensure_future(ask(session, test_url, case.query))
            _, pending = await asyncio.wait({ref_task, test_task}, timeout=opts.timeout_s)
            for task in pending:
                task.cancel()
            timeout = QueryError(f"timeout: no answer within {opts.timeout_s}s")
            ref = timeout if ref_task in pending else ref_task.result()
            test = timeout if test_task in pending else test_task.result()
            outcome = judge(case, ref, test, opts.tolerance, as_sets=as_sets, where=where)
        done += 1
        if progress is not None:
            progress(done, outcome)
        return outcome

    connector = aiohttp.TCPConnector(limit=2 * opts.parallelism + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(c, w, a, session) for c, w, a in
                                           comparison_jobs(cases, comparison))))


def _progress_printer(total: int, verbose: bool) -> Callable[[int, Outcome], None]:
    failed = 0
    every = max(1, total // 10)

    def show(done: int, outcome: Outcome) -> None:
        nonlocal failed
        if not outcome.passed:
            failed += 1
            if verbose:
                print(f"  FAIL [{outcome.status.value}] {_where(outcome)}{outcome.case.query}\n"
                      f"       {outcome.detail}", flush=True)
        if done % every == 0 or done == total:
            print(f"  [{done:>4}/{total}] {done - failed} passed, {failed} failed", flush=True)

    return show


async def _load(dataset: EncodedDataset, urls: list[str]) -> float:
    bodies = dataset.compressed()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(send_all(session, u, bodies) for u in urls))
    return time.monotonic() - started


async def check_reference(url: str, dataset: EncodedDataset) -> None:
    """Refuse to compare anything unless the reference holds every generated series."""
    query = 'count(last_over_time({__name__=~".+"}[4h]))'
    at = Decimal(dataset.last_ms) / 1000
    async with aiohttp.ClientSession() as session, session.get(
            url + "/api/v1/query", params={"query": query, "time": str(at)}) as resp:
        doc = await resp.json()
    result = doc.get("data", {}).get("result") or [{"value": [0, "0"]}]
    held = int(float(result[0]["value"][1]))
    if held != dataset.series:
        raise services.ServiceError(f"the reference Prometheus holds {held} series after "
                                    f"loading, expected {dataset.series}")


def _start_all(svcs: list[services.Service]) -> None:
    # Started side by side: gob-metrics' embedded engine takes a few seconds to open.
    errors: list[BaseException] = []

    async def start_all() -> None:
        results = await asyncio.gather(*(asyncio.to_thread(s.start) for s in svcs),
                                       return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))

    asyncio.run(start_all())
    if errors:
        raise errors[0]


@dataclass
class Plan:
    """What a mode starts, where the data go, and which two APIs are compared."""

    reference: services.Service
    programs: list[services.Service]
    load_urls: list[str]
    test_url: str
    description: str


def plan(opts: RunOptions, workdir: Path) -> Plan:
    """Lay out the programs of ``opts.mode`` under ``workdir`` (nothing started yet)."""
    if opts.mode not in ("remote-read", "promql"):
        raise ValueError(f"unknown mode {opts.mode!r}: remote-read or promql")
    ref = services.prometheus(workdir / "reference", "prometheus-reference", receiver=True)
    p = Plan(ref, [ref], [ref.url + "/api/v1/write"], "", "")
    gob = None
    if (opts.read_from if opts.mode == "remote-read" else opts.test_url) == "gob":
        gob = services.gob_metrics(workdir / "gob-metrics", extra_args=gob_args())
        p.programs.append(gob)
        p.load_urls.append(gob.url + "/api/v1/write")

    if opts.mode == "remote-read":
        base = {"gob": gob.url if gob else "", "reference": ref.url}.get(opts.read_from,
                                                                          opts.read_from)
        read_url = base.rstrip("/")
        if not read_url.endswith("/api/v1/read"):
            read_url += "/api/v1/read"
        sut = services.prometheus(workdir / "sut", "prometheus-remote-read", remote_read=[
            {"url": read_url, "name": "sut", "read_recent": True}])
        p.programs.append(sut)
        p.test_url = sut.url
        p.description = f"remote-read: empty Prometheus 2.42 reading {read_url}"
    elif gob is not None:
        p.test_url = gob.url
        p.description = f"promql: gob-metrics query API at {gob.url}"
    elif opts.test_url == "prometheus":
        other = services.prometheus(workdir / "sut", "prometheus-sut", receiver=True)
        p.programs.append(other)
        p.load_urls.append(other.url + "/api/v1/write")
        p.test_url = other.url
        p.description = "promql: a second Prometheus 2.42 fed by remote_write (self-check)"
    else:
        p.test_url = opts.test_url
        write_url = opts.test_write_url or opts.test_url.rstrip("/") + "/api/v1/write"
        if write_url != "none":
            p.load_urls.append(write_url)
        p.description = f"promql: query API at {opts.test_url}"
    return p


def run(cases: list[Case], opts: RunOptions) -> RunReport:
    """Start what the mode needs under a temporary directory, load, compare, stop."""
    t0 = time.monotonic()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="gob-compliance-"))
    p = plan(opts, workdir)
    print("generating the data set ...", flush=True)
    dataset = build_dataset()
    print(f"  {len(dataset.requests)} requests, {dataset.series} series, {dataset.samples} "
          f"samples, sha256 {dataset.sha256}", flush=True)
    try:
        print(f"starting {', '.join(s.name for s in p.programs)} in {workdir} ...", flush=True)
        _start_all(p.programs)
        print(f"loading into {', '.join(p.load_urls)} ...", flush=True)
        load_s = asyncio.run(_load(dataset, p.load_urls))
        asyncio.run(check_reference(p.reference.url, dataset))
        print(f"  loaded in {load_s:.1f}s", flush=True)
        reports = []
        for comparison in opts.comparisons:
            c0 = time.monotonic()
            pairs = len(comparison_jobs(cases, comparison))
            print(f"running {pairs} query pairs: {comparison.describe()} ({p.description}; "
                  f"parallelism {opts.parallelism}, timeout {opts.timeout_s}s) ...", flush=True)
            outcomes = asyncio.run(run_comparison(cases, comparison, p.reference.url,
                                                  p.test_url, opts,
                                                  _progress_printer(pairs, opts.verbose)))
            reports.append(ComparisonReport(comparison, outcomes, time.monotonic() - c0))
        return RunReport(reports, time.monotonic() - t0, load_s, dataset, p.description)
    except Exception:
        for svc in p.programs:
            print(f"--- last lines of {svc.log_path}:\n{svc.log_tail(15)}", file=sys.stderr)
        raise
    finally:
        for svc in reversed(p.programs):
            svc.stop()
        if opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _where(o: Outcome) -> str:
    return f"[{o.where}] " if o.where else ""


def print_report(report: RunReport, mode: str, out=sys.stdout) -> None:
    """Every failure, then one summary line per comparison (and a total when several)."""
    several = len(report.comparisons) > 1
    for c in report.comparisons:
        failed = [o for o in c.outcomes if not o.passed]
        if several and failed:
            print(f"== {c.comparison.describe()}", file=out)
        for o in failed:
            print(f"FAIL [{o.status.value}] {_where(o)}{o.case.query}\n     {o.detail}",
                  file=out)
    for c in report.comparisons:
        failed = [o for o in c.outcomes if not o.passed]
        by_status: dict[Status, int] = {}
        for o in failed:
            by_status[o.status] = by_status.get(o.status, 0) + 1
        breakdown = ", ".join(f"{n} {s.value}" for s, n in by_status.items()) or "no failures"
        with_data = sum(1 for o in c.outcomes if o.reference_series)
        what = f" {c.comparison.describe()}:" if several else ""
        unit = ""
        if isinstance(c.comparison, InstantTimes):
            ok_cases, n_cases = c.cases_passed()
            unit = f" query pairs ({ok_cases}/{n_cases} cases at every time)"
        timing = f"in {c.seconds:.1f}s" if several else (
            f"in {report.seconds:.1f}s (load {report.load_seconds:.1f}s)")
        print(f"{mode}:{what} {c.passed}/{len(c.outcomes)}{unit} passed ({breakdown}; "
              f"{with_data} compared non-empty results) {timing}", file=out)
    if several:
        print(f"{mode}: {report.passed}/{len(report.outcomes)} passed in all in "
              f"{report.seconds:.1f}s (load {report.load_seconds:.1f}s)", file=out)
