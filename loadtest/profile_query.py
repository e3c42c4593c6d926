"""Where gob-metrics spends a range query's time: SQL fetch, numpy evaluation, JSON.

Runs bench_query's queries in this process against a gob-metrics data directory that
bench_query loaded (``--data-dir DIR`` there; the server must be stopped, as one process
owns a data directory), through the real aiohttp app and handler, with timers wrapped
around the phases (here only; gob_metrics is not changed):

- ``sql``: ``storage.query`` calls: chdb runs the selection SQL and hands back Arrow
  (the time at least one call is in flight: a query with two selectors sends both at
  once, and the embedded engine runs them one after the other);
- ``fetch other``: the rest of ``Evaluator.fetch``: Arrow lists to numpy, label tuples,
  sorting, ``Block.build``;
- ``eval``: the top-level ``Evaluator.eval`` (numpy over series x steps, in a thread);
- ``json``: ``encode.matrix_json``;
- ``rest``: the request's time minus the above (parsing, planning, the handler's sort of
  the result, HTTP on loopback, the test client).

Each phase is measured in wall time and in CPU time of this whole process (chdb's threads
included): on a shared machine the CPU figures move much less. gob_metrics is imported
from PYTHONPATH when it is set (e.g. a bench_query ``--gob-rev`` export), else from the
installed package:

    /tmp/venv0/bin/python loadtest/profile_query.py --data-dir /tmp/benchq-full/gob/data
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from gob_metrics import app as gob_app
from gob_metrics.config import load_config
from gob_metrics.promql import api, encode
from gob_metrics.promql.engine import Evaluator
from gob_metrics.storage.embedded import EmbeddedStorage

# Only now: bench_query (through bench_ingest) puts the work tree first on sys.path.
GOB_SOURCE = Path(gob_app.__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_query  # noqa: E402

PHASES = ("sql", "fetch other", "eval", "json", "rest")


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class Timers:
    """Phase times of the request in flight (one request at a time): (wall, CPU) each."""

    def __init__(self) -> None:
        self.t: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.calls: dict[str, int] = defaultdict(int)
        self.sql: list[tuple[float, float, float, float]] = []
        self.local = threading.local()

    def reset(self) -> None:
        self.t.clear()
        self.calls.clear()
        self.sql.clear()

    def add(self, phase: str, start: tuple[float, float]) -> None:
        wall, cpu = _clocks()
        self.t[phase][0] += wall - start[0]
        self.t[phase][1] += cpu - start[1]

    def sql_time(self) -> tuple[float, float]:
        """Wall and CPU time of the union of the storage.query intervals."""
        wall = cpu = 0.0
        end = -1.0
        cpu_end = 0.0
        for w0, w1, c0, c1 in sorted(self.sql):
            if w1 <= end:
                continue
            if w0 < end:  # overlaps the previous group: count what is new
                wall += w1 - end
                cpu += max(0.0, c1 - cpu_end)
            else:
                wall += w1 - w0
                cpu += c1 - c0
            end, cpu_end = w1, c1
        return wall, cpu

    def install(self) -> None:
        timers = self
        orig_query = EmbeddedStorage.query
        orig_fetch = Evaluator.fetch
        orig_eval = Evaluator.eval
        orig_matrix = encode.matrix_json

        def timed_sql(orig):
            """A storage query method that records its span as SQL time."""

            async def timed(self, *args, **kwargs):
                w0, c0 = _clocks()
                try:
                    return await orig(self, *args, **kwargs)
                finally:
                    w1, c1 = _clocks()
                    timers.sql.append((w0, w1, c0, c1))
                    timers.calls["sql"] += 1

            return timed

        async def fetch(self, *args, **kwargs):
            start = _clocks()
            try:
                return await orig_fetch(self, *args, **kwargs)
            finally:
                timers.add("fetch", start)

        def evaluate(self, node, ts):
            depth = getattr(timers.local, "depth", 0)
            timers.local.depth = depth + 1
            start = _clocks()
            try:
                return orig_eval(self, node, ts)
            finally:
                timers.local.depth = depth
                if depth == 0:
                    timers.add("eval", start)

        def matrix_json(series):
            start = _clocks()
            try:
                return orig_matrix(series)
            finally:
                timers.add("json", start)
                timers.calls["points"] += sum(len(s[1]) for s in series)

        EmbeddedStorage.query = timed_sql(orig_query)
        EmbeddedStorage.query_native = timed_sql(EmbeddedStorage.query_native)
        Evaluator.fetch = fetch
        Evaluator.eval = evaluate
        encode.matrix_json = matrix_json
        assert api.encode is encode  # the handler looks matrix_json up at call time


def _cell(v: float, total: float) -> str:
    return f"{v * 1000:.0f} ({v / total:.0%})" if total else f"{v * 1000:.0f}"


async def amain(args: argparse.Namespace) -> int:
    cfg = load_config(overrides={"server.data_dir": args.data_dir, **dict(args.set)})
    timers = Timers()
    timers.install()
    start_s = args.start_ms // 1000
    window = (start_s, start_s + round(args.hours * 3600))
    wanted = [n for n in args.queries.split(",") if n]
    queries = [q for q in bench_query.QUERIES if not wanted or q.name in wanted]
    print(f"gob_metrics from {GOB_SOURCE}", file=sys.stderr)
    rows = []
    async with TestClient(TestServer(gob_app.build_app(cfg))) as client:
        for q in queries:
            params = {
                "query": q.expr,
                "start": str(window[0] if q.whole else window[0] + 600),
                "end": str(window[1]),
                "step": str(q.step_s),
            }
            runs = []
            for i in range(args.warmup + args.repeat):
                timers.reset()
                w0, c0 = _clocks()
                resp = await client.get("/api/v1/query_range", params=params)
                body = await resp.read()
                total = (time.perf_counter() - w0, time.process_time() - c0)
                if resp.status != 200:
                    print(f"{q.name}: HTTP {resp.status} {body[:200]!r}", file=sys.stderr)
                    return 1
                if i < args.warmup:
                    continue
                t = timers.t
                sql = timers.sql_time()
                ph = {}
                for j in (0, 1):  # wall, CPU
                    p = {
                        "sql": sql[j],
                        "fetch other": t["fetch"][j] - sql[j],
                        "eval": t["eval"][j],
                        "json": t["json"][j],
                    }
                    p["rest"] = total[j] - sum(p.values())
                    p["total"] = total[j]
                    ph["wall" if j == 0 else "cpu"] = p
                runs.append((ph, timers.calls["sql"], timers.calls["points"], len(body)))
            med = {
                kind: {
                    k: statistics.median(r[0][kind][k] for r in runs) for k in (*PHASES, "total")
                }
                for kind in ("wall", "cpu")
            }
            rows.append((q.name, med, runs[0][1], runs[0][2], runs[0][3]))
            print(
                f"{q.name:<20} wall {med['wall']['total'] * 1000:6.0f} ms, "
                f"CPU {med['cpu']['total'] * 1000:6.0f} ms: "
                + ", ".join(f"{k} {med['cpu'][k] * 1000:.0f}" for k in PHASES),
                file=sys.stderr,
            )
    print(
        f"gob_metrics from {GOB_SOURCE}; medians of {args.repeat} runs after {args.warmup} "
        "warm-up, in-process; ms and share of the total"
    )
    for kind in ("wall", "cpu"):
        head = ["query", f"{kind} ms", *PHASES]
        if kind == "wall":
            head += ["SQL calls", "points", "bytes"]
        table = [head]
        sums: dict[str, float] = defaultdict(float)
        for name, med, calls, points, size in rows:
            m = med[kind]
            for k, v in m.items():
                sums[k] += v
            row = [name, f"{m['total'] * 1000:.0f}", *[_cell(m[k], m["total"]) for k in PHASES]]
            if kind == "wall":
                row += [str(calls), f"{points:,}", f"{size:,}"]
            table.append(row)
        row = [
            "sum",
            f"{sums['total'] * 1000:.0f}",
            *[_cell(sums[k], sums["total"]) for k in PHASES],
        ]
        if kind == "wall":
            row += ["", "", ""]
        table.append(row)
        print(f"\n{'wall time' if kind == 'wall' else 'CPU time (whole process)'}:")
        print("\n".join(bench_query._table(table)))
    return 0


def main(argv: list[str] | None = None) -> int:
    defaults = bench_query.workload.WorkloadParams()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="gob's data dir, e.g. DIR/gob/data")
    ap.add_argument("--hours", type=float, default=2.0, help="as given to bench_query")
    ap.add_argument("--start-ms", type=int, default=defaults.start_ms)
    ap.add_argument("--queries", default="", help="only these (comma-separated names)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="KEY=VALUE",
        help="gob setting, repeatable",
    )
    return asyncio.run(amain(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
