"""Latency of a repeated selector query with and without the label-lookup cache.

One ``gob-metrics serve`` per mode, each on a fresh embedded data directory loaded with the
same node_exporter-like series (``bench_redis.build_bodies``); the "redis" mode also starts
its own redis-server (tests/services' settings: no persistence, 127.0.0.1). Modes:

* ``off``: no Redis, ``redis.lookup_cache_ttl=0`` (every query scans ``series`` with its
  matchers: the read path before the cache);
* ``local``: no Redis, the in-process cache (embedded engine only);
* ``redis``: the cache in Redis, shared by replicas;
* ``redis-nocache``: Redis for everything else, the cache off (what Redis itself costs).

All servers run at once and their queries alternate (one per mode in turn), so every mode
sees the same (shared, busy) machine. Each selector is queried ``--queries`` times per mode
after warm-up queries, so ``local`` and ``redis`` measure hits; ``miss`` queries add a
matcher that changes the cache key but not the answer (``bench!="<i>"``), so each one is a
miss: a probe, the id load, the put and the query by ids. Every answer is checked against
the ``off`` mode's. Every process is stopped by PID.

    /tmp/venv0/bin/python loadtest/bench_lookup_cache.py --series 20000 --queries 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_redis as br

# (title, endpoint, query): instant queries at the load's last timestamp, and a range query.
SELECTORS = [
    ("name + label", "query", 'node_metric_7_total{job="node"}'),
    ("regexes, no name", "query",
     '{__name__=~"node_metric_1.*", mode="idle", instance=~"host-1[0-9]:9100"}'),
    ("range 1h, step 60s", "query_range", 'rate(node_metric_7_total{job="node"}[2m])'),
]
MODES = ("off", "local", "redis", "redis-nocache")
CACHED = ("local", "redis")


def _params(endpoint: str, query: str, end_s: float) -> dict[str, str]:
    if endpoint == "query":
        return {"query": query, "time": f"{end_s:.3f}"}
    return {"query": query, "start": f"{end_s - 3600:.3f}", "end": f"{end_s:.3f}",
            "step": "60"}


def _with_key(query: str, i: int) -> str:
    """The same selection under another cache key (a matcher that matches every series)."""
    if "{" not in query:
        return query
    return query.replace("}", f', bench!="q{i}"}}', 1)


async def measure(bases: dict[str, str], end_s: float, queries: int, warmup: int
                  ) -> dict[str, dict[str, dict[str, object]]]:
    """Per mode and selector: repeat and miss latencies. The modes' queries alternate,
    one each in turn, so all modes see the same machine (it is shared and busy)."""
    out: dict[str, dict[str, dict[str, object]]] = {m: {} for m in bases}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(base: str, endpoint: str, query: str) -> tuple[float, str]:
            t0 = time.perf_counter()
            async with session.get(f"{base}/api/v1/{endpoint}",
                                   params=_params(endpoint, query, end_s)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status}: {text}")
            elapsed = time.perf_counter() - t0
            result = json.loads(text)["data"]["result"]
            return elapsed, json.dumps(sorted(json.dumps(r, sort_keys=True) for r in result))

        for title, endpoint, query in SELECTORS:
            hits: dict[str, list[tuple[float, str]]] = {m: [] for m in bases}
            misses: dict[str, list[tuple[float, str]]] = {m: [] for m in bases}
            for _ in range(warmup):
                for base in bases.values():
                    await one(base, endpoint, query)
            for _ in range(queries):
                for mode, base in bases.items():
                    hits[mode].append(await one(base, endpoint, query))
            for i in range(queries // 2):
                for mode, base in bases.items():
                    misses[mode].append(await one(base, endpoint, _with_key(query, i)))
            for mode in bases:
                answers = {a for _, a in hits[mode]} | {a for _, a in misses[mode]}
                if len(answers) != 1:
                    raise RuntimeError(f"{mode}, {title}: answers differ between queries")
                out[mode][title] = {"repeat": [t for t, _ in hits[mode]],
                                    "miss": [t for t, _ in misses[mode]],
                                    "answer": answers.pop(),
                                    "series": len(json.loads(hits[mode][0][1]))}
    return out


class Server:
    """``gob-metrics serve`` for one mode (and its redis-server), loaded with the workload."""

    def __init__(self, mode: str, workdir: Path, settings: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.redis_proc: subprocess.Popen | None = None
        extra: list[str] = []
        if mode in ("redis", "redis-nocache"):
            rport = br.free_port()
            redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
            self.redis_proc = subprocess.Popen(
                [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            extra = ["--redis-url", f"redis://127.0.0.1:{rport}/0"]
            if mode == "redis-nocache":
                extra += ["--set", "redis.lookup_cache_ttl=0"]
            deadline = time.monotonic() + 10
            while not br._listening(rport):
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        elif mode == "off":
            extra = ["--set", "redis.lookup_cache_ttl=0"]
        port = br.free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gob_metrics", "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(workdir / "data"), "--log-level", "warning",
             "--set", "limits.ingestion_rate=0", "--set", "limits.max_global_series_per_user=0",
             *extra, *(arg for kv in settings for arg in ("--set", kv))],
            cwd=br.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def load(self, bodies: list[bytes], concurrency: int) -> None:
        br.wait_ready(f"{self.base}/-/ready", self.proc)
        asyncio.run(br.send(f"{self.base}/api/v1/write", bodies, concurrency))

    def probes(self) -> dict[str, float]:
        if self.mode.startswith("redis") and br.scrape(f"{self.base}/metrics", "gob_redis_up") != 1:
            raise RuntimeError("redis was not in use")
        return {r: br.scrape(f"{self.base}/metrics",
                             f'gob_lookup_cache_requests_total{{result="{r}"}}')
                for r in ("hit", "miss", "bypass")}

    def stop(self) -> None:
        br.stop(self.proc)
        if self.redis_proc is not None:
            br.stop(self.redis_proc)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=20, help="samples per series (15 s apart)")
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--queries", type=int, default=100, help="repeats per selector")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds between the last load and the first timed query")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every server, e.g. redis.lookup_cache_max_series=100000")
    ap.add_argument("--selector", action="append", default=[], metavar="PROMQL",
                    help="an instant query to time instead of the built-in ones (repeatable)")
    args = ap.parse_args()
    if args.selector:
        SELECTORS[:] = [(q, "query", q) for q in args.selector]
    bodies = br.build_bodies(args.series, args.rounds, args.per_request, args.hosts)
    # build_bodies ends its samples 15 s before it was called: query at the last one.
    end_s = time.time() - 15
    print(f"workload: {args.series} series x {args.rounds} samples; {args.queries} repeats "
          f"per selector (median and p90, ms)", flush=True)
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="gob-bench-lookup-") as tmp:
        servers = {m: Server(m, Path(tmp) / m, args.set) for m in modes}
        try:
            for server in servers.values():
                server.load(bodies, args.concurrency)
            # Background merges of the last loaded server would slow its reads (FINAL reads
            # every part): let them finish before timing.
            time.sleep(args.settle)
            table = asyncio.run(measure({m: s.base for m, s in servers.items()}, end_s,
                                        args.queries, args.warmup))
            for m, server in servers.items():
                print(f"  {m}: lookup cache probes {server.probes()}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    reference = table[modes[0]]
    for title, res in table.items():
        for sel, r in res.items():
            if r["answer"] != reference[sel]["answer"]:
                raise RuntimeError(f"{title} answers {sel!r} differently from {modes[0]}")
    width = max(22, *(len(t) + 2 for t, _, _ in SELECTORS))
    print(f"\n{'selector':{width}}{'series':>7}" + "".join(f"{m + ' repeat':>18}" for m in modes)
          + "".join(f"{m + ' miss':>18}" for m in modes if m in CACHED))
    for sel in reference:
        cells = []
        for m in modes:
            rep = table[m][sel]["repeat"]
            cells.append(f"{statistics.median(rep) * 1000:8.1f} / {_ms(rep, 0.9):6.1f}")
        for m in modes:
            if m in CACHED:
                miss = table[m][sel]["miss"]
                cells.append(f"{statistics.median(miss) * 1000:8.1f} / {_ms(miss, 0.9):6.1f}")
        print(f"{sel:{width}}{reference[sel]['series']:>7}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
