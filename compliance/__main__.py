"""``python -m compliance``: generate the data set, expand the cases, or run a comparison."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from compliance.cases import CaseFileError, load_cases
from compliance.compare import Tolerance
from compliance.remote_write import LoadError
from compliance.run import (
    DEFAULT_END,
    DEFAULT_RANGE_S,
    DEFAULT_STEP_S,
    RangeWindow,
    RunOptions,
    print_report,
    run,
    select_cases,
    spread_times,
)
from compliance.services import ServiceError

PACKAGE_DIR = Path(__file__).resolve().parent
# CI checks the repository out beside the shared directory that holds the upstream suite.
DEFAULT_SUITE_DIR = PACKAGE_DIR.parent.parent / "shared" / "compliance"
EXTRA_QUERIES = PACKAGE_DIR / "extra-queries.yml"


def _case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite-dir", type=Path, default=DEFAULT_SUITE_DIR, metavar="DIR",
                   help="the compliance suite material (default: %(default)s)")
    p.add_argument("--queries", type=Path, action="append", metavar="FILE",
                   help="a templates file (repeatable; default: "
                        "<suite-dir>/promql/promql-test-queries.yml)")
    p.add_argument("--extra", action="store_true",
                   help=f"also run the project's own cases ({EXTRA_QUERIES.name})")
    p.add_argument("--variant-args", type=Path, metavar="FILE",
                   help="values of the {{.name}} placeholders "
                        "(default: <suite-dir>/promql/variant-args.yml)")


def _template_paths(args: argparse.Namespace) -> list[Path]:
    paths = list(args.queries or [args.suite_dir / "promql" / "promql-test-queries.yml"])
    if args.extra:
        paths.append(EXTRA_QUERIES)
    return paths


def _variant_path(args: argparse.Namespace) -> Path:
    return args.variant_args or args.suite_dir / "promql" / "variant-args.yml"


#: below this, a lone --instant-times number is a count, not a Unix time (1970-01-02)
MAX_INSTANT_COUNT = 100_000


def _seconds(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _positive_seconds(text: str) -> Decimal:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _window(text: str) -> RangeWindow:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected END,RANGE,STEP (seconds), got {text!r}")
    return RangeWindow(_seconds(parts[0]), _seconds(parts[1]), _positive_seconds(parts[2]))


def _instant_times(text: str) -> int | tuple[Decimal, ...]:
    parts = [x for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a count or a list of Unix times")
    times = tuple(_seconds(x) for x in parts)
    if len(times) == 1 and times[0] == times[0].to_integral_value() and "," not in text \
            and 0 < times[0] < MAX_INSTANT_COUNT:
        return int(times[0])
    return times


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compliance", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("generate", help="build the data set and print its size and checksum")

    exp = sub.add_parser("expand", help="print the expanded cases as JSON")
    _case_args(exp)
    exp.add_argument("--check", type=Path, metavar="FILE",
                     help="instead, compare with an expanded-test-cases.json and exit 1 "
                          "on any difference")

    r = sub.add_parser("run", help="start everything, load the data, compare every query",
                       description="Start Prometheus 2.42 (reference) and the system under "
                                   "test, load the data set, run every query on both, and "
                                   "exit 1 unless all pass.")
    _case_args(r)
    r.add_argument("--mode", choices=["remote-read", "promql"], default="remote-read",
                   help="system under test: an empty Prometheus reading via remote_read, "
                        "or a PromQL API (default: %(default)s)")
    r.add_argument("--read-from", default="gob", metavar="gob|reference|URL",
                   help="remote-read mode: the remote_read endpoint; 'reference' reads the "
                        "reference Prometheus itself, a harness self-check (default: gob)")
    r.add_argument("--test-url", default="gob", metavar="gob|prometheus|URL",
                   help="promql mode: the query API under test; 'prometheus' starts a second "
                        "remote_write-fed Prometheus as a self-check (default: gob)")
    r.add_argument("--test-write-url", metavar="URL",
                   help="promql mode with a URL: where to remote_write the data "
                        "(default: <test-url>/api/v1/write; 'none' when it already has it)")
    r.add_argument("--end", type=_seconds, default=DEFAULT_END, metavar="UNIX_SECONDS",
                   help="end of the range queries' window (default: %(default)s, "
                        "2024-01-15T02:40:00Z)")
    r.add_argument("--range", type=_seconds, default=Decimal(DEFAULT_RANGE_S),
                   metavar="SECONDS", help="length of that window (default: %(default)s)")
    r.add_argument("--step", type=_positive_seconds, default=Decimal(DEFAULT_STEP_S),
                   metavar="SECONDS", help="its resolution (default: %(default)s)")
    r.add_argument("--window", type=_window, action="append", default=[],
                   metavar="END,RANGE,STEP",
                   help="also compare every case as range queries over this window (Unix "
                        "seconds, seconds, seconds), after --end/--range/--step; repeatable")
    r.add_argument("--instant-times", type=_instant_times, metavar="T1,T2,...|N",
                   help="also compare every case as instant queries (/api/v1/query) at each "
                        "of these Unix times, or at N times spread evenly over the "
                        f"--end/--range window, both ends included (N < {MAX_INSTANT_COUNT}; "
                        "one time alone: write 'T,')")
    r.add_argument("--parallelism", type=int, default=4,
                   help="query pairs in flight (default: 4)")
    r.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="per query pair, both queries (default: 10, as the Go tester)")
    r.add_argument("--fraction", type=float, default=Tolerance.fraction,
                   help="relative value tolerance (default: %(default)s)")
    r.add_argument("--margin", type=float, default=Tolerance.margin,
                   help="absolute value tolerance (default: %(default)s)")
    r.add_argument("--query-filter", metavar="REGEX", help="only queries matching REGEX")
    r.add_argument("--max-queries", type=int, metavar="N", help="only the first N cases")
    r.add_argument("--workdir", type=Path, metavar="DIR",
                   help="keep the programs' data and logs here instead of a temporary dir")
    r.add_argument("--report", type=Path, metavar="FILE", help="write every outcome as JSON")
    r.add_argument("-v", "--verbose", action="store_true", help="print failures as they come")
    return p


def _generate() -> int:
    from compliance.remote_write import build_dataset

    d = build_dataset()
    print(f"requests {len(d.requests)}  series {d.series}  samples {d.samples}  "
          f"time {d.first_ms}..{d.last_ms} ms  bytes {sum(map(len, d.requests))}")
    print(f"sha256 {d.sha256}")
    return 0


def _expand(args: argparse.Namespace) -> int:
    cases = [c.as_json() for c in load_cases(_template_paths(args), _variant_path(args))]
    if args.check is None:
        json.dump(cases, sys.stdout, indent=1)
        print()
        return 0
    expected = json.loads(args.check.read_text())
    if cases == expected:
        print(f"{len(cases)} cases, identical to {args.check}")
        return 0
    for i, (a, b) in enumerate(zip(cases, expected, strict=False)):
        if a != b:
            print(f"case {i} differs:\n  ours     {a}\n  expected {b}")
            break
    print(f"{len(cases)} cases expanded, {len(expected)} expected")
    return 1


def _run(args: argparse.Namespace) -> int:
    cases = select_cases(load_cases(_template_paths(args), _variant_path(args)),
                         args.query_filter, args.max_queries)
    if not cases:
        print("no case selected", file=sys.stderr)
        return 2
    first = RangeWindow(args.end, args.range, args.step)
    instant = args.instant_times
    if isinstance(instant, int):
        instant = spread_times(first, instant)
    opts = RunOptions(mode=args.mode, read_from=args.read_from, test_url=args.test_url,
                      test_write_url=args.test_write_url, windows=(first, *args.window),
                      instant_times=instant or (), parallelism=args.parallelism,
                      timeout_s=args.timeout, tolerance=Tolerance(args.fraction, args.margin),
                      workdir=args.workdir, verbose=args.verbose)
    report = run(cases, opts)
    if args.report:
        args.report.write_text(json.dumps({
            "mode": report.description, "passed": report.passed, "total": len(report.outcomes),
            "seconds": round(report.seconds, 1), "dataset_sha256": report.dataset.sha256,
            "comparisons": [{
                "comparison": c.comparison.describe(), "passed": c.passed,
                "total": len(c.outcomes), "seconds": round(c.seconds, 1),
                "outcomes": [{**o.case.as_json(), "where": o.where, "status": o.status.value,
                              "detail": o.detail} for o in c.outcomes]}
                for c in report.comparisons]}, indent=1))
    print_report(report, args.mode)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate()
        if args.command == "expand":
            return _expand(args)
        return _run(args)
    except (CaseFileError, ServiceError, LoadError) as exc:
        print(f"compliance: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
