"""PromQL through the HTTP API, from the data-driven files in tests/promql/*.test.

Each file's ``load`` data goes through the real write path (remote_write into the embedded
engine) and every ``eval`` through /api/v1/query or /api/v1/query_range. The integration
variant runs the same files against Prometheus 2.42 itself, proving the expectations are
Prometheus' answers; another runs the compliance harness in promql mode (a ratchet).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import promqltest
from tests.writes import HEADERS, body

FILES = sorted((Path(__file__).parent / "promql").glob("*.test"))
#: compliance suite cases passing through gob-metrics' /api/v1/query_range (of 539):
#: raise it as the engine improves, never lower it.
COMPLIANCE_PASSING = 539


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
    """The upstream suite through gob-metrics' /api/v1/query_range: at least the count
    reached so far passes (docs/compliance.md states the current result)."""
    from compliance.__main__ import DEFAULT_SUITE_DIR
    from compliance.cases import load_cases
    from compliance.run import RunOptions, run

    suite = DEFAULT_SUITE_DIR / "promql"
    cases = load_cases([suite / "promql-test-queries.yml"], suite / "variant-args.yml")
    report = run(cases, RunOptions(workdir=tmp_path, mode="promql", test_url="gob"))
    failures = "\n".join(f"[{o.status.value}] {o.case.query}: {o.detail}"
                         for o in report.outcomes if not o.passed)
    assert report.passed >= COMPLIANCE_PASSING, failures
