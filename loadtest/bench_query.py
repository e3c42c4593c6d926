"""Query benchmark: the same dashboard query mix, as range queries, against gob-metrics,
Prometheus 2.42 and VictoriaMetrics 1.79.5 holding the same data.

The data is ``workload.py``'s node_exporter-like workload with a request-duration histogram
per host (``--histograms``): ``--series`` series scraped every 15 s for ``--hours`` hours
from the workload's fixed start (2026-11-01T00:00:00Z), so the query window is fixed too.
Each target is started as a subprocess on a free 127.0.0.1 port and fed the very same
remote_write requests (with bench_ingest's sender: per-series time order, Prometheus-like
retries), then settles (gob: OPTIMIZE FINAL and restart; VictoriaMetrics: flush and forced
merge; Prometheus: its head, as it holds the last 2 h). Then every query runs once per target
to warm up (those answers are compared between the targets), and ``--repeat`` more times,
one request at a time, interleaved (round r: query 1 on every target, query 2, ...) so that
other load on the machine falls on every target alike. Servers are stopped by PID on any
exit; every wait is bounded.

    /tmp/venv0/bin/python loadtest/bench_query.py                       # 20k series, 2 h
    /tmp/venv0/bin/python loadtest/bench_query.py --series 2000 --hours 0.5 --repeat 3

See the "Query benchmark" section of loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(REPO)) if p not in sys.path]

import bench_ingest as bi  # noqa: E402 - servers, sender, /proc CPU, percentiles
import workload  # noqa: E402

from compliance import services  # noqa: E402 - how the harness runs Prometheus 2.42

# gob: no per-tenant ingestion rate limit while loading (see bench_ingest).
GOB_BENCH_SETTINGS = ("limits.ingestion_rate=0",)
# VictoriaMetrics: no response cache (it would answer a repeated range query from memory;
# Prometheus and gob-metrics have none), and no latency offset (the data is old anyway).
VM_BENCH_FLAGS = ("-search.disableCache", "-search.latencyOffset=0s")
LOAD_SETTLE_TIMEOUT = 600.0
QUERY_TIMEOUT = 300.0
STRICT_REL = 1e-6
LOOSE_REL = 0.01


@dataclass(frozen=True)
class BenchQuery:
    name: str
    expr: str
    step_s: int
    whole: bool = False  # over the whole data window (else from 10 min in)
    what: str = ""


QUERIES = (
    BenchQuery(
        "cpu_by_instance",
        'sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))',
        30,
        what="rate by instance",
    ),
    BenchQuery(
        "histogram_p90",
        "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        30,
        what="histogram_quantile over all hosts",
    ),
    BenchQuery(
        "net_rx_regex",
        'sum by (instance) (rate(node_network_receive_bytes_total{device=~"eth.*"}[5m]))',
        30,
        what="regex selector",
    ),
    BenchQuery(
        "topk_disk_write",
        "topk(5, sum by (instance) (rate(node_disk_written_bytes_total[5m])))",
        60,
        what="topk",
    ),
    BenchQuery("load1_avg10m", "avg_over_time(node_load1[10m])", 60, what="avg_over_time"),
    BenchQuery(
        "cpu_busy_long",
        '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[10m]))',
        300,
        whole=True,
        what="24 h-style: whole window, coarse step",
    ),
    BenchQuery("up_by_job", "count by (job) (up)", 60, what="count by"),
    BenchQuery(
        "cpu_without_cpu",
        "sum without (cpu) (rate(node_cpu_seconds_total[5m]))",
        60,
        what="sum without",
    ),
    BenchQuery(
        "net_tx_share",
        "rate(node_network_transmit_bytes_total[1m]) / on (instance) group_left"
        " sum by (instance) (rate(node_network_transmit_bytes_total[1m]))",
        60,
        what="rate[1m] / on() group_left",
    ),
    BenchQuery(
        "temp_max10m", "max_over_time(node_hwmon_temp_celsius[10m])", 60, what="max_over_time"
    ),
    BenchQuery(
        "disk_reads_increase",
        "sum by (instance) (increase(node_disk_reads_completed_total[10m]))",
        60,
        what="increase",
    ),
    BenchQuery(
        "scrape_p95_10m",
        "quantile_over_time(0.95, scrape_duration_seconds[10m])",
        60,
        what="quantile_over_time",
    ),
)

log = bi.log


# --- targets -----------------------------------------------------------------------------


class QueryTarget:
    key = ""
    label = ""
    ready_path = "/-/ready"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.notes: list[str] = []

    def server(self, workdir: Path) -> bi.Server:
        raise NotImplementedError

    async def after_load(self, http: aiohttp.ClientSession, srv: bi.Server, wl) -> dict:
        return {}

    async def settle(self, http: aiohttp.ClientSession, srv: bi.Server, wl) -> tuple:
        """Bring the loaded data to its resting state; may restart the server."""
        return srv, {}

    def query_params(self) -> dict[str, str]:
        return {}

    def state(self) -> str:
        """How the loaded data was left; data loaded another way is loaded again."""
        return "loaded"


class GobQ(QueryTarget):
    key = "gob"
    label = "gob-metrics"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.ingest = bi.GobTarget(args)  # serve argv, env, optimize + count with chdb

    def server(self, workdir: Path) -> bi.Server:
        port = bi.free_port()
        argv = self.ingest.argv(port, workdir / "data")
        return bi.Server("gob", argv, port, workdir, "/-/ready", env=self.ingest.env())

    def state(self) -> str:
        return "as ingested" if self.args.no_gob_optimize else "optimized"

    async def settle(self, http: aiohttp.ClientSession, srv: bi.Server, wl) -> tuple:
        if self.args.no_gob_optimize:
            mon = bi.TreeMonitor(srv.proc.pid)
            t0 = time.monotonic()
            await mon.wait_idle(LOAD_SETTLE_TIMEOUT)
            return srv, {"settle_s": time.monotonic() - t0}
        # Merged parts, as ClickHouse leaves data hours old: stop, OPTIMIZE FINAL (which also
        # counts what is stored), start again on the same data.
        code, _ = srv.stop(bi.STOP_TIMEOUT)
        out = self.ingest.after_stop(srv.workdir / "data", wl)
        self.notes += self.ingest.notes
        self.ingest.notes = []
        out.pop("chdb", None)
        out["exit_code_before_optimize"] = code
        new = self.server(srv.workdir)
        new.start()
        out["ready_after_optimize_s"] = await new.wait_ready(http, bi.READY_TIMEOUT)
        return new, out


class PromQ(QueryTarget):
    key = "prom"
    label = "Prometheus"

    def server(self, workdir: Path) -> bi.Server:
        svc = services.prometheus(workdir, "prom", receiver=True)
        argv = [self.args.prom_binary, *svc.argv[1:], *self.args.prom_arg]
        return bi.Server("prom", argv, svc.port, workdir, "/-/ready")


class VmQ(QueryTarget):
    key = "vm"
    label = "VictoriaMetrics"
    ready_path = "/health"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.ingest = bi.VmTarget(args)

    def server(self, workdir: Path) -> bi.Server:
        port = bi.free_port()
        argv = self.ingest.argv(port, workdir / "data")
        return bi.Server("vm", argv, port, workdir, "/health")

    async def after_load(self, http: aiohttp.ClientSession, srv: bi.Server, wl) -> dict:
        # flush, count rows back, force merge until one part is left
        out = await self.ingest.after_load(http, srv, wl)
        self.notes += self.ingest.notes
        self.ingest.notes = []
        return out

    def query_params(self) -> dict[str, str]:
        return {"nocache": "1"}


TARGETS = {"gob": GobQ, "prom": PromQ, "vm": VmQ}


@dataclass
class Running:
    target: QueryTarget
    srv: bi.Server
    info: dict = field(default_factory=dict)


def export_revision(rev: str, parent: Path) -> tuple[str, str]:
    """``git archive`` gob_metrics/ (and sql/) at ``rev`` into a new directory under ``parent``,
    so that the benchmark runs a known commit whatever the work tree holds.
    Returns (directory, commit)."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    dest = parent / f"gob-src-{commit[:12]}"
    if not (dest / "gob_metrics" / "__init__.py").exists():
        paths = ["gob_metrics"]
        for extra in ("sql", "setup.py", "pyproject.toml"):
            probe = subprocess.run([*git, "cat-file", "-e", f"{commit}:{extra}"], timeout=30)
            if probe.returncode == 0:
                paths.append(extra)
        tmp = parent / f"gob-src-{commit[:12]}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            archive = subprocess.run(
                [*git, "archive", "--format=tar", commit, *paths],
                capture_output=True,
                timeout=120,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, timeout=120, check=True)
            if (tmp / "setup.py").exists():  # C extensions (the wire scanner), built in place
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                               cwd=tmp, capture_output=True, timeout=600, check=True)
            (tmp / "REVISION").write_text(commit + "\n")
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest), commit


def workload_params(args: argparse.Namespace) -> workload.WorkloadParams:
    rounds = round(args.hours * 3600_000 / workload.SCRAPE_INTERVAL_MS)
    return workload.WorkloadParams(
        args.series * rounds, args.series, args.per_request, args.start_ms, args.seed, True
    )


async def start_loaded(
    target: QueryTarget, wl, wl_name: str, workdir: Path, args: argparse.Namespace
) -> Running:
    """Start ``target`` on ``workdir``; load the workload unless a marker says it is there."""
    marker = workdir / "loaded.json"
    want = {"workload": wl_name, "state": target.state()}
    loaded = marker.exists() and all(
        json.loads(marker.read_text()).get(k) == v for k, v in want.items()
    )
    if not loaded and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    srv = target.server(workdir)
    info: dict = {"argv": srv.argv, "workdir": str(workdir), "reused": loaded}
    log(f"{target.label}: starting {' '.join(srv.argv)}")
    srv.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        info["ready_s"] = await srv.wait_ready(http, bi.READY_TIMEOUT)
        if loaded:
            log(f"{target.label}: data already loaded in {workdir}")
            return Running(target, srv, info)
        window = max(1, wl.meta["series"] // wl.meta["per_request"])
        log(f"{target.label}: loading {len(wl.payloads):,} requests, {args.concurrency} senders")
        st = await bi.send_all(
            http,
            srv.base + "/api/v1/write",
            wl.payloads,
            args.concurrency,
            window,
            args.load_timeout,
        )
        info["load"] = {
            "wall_s": st.wall_s,
            "ok": st.ok,
            "failed": st.failed,
            "retries": st.retries,
            "statuses": {str(k): v for k, v in st.statuses.items()},
            "messages": dict(st.messages.most_common(5)),
        }
        log(f"{target.label}: loaded in {st.wall_s:.1f}s, statuses {dict(st.statuses)}")
        if st.failed or st.timed_out or st.ok != len(wl.payloads):
            raise RuntimeError(
                f"{target.label}: {st.failed} requests failed, {st.ok} ok "
                f"(timed out: {st.timed_out}); answers {dict(st.messages)}"
            )
        info.update(await target.after_load(http, srv, wl))
        srv, settled = await target.settle(http, srv, wl)
        info.update(settled)
    marker.write_text(json.dumps({**want, "loaded_at": time.time()}))
    return Running(target, srv, info)


# --- queries -------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


async def run_query(
    http: aiohttp.ClientSession, run: Running, q: BenchQuery, window: tuple[int, int]
) -> tuple[float, float, bytes, int]:
    """One range query: (wall seconds, server CPU seconds, body, status)."""
    start, end = window
    params = {
        "query": q.expr,
        "start": str(start if q.whole else start + 600),
        "end": str(end),
        "step": str(q.step_s),
        **run.target.query_params(),
    }
    pid = run.srv.proc.pid
    cpu0 = bi.sample_tree(pid).cpu_s
    t0 = time.perf_counter()
    async with http.get(run.srv.base + "/api/v1/query_range", params=params) as r:
        body = await r.read()
        status = r.status
    elapsed = time.perf_counter() - t0
    cpu = bi.sample_tree(pid).cpu_s - cpu0
    return elapsed, cpu, body, status


def parse_matrix(body: bytes) -> tuple[dict | None, str]:
    """{labels: (timestamps, values)} of a matrix answer, or (None, error text)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, f"not JSON: {body[:200]!r}"
    if doc.get("status") != "success":
        return None, f"{doc.get('errorType')}: {doc.get('error')}"
    data = doc["data"]
    if data.get("resultType") != "matrix":
        return None, f"resultType {data.get('resultType')}"
    out = {}
    for s in data["result"]:
        key = tuple(sorted(s["metric"].items()))
        pts = s["values"]
        ts = np.array([round(float(p[0]) * 1000) for p in pts], np.int64)
        vals = np.array([float(p[1]) for p in pts], np.float64)
        out[key] = (ts, vals)
    return out, ""


def _rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    d[np.isnan(d)] = np.inf  # one side NaN
    return d


def _without_name(m: dict) -> dict:
    return {tuple(kv for kv in k if kv[0] != "__name__"): v for k, v in m.items()}


def compare(a: dict, b: dict, loose: bool = False) -> dict:
    """How far matrix ``a`` is from matrix ``b``: series by label set, points by time.

    ``loose``: when label sets differ, match them again without ``__name__`` (MetricsQL
    keeps the metric name where PromQL drops it, e.g. after ``avg_over_time``)."""
    name_dropped = False
    if loose and set(a) != set(b):
        na, nb = _without_name(a), _without_name(b)
        if (
            len(na) == len(a)
            and len(nb) == len(b)
            and len(set(na) ^ set(nb)) < len(set(a) ^ set(b))
        ):
            a, b, name_dropped = na, nb, True
    keys_a, keys_b = set(a), set(b)
    common = keys_a & keys_b
    points = missing = 0
    diffs = []
    for k in common:
        ta, va = a[k]
        tb, vb = b[k]
        both, ia, ib = np.intersect1d(ta, tb, assume_unique=True, return_indices=True)
        missing += len(ta) + len(tb) - 2 * len(both)
        points += len(both)
        diffs.append(_rel_diff(va[ia], vb[ib]))
    d = np.concatenate(diffs) if diffs else np.empty(0)
    return {
        "series": (len(keys_a), len(keys_b)),
        "only_left": len(keys_a - keys_b),
        "only_right": len(keys_b - keys_a),
        "points": points,
        "points_missing": missing,
        "within_strict": int((d <= STRICT_REL).sum()),
        "within_loose": int((d <= LOOSE_REL).sum()),
        "max_rel": float(d.max()) if len(d) else 0.0,
        "median_rel": float(np.median(d)) if len(d) else 0.0,
        "matched_without_name": name_dropped,
    }


def strict_ok(c: dict) -> bool:
    return (
        c["only_left"] == 0
        and c["only_right"] == 0
        and c["points_missing"] == 0
        and c["within_strict"] == c["points"]
    )


def agreement_text(c: dict | None, strict: bool) -> str:
    if c is None:
        return "-"
    if strict:
        if strict_ok(c):
            return "equal"
        return (
            f"DIFF ({c['only_left']}/{c['only_right']} series unmatched, "
            f"{c['points_missing']} pts missing, max rel {c['max_rel']:.1e})"
        )
    n = c["points"] or 1
    unmatched = c["only_left"] + c["only_right"]
    txt = (
        f"{c['within_strict'] / n:.0%} pts equal, {c['within_loose'] / n:.0%} within 1%, "
        f"max rel {c['max_rel']:.1e}"
    )
    if unmatched or c["points_missing"]:
        txt += f"; {unmatched} series unmatched, {c['points_missing']} pts missing"
    if c.get("matched_without_name"):
        txt += " (VM keeps __name__)"
    return txt


async def run_queries(
    runs: list[Running], queries: list[BenchQuery], window: tuple[int, int], repeat: int
) -> tuple[dict, dict]:
    """Warm-up pass (answers kept for comparison), then ``repeat`` interleaved rounds."""
    timings = {(q.name, r.target.key): Timing() for q in queries for r in runs}
    answers: dict = {}
    timeout = aiohttp.ClientTimeout(total=QUERY_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for rnd in range(-1, repeat):
            t_round = time.monotonic()
            for q in queries:
                for run in runs:
                    tm = timings[(q.name, run.target.key)]
                    try:
                        sec, cpu, body, status = await run_query(http, run, q, window)
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        tm.errors.append(f"round {rnd}: {type(exc).__name__}: {exc}")
                        continue
                    if status != 200:
                        tm.errors.append(f"round {rnd}: HTTP {status}: {body[:300]!r}")
                    if rnd < 0:
                        answers[(q.name, run.target.key)] = parse_matrix(body)
                        tm.bytes = len(body)
                    else:
                        tm.seconds.append(sec)
                        tm.cpu_s.append(cpu)
            label = "warm-up" if rnd < 0 else f"round {rnd + 1}/{repeat}"
            log(
                f"{label} done in {time.monotonic() - t_round:.1f}s (load {os.getloadavg()[0]:.2f})"
            )
    return timings, answers


# --- report --------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    v = round(v * 1000, 2)
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _table(rows: list[list[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < right_from else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def summarize(runs, queries, timings, answers) -> dict:
    keys = [r.target.key for r in runs]
    per_query = []
    for q in queries:
        row: dict = {"name": q.name, "expr": q.expr, "step_s": q.step_s, "whole": q.whole}
        parsed = {k: answers.get((q.name, k), (None, "no answer")) for k in keys}
        for k in keys:
            tm = timings[(q.name, k)]
            res, err = parsed[k]
            row[k] = {
                "p50_s": bi.pct(tm.seconds, 0.5),
                "p99_s": bi.pct(tm.seconds, 0.99),
                "min_s": min(tm.seconds, default=math.nan),
                "max_s": max(tm.seconds, default=math.nan),
                "mean_s": float(np.mean(tm.seconds)) if tm.seconds else math.nan,
                "seconds": tm.seconds,
                "cpu_mean_s": float(np.mean(tm.cpu_s)) if tm.cpu_s else math.nan,
                "response_bytes": tm.bytes,
                "series": len(res) if res is not None else None,
                "points": sum(len(v[0]) for v in res.values()) if res is not None else None,
                "error": err or None,
                "http_errors": tm.errors,
            }
        ref = parsed.get("prom", (None, ""))[0]
        if ref is not None:
            for k, strict in (("gob", True), ("vm", False)):
                res = parsed.get(k, (None, ""))[0]
                if res is not None:
                    c = compare(res, ref, loose=not strict)
                    c["strict"] = strict
                    c["agree"] = strict_ok(c)
                    row[f"{k}_vs_prom"] = c
        per_query.append(row)
    totals = {k: sum(r[k]["p50_s"] for r in per_query) for k in keys}
    cpu = {k: sum(r[k]["cpu_mean_s"] for r in per_query) for k in keys}
    return {"queries": per_query, "sum_p50_s": totals, "sum_cpu_mean_s": cpu}


def report(summary: dict, targets: dict[str, dict], meta: dict) -> str:
    """The tables; ``targets``: key -> {"label", "notes"} in run order."""
    keys = list(targets)
    labels = {k: t["label"] for k, t in targets.items()}
    short = {"gob": "gob", "prom": "Prom", "vm": "VM"}
    lines = [
        f"workload: {workload.describe(meta['workload'])}",
        f"window: {meta['window_utc']}; {meta['repeat']} timed runs per query and target"
        + (" (p99 of fewer than 100 runs is their max)" if meta["repeat"] < 100 else ""),
        f"gob-metrics at {meta['gob_revision']}; date {meta['date']}; "
        f"load average before/after {meta['loadavg_before']} / {meta['loadavg_after']}",
        "",
    ]
    head = ["query", "step"]
    for k in keys:
        head += [f"{short[k]} p50 ms", f"{short[k]} p99 ms"]
    head.append("series " + "/".join(short[k] for k in keys))
    rows = [head]
    for r in summary["queries"]:
        row = [r["name"], f"{r['step_s']}s"]
        for k in keys:
            row += [_ms(r[k]["p50_s"]), _ms(r[k]["p99_s"])]
        row.append("/".join("-" if r[k]["series"] is None else str(r[k]["series"]) for k in keys))
        rows.append(row)
    total = ["sum of p50s", ""]
    for k in keys:
        total += [_ms(summary["sum_p50_s"][k]), ""]
    total.append("")
    rows.append(total)
    lines += _table(rows, right_from=1)
    lines.append("")
    sums = summary["sum_p50_s"]
    cpu = summary["sum_cpu_mean_s"]
    lines.append(
        "sum of p50s: "
        + ", ".join(f"{labels[k]} {sums[k]:.3f} s" for k in keys)
        + "; server CPU per pass of the queries (mean): "
        + ", ".join(f"{labels[k]} {cpu[k]:.3f} s" for k in keys)
    )
    ratios = []
    for a, b in (("gob", "prom"), ("gob", "vm"), ("prom", "vm")):
        if a in sums and b in sums and sums[b]:
            ratios.append(f"{short[a]}/{short[b]} {sums[a] / sums[b]:.2f}")
    if ratios:
        lines.append("ratios of the sums of p50s: " + ", ".join(ratios))
    lines += ["", "Server CPU per query, ms (mean of the timed runs; the server's process tree):"]
    rows = [["query", *[short[k] for k in keys]]]
    for r in summary["queries"]:
        rows.append([r["name"], *[_ms(r[k]["cpu_mean_s"]) for k in keys]])
    rows.append(["sum", *[_ms(cpu[k]) for k in keys]])
    lines += _table(rows)
    if "prom" in keys and len(keys) > 1:
        lines += ["", "Agreement with Prometheus (warm-up answers):"]
        rows = [["query"] + [f"{short[k]} vs Prom" for k in keys if k != "prom"]]
        for r in summary["queries"]:
            row = [r["name"]]
            for k in keys:
                if k == "prom":
                    continue
                c = r.get(f"{k}_vs_prom")
                if c is None:
                    row.append(r[k]["error"] or r["prom"]["error"] or "-")
                else:
                    row.append(agreement_text(c, strict=k == "gob"))
            rows.append(row)
        lines += _table(rows, right_from=99)
        lines.append(
            f"gob vs Prom: 'equal' = same label sets, same timestamps, every value within "
            f"{STRICT_REL:g} relative. VM vs Prom: share of common points equal (within "
            f"{STRICT_REL:g}) and within {LOOSE_REL:.0%} (MetricsQL differs on purpose: no "
            "rate extrapolation, its own window and lookback rules)."
        )
    lines += ["", "Queries:"]
    for r in summary["queries"]:
        span = "whole window" if r["whole"] else "from 10 min in"
        lines.append(f"  {r['name']:<20} {r['expr']}   [step {r['step_s']}s, {span}]")
    for k in keys:
        errs = [
            f"{r['name']}: {r[k]['error'] or ''} {r[k]['http_errors']}"
            for r in summary["queries"]
            if r[k]["error"] or r[k]["http_errors"]
        ]
        for n in targets[k].get("notes", []) + errs:
            lines.append(f"NOTE {labels[k]}: {n}")
    return "\n".join(lines)


async def sanity_checks(runs: list[Running], window: tuple[int, int]) -> dict:
    """Instant queries that every target must answer alike: series and samples loaded."""
    start, end = window
    span = f"{end - start + 60}s"
    checks = {
        "series": 'count({job="node"})',
        "cpu_samples": f"sum(count_over_time(node_cpu_seconds_total[{span}]))",
        "hist_samples": f"sum(count_over_time(http_request_duration_seconds_bucket[{span}]))",
    }
    out: dict = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT)) as http:
        for name, expr in checks.items():
            for run in runs:
                params = {"query": expr, "time": str(end + 30), **run.target.query_params()}
                try:
                    async with http.get(run.srv.base + "/api/v1/query", params=params) as r:
                        doc = await r.json(content_type=None)
                    val = float(doc["data"]["result"][0]["value"][1])
                except Exception as exc:  # a report line, not a crash
                    val = f"error: {exc}"
                out.setdefault(name, {})[run.target.key] = val
    return out


async def amain(args: argparse.Namespace) -> int:
    params = workload_params(args)
    wl = workload.load_or_build(params, args.out_dir)
    wl_name = workload.cache_path(params, args.out_dir).name
    log(f"workload: {workload.describe(wl.meta)}")
    if args.gob_rev:
        args.gob_src, commit = export_revision(args.gob_rev, args.out_dir)
        revision = f"{commit[:7]} (committed tree, exported to {args.gob_src})"
    elif args.gob_src:
        rev_file = Path(args.gob_src) / "REVISION"
        found = rev_file.read_text().strip()[:7] if rev_file.exists() else "unknown commit"
        revision = f"{found} (from {args.gob_src})"
    else:
        revision = bi.gob_revision()
    log(f"gob-metrics at {revision}")
    start_s = args.start_ms // 1000
    window = (start_s, start_s + round(args.hours * 3600))
    queries = [q for q in QUERIES if not args.queries or q.name in args.queries.split(",")]
    if args.data_dir:
        base = Path(args.data_dir)
        base.mkdir(parents=True, exist_ok=True)
        keep = True
    else:
        base = Path(tempfile.mkdtemp(prefix="benchq-", dir=args.work_dir))
        keep = args.keep
    runs: list[Running] = []
    try:
        for key in args.targets.split(","):
            target = TARGETS[key.strip()](args)
            runs.append(await start_loaded(target, wl, wl_name, base / target.key, args))
        # targets in the order given; load order does not matter
        checks = await sanity_checks(runs, window)
        for name, vals in checks.items():
            log(f"check {name}: {vals}")
        mismatch = {n: v for n, v in checks.items() if len({str(x) for x in v.values()}) > 1}
        if mismatch:
            log(f"WARNING: the targets do not hold the same data: {mismatch}")
        for run in runs:  # quiet before measuring
            await bi.TreeMonitor(run.srv.proc.pid).wait_idle(bi.SETTLE_TIMEOUT)
        load_before = os.getloadavg()
        uptime_before = _uptime()
        t0 = time.monotonic()
        timings, answers = await run_queries(runs, queries, window, args.repeat)
        meta = {
            "workload": wl.meta,
            "window": window,
            "window_utc": " - ".join(
                dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M") for t in window
            )
            + " UTC",
            "repeat": args.repeat,
            "gob_revision": revision,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "uptime_before": uptime_before,
            "uptime_after": _uptime(),
            "query_phase_s": time.monotonic() - t0,
            "cpus": os.cpu_count(),
            "versions": _versions(),
            "checks": checks,
            "args": {k: v for k, v in vars(args).items() if k != "out_dir"},
        }
        summary = summarize(runs, queries, timings, answers)
        targets = {
            r.target.key: {"label": r.target.label, "notes": r.target.notes, **r.info} for r in runs
        }
        text = report(summary, targets, meta)
        print(text)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        out = args.out_dir / f"query-results-{time.strftime('%Y%m%d-%H%M%S')}.json"
        doc = {
            "meta": meta,
            "targets": targets,
            "queries": [asdict(q) for q in queries],
            "summary": summary,
            "report": text,
        }
        out.write_text(json.dumps(doc, indent=2, default=str))
        log(f"results written to {out}")
        keys = [r.target.key for r in runs]
        failed = any(r[k]["error"] or r[k]["http_errors"] for r in summary["queries"] for k in keys)
        return 1 if failed or mismatch else 0
    finally:
        for run in runs:
            code, _ = run.srv.stop(bi.STOP_TIMEOUT)
            if code != 0:
                log(f"{run.target.label}: exit code {code} after SIGTERM")
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"data directories kept in {base}")


def _versions() -> str:
    """Debian package versions of the reference servers, when dpkg knows them."""
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "prometheus", "victoria-metrics"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def print_saved(path: Path) -> int:
    """Print the report of a saved results file again (with this version's tables)."""
    doc = json.loads(path.read_text())
    print(report(doc["summary"], doc["targets"], doc["meta"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    defaults = workload.WorkloadParams()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--series", type=int, default=20_000, help="distinct series (default 20000)")
    ap.add_argument("--hours", type=float, default=2.0, help="hours of data at 15 s (default 2)")
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per query and target")
    ap.add_argument("--targets", default="gob,prom,vm", help="comma-separated: gob,prom,vm")
    ap.add_argument("--queries", default="", help="only these queries (comma-separated names)")
    ap.add_argument("--concurrency", type=int, default=10, help="senders while loading")
    ap.add_argument("--load-timeout", type=float, default=3600, help="max s of loading/target")
    ap.add_argument("--per-request", type=int, default=defaults.per_request)
    ap.add_argument("--start-ms", type=int, default=defaults.start_ms, help="first timestamp")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument(
        "--data-dir",
        default="",
        help="keep each target's data in DIR/<target> and reuse it when it holds this "
        "workload\n(default: a temporary directory, removed at the end)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    ap.add_argument("--work-dir", default=tempfile.gettempdir(), help="parent of temp dirs")
    ap.add_argument("--out-dir", type=Path, default=workload.DEFAULT_OUT_DIR)
    ap.add_argument("--gob-python", default=sys.executable, help="python that runs gob_metrics")
    ap.add_argument(
        "--gob-set",
        action="append",
        metavar="KEY=VALUE",
        help="gob setting for serve, repeatable (default: "
        + " ".join(GOB_BENCH_SETTINGS)
        + "; giving any replaces it)",
    )
    ap.add_argument(
        "--gob-rev",
        default="",
        help="run gob_metrics as committed at this revision (e.g. HEAD), exported with\n"
        "git archive under --out-dir, rather than the work tree with its uncommitted changes",
    )
    ap.add_argument("--gob-src", default="", help="directory holding the gob_metrics to run")
    ap.add_argument("--gob-arg", action="append", default=[], help="extra arg for gob serve")
    ap.add_argument("--gob-arg-opt", action="append", default=[], help="extra arg for optimize")
    ap.add_argument(
        "--no-gob-optimize",
        action="store_true",
        help="query gob's parts as ingestion left them (default: OPTIMIZE FINAL first)",
    )
    ap.add_argument("--prom-binary", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--prom-arg", action="append", default=[], help="extra prometheus flag")
    ap.add_argument("--vm-binary", default=shutil.which("victoria-metrics") or "victoria-metrics")
    ap.add_argument(
        "--vm-arg",
        action="append",
        help="victoria-metrics flag, repeatable (default: "
        + " ".join(VM_BENCH_FLAGS)
        + "; giving any replaces it)",
    )
    ap.add_argument("--report", type=Path, help="only print the report of a saved results file")
    args = ap.parse_args(argv)
    if args.report:
        return print_saved(args.report)
    if args.gob_set is None:
        args.gob_set = list(GOB_BENCH_SETTINGS)
    if args.vm_arg is None:
        args.vm_arg = list(VM_BENCH_FLAGS)
    unknown = [t for t in args.targets.split(",") if t.strip() not in TARGETS]
    if unknown:
        ap.error(f"--targets: unknown {unknown}, choose from {sorted(TARGETS)}")
    names = {q.name for q in QUERIES}
    bad = [n for n in args.queries.split(",") if n and n not in names]
    if bad:
        ap.error(f"--queries: unknown {bad}, choose from {sorted(names)}")
    if args.hours <= 0 or args.series <= 0 or args.repeat <= 0:
        ap.error("--hours, --series and --repeat must be > 0")

    def on_signal(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        return asyncio.run(amain(args))
    finally:
        bi._kill_all()


if __name__ == "__main__":
    sys.exit(main())
