"""PromQL through the HTTP API, from the data-driven files in tests/promql/*.test.

Each file's ``load`` data goes through the real write path (remote_write into the embedded
engine) and every ``eval`` through /api/v1/query or /api/v1/query_range. The integration
variant runs the same files against Prometheus 2.42 itself, proving the expectations are
Prometheus' answers; another runs the compliance harness in promql mode: the upstream
suite as range queries over two windows and as instant queries at five times, all passing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests import promqltest
from tests.writes import HEADERS, body

FILES = sorted((Path(__file__).parent / "promql").glob("*.test"))
#: the upstream compliance suite's cases, every one of which must pass in every comparison
COMPLIANCE_CASES = 539
#: the second range window: a 7 s step does not divide the 5 s scrape interval, and a
#: different end (02:50:00, so the last point is 02:49:59, not the end); 30 minutes cover
#: instance 10001's restart at 02:33:20
SECOND_WINDOW = ("1705287000", "1800", "7")
#: instant-query times: 02:30:00 and 02:40:00 (the default window's ends, on instance
#: 10000's scrape grid), 02:33:20 (10001's restart: its first failed scrape), 02:33:41.234
#: (while it is down; on no scrape, 1 ms before one), 02:34:07.5 (after its counter reset)
INSTANT_TIMES = ("1705285800", "1705286000", "1705286021.234", "1705286047.5", "1705286400")


async def _load_and_eval(path: Path, write, query) -> list[str]:
    failures = []
    for cmd in promqltest.parse(path.read_text()):
        if isinstance(cmd, promqltest.Load):
            await write(body(promqltest.samples_of(cmd)))
            continue
        url, params = promqltest.params_of(cmd)
        status, answer = await query(url, params)
        problem = promqltest.check(cmd, status, answer)
        if problem is not None:
            failures.append(f"{path.name}:{cmd.line}: {cmd.query}: {problem}")
    return failures


@pytest.fixture
async def promql_client(aiohttp_client: Any, make_config: Any) -> Any:
    from gob_metrics.app import build_app

    return await aiohttp_client(build_app(make_config(**{"limits.ingestion_rate": 0})))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_promql_file(promql_client: Any, path: Path) -> None:
    async def write(data: bytes) -> None:
        resp = await promql_client.post("/api/v1/write", data=data, headers=HEADERS)
        assert resp.status == 204, await resp.text()

    async def query(url: str, params: dict[str, str]) -> tuple[int, Any]:
        resp = await promql_client.post(url, data=params)
        return resp.status, await resp.json()

    failures = await _load_and_eval(path, write, query)
    assert not failures, "\n".join(failures)


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None
          ) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.integration
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_promql_file_against_prometheus(tmp_path: Path, path: Path) -> None:
    """The expectations are Prometheus 2.42's own answers."""
    from compliance import services

    prom = services.prometheus(tmp_path / "prometheus", "reference", receiver=True)
    await asyncio.to_thread(prom.start)
    try:
        async def write(data: bytes) -> None:
            status, _ = await asyncio.to_thread(_http, prom.url + "/api/v1/write", data,
                                                HEADERS)
            assert status == 204

        async def query(url: str, params: dict[str, str]) -> tuple[int, Any]:
            data = urllib.parse.urlencode(params).encode()
            return await asyncio.to_thread(
                _http, prom.url + url, data,
                {"Content-Type": "application/x-www-form-urlencoded"})

        failures = await _load_and_eval(path, write, query)
    finally:
        await asyncio.to_thread(prom.stop)
    assert not failures, "\n".join(failures)


@pytest.mark.integration
def test_compliance_promql_mode(tmp_path: Path) -> None:
    """The upstream suite against Prometheus 2.42 in one harness run (one data load):
    /api/v1/query_range over the default window and over SECOND_WINDOW, and /api/v1/query
    at INSTANT_TIMES; every case passes everywhere (docs/compliance.md has the command)."""
    from compliance.__main__ import DEFAULT_SUITE_DIR
    from compliance.cases import load_cases
    from compliance.run import RangeWindow, RunOptions, run

    suite = DEFAULT_SUITE_DIR / "promql"
    cases = load_cases([suite / "promql-test-queries.yml"], suite / "variant-args.yml")
    assert len(cases) == COMPLIANCE_CASES
    opts = RunOptions(workdir=tmp_path, mode="promql", test_url="gob",
                      windows=(RangeWindow(), RangeWindow(*map(Decimal, SECOND_WINDOW))),
                      instant_times=tuple(map(Decimal, INSTANT_TIMES)))
    report = run(cases, opts)
    failures = "\n".join(f"[{o.status.value}] {o.where} {o.case.query}: {o.detail}"
                         for o in report.outcomes if not o.passed)
    summary = ", ".join(f"{c.comparison.describe()}: {c.passed}/{len(c.outcomes)}"
                        for c in report.comparisons)
    assert [len(c.outcomes) for c in report.comparisons] == [
        COMPLIANCE_CASES, COMPLIANCE_CASES, COMPLIANCE_CASES * len(INSTANT_TIMES)], summary
    assert report.ok, f"{summary}\n{failures}"


def test_counter_corrections_and_resets_per_window() -> None:
    """rate/increase's reset corrections and changes/resets, found per window by binary
    search over the block's resets, equal a sample-by-sample pass over each window (the
    corrections summed in sample order from 0, as Prometheus 2.42 adds them)."""
    import numpy as np

    from gob_metrics.promql import rangefuncs
    from gob_metrics.promql.values import Block, windows

    rng = np.random.default_rng(7)
    series = []
    for n in (0, 1, 2, 40, 60):
        t = np.sort(rng.choice(np.arange(0, 1_200_000, 1000), n, replace=False))
        v = rng.normal(size=n) * 1e3
        v[rng.random(n) < 0.1] = np.nan
        v[rng.random(n) < 0.05] = np.inf
        series.append((t.astype(np.int64), v))
    block = Block.build([(("s", str(i)),) for i in range(len(series))], series)
    end = np.arange(0, 1_300_000, 7000, dtype=np.int64)
    w = windows(block, end, 300_000, end)
    corr = rangefuncs._counter_corrections(w)
    resets, _ = rangefuncs.changes_resets(w, True)
    changes, _ = rangefuncs.changes_resets(w, False)
    for i in range(len(series)):
        for j in range(len(end)):
            vals = block.values[w.lo[i, j]:w.hi[i, j]]
            c, r, ch = 0.0, 0, 0
            for a, b in itertools.pairwise(vals):
                if b < a:
                    c += a
                    r += 1
                if not (a == b or (np.isnan(a) and np.isnan(b))):
                    ch += 1
            assert corr[i, j] == c or (np.isnan(c) and np.isnan(corr[i, j]))
            assert (resets[i, j], changes[i, j]) == (r, ch)
