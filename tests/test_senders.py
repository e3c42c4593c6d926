"""Real senders against a real gob server: Prometheus 2.42 and vmagent 1.79.5 scrape
themselves and remote_write to gob; what arrives is checked against what the sender itself
reports (Prometheus' HTTP API, vmagent's /metrics), not against hand-written expectations.

gob runs on the test's event loop, so the senders start in a thread and every wait is an
``await asyncio.sleep`` poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gob_metrics.keys import CONFIG, STORAGE
from gob_metrics.storage import schema
from tests.services import prometheus, vmagent
from tests.services.proc import Service

pytestmark = pytest.mark.integration

# Prometheus replays its WAL for ~6 s before the first remote_write; everything else takes
# a second or two. Generous, yet far below pytest's patience.
WAIT_S = 40.0
POLL_S = 0.25

T = TypeVar("T")
Labels = frozenset[tuple[str, str]]


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = WAIT_S) -> T:
    """Await ``check`` until it returns without an AssertionError; return its result.

    On timeout the last assertion message says what was still missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}: {exc}"
                ) from exc
        await asyncio.sleep(POLL_S)


def labelset(labels: dict[str, str]) -> Labels:
    """A hashable label set; empty values dropped ("equivalent to no label")."""
    return frozenset((k, v) for k, v in labels.items() if v != "")


def show(labels: Labels) -> str:
    d = dict(labels)
    name = d.pop("__name__", "")
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"


def same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


# --- what gob stored ------------------------------------------------------------------------


class Stored:
    """Reads what arrived in gob's tables for the default tenant."""

    def __init__(self, server: Any) -> None:
        self.storage = server.app[STORAGE]
        self.tenant = server.app[CONFIG].tenancy.default_tenant
        self.db = self.storage.database

    async def series(self, job: str) -> dict[int, Labels]:
        """Series id -> label set (with __name__) of every series of ``job``."""
        table = await self.storage.query(
            f"SELECT series_id, metric_name, labels FROM {self.db}.{schema.SERIES} "
            "WHERE tenant = {tenant:String} AND labels['job'] = {job:String}",
            {"tenant": self.tenant, "job": job},
        )
        out: dict[int, Labels] = {}
        for row in table.to_pylist():
            sid = int.from_bytes(row["series_id"], "little")
            out[sid] = labelset({**dict(row["labels"]), "__name__": row["metric_name"]})
        return out

    async def samples(self, series_ids: Iterable[int]) -> dict[int, dict[int, float]]:
        """Series id -> {timestamp ms: value}; duplicates (a retried batch before merges)
        must carry the same value."""
        ids = sorted(series_ids)
        table = await self.storage.query(
            f"SELECT series_id, timestamp, value FROM {self.db}.{schema.SAMPLES} "
            "WHERE tenant = {tenant:String} AND series_id IN {ids:Array(UInt128)}",
            {"tenant": self.tenant, "ids": ids},
        )
        out: dict[int, dict[int, float]] = {sid: {} for sid in ids}
        for row in table.to_pylist():
            points = out[int.from_bytes(row["series_id"], "little")]
            ts, value = row["timestamp"], row["value"]
            if ts in points:
                assert same_value(points[ts], value), f"two values at {ts}: {points[ts]}, {value}"
            points[ts] = value
        return out

    async def by_labels(
        self, job: str, names: Iterable[str] | None = None
    ) -> dict[Labels, dict[int, float]]:
        """Label set -> samples, for the series of ``job`` (named one of ``names``)."""
        series = await self.series(job)
        if names is not None:
            wanted = set(names)
            series = {sid: ls for sid, ls in series.items() if dict(ls)["__name__"] in wanted}
        samples = await self.samples(series)
        return {ls: samples[sid] for sid, ls in series.items()}

    async def samples_per_timestamp(self, timestamps: Iterable[int]) -> dict[int, int]:
        """Timestamp -> number of series with a sample at it."""
        table = await self.storage.query(
            f"SELECT timestamp, uniqExact(series_id) AS n FROM {self.db}.{schema.SAMPLES} "
            "WHERE tenant = {tenant:String} AND timestamp IN {ts:Array(Int64)} "
            "GROUP BY timestamp",
            {"tenant": self.tenant, "ts": list(timestamps)},
        )
        return dict(
            zip(table.column("timestamp").to_pylist(), table.column("n").to_pylist(), strict=True)
        )

    async def metadata(self) -> dict[str, set[tuple[str, str, str]]]:
        table = await self.storage.query(
            f"SELECT metric_family_name, type, help, unit FROM {self.db}.{schema.METADATA} "
            "WHERE tenant = {tenant:String}",
            {"tenant": self.tenant},
        )
        out: dict[str, set[tuple[str, str, str]]] = {}
        for row in table.to_pylist():
            out.setdefault(row["metric_family_name"], set()).add(
                (row["type"], row["help"], row["unit"])
            )
        return out


async def exposition(http: aiohttp.ClientSession, url: str) -> dict[Labels, float]:
    """Scrape ``url`` once: label set (with __name__, empty values dropped) -> value."""
    async with http.get(url) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status}"
        text = await resp.text()
    return {
        labelset({**s.labels, "__name__": s.name}): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def select(samples: dict[Labels, float], name: str) -> dict[Labels, float]:
    return select_names(samples, (name,))


def select_names(samples: dict[Labels, float], names: Iterable[str]) -> dict[Labels, float]:
    wanted = set(names)
    return {ls: v for ls, v in samples.items() if dict(ls)["__name__"] in wanted}


async def assert_gob_accepted_everything(http: aiohttp.ClientSession, server: Any) -> None:
    """gob discarded nothing and answered every remote_write with 204."""
    own = await exposition(http, str(server.make_url("/metrics")))
    discarded = {show(ls): v for ls, v in select(own, "gob_discarded_samples_total").items()}
    assert not discarded, f"gob discarded samples: {discarded}"
    writes = {
        dict(ls)["code"]: v
        for ls, v in select(own, "gob_http_requests_total").items()
        if dict(ls)["handler"] == "/api/v1/write"
    }
    assert writes.get("204", 0) > 0 and set(writes) == {"204"}, f"write answers by code: {writes}"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _run(start: Callable[[], Service]) -> AsyncIterator[Service]:
    """Start a sender off the event loop and stop it by PID whatever the test did."""
    service = await asyncio.to_thread(start)
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)
        # Shown by pytest only when the test failed.
        print(f"--- {service.name} log (tail) ---\n{service.log_tail(60)}")


@pytest.fixture
async def prometheus_sender(gob_server: Any, tmp_path: Path) -> AsyncIterator[Service]:
    url = str(gob_server.make_url("/api/v1/write"))
    start = partial(prometheus.start_prometheus, tmp_path / "prometheus", remote_write_url=url)
    async for service in _run(start):
        yield service


@pytest.fixture
async def vmagent_sender(gob_server: Any, tmp_path: Path) -> AsyncIterator[Service]:
    url = str(gob_server.make_url("/api/v1/write"))
    async for service in _run(partial(vmagent.start_vmagent, tmp_path / "vmagent", url)):
        yield service


# --- Prometheus ---------------------------------------------------------------------------------

# Metrics whose first samples must have arrived before all samples are compared: info-style,
# gauges, counters, and summary quantiles that are NaN until Prometheus answers a query.
PROM_GATE = (
    "up",
    "prometheus_build_info",
    "go_goroutines",
    "scrape_samples_scraped",
    "prometheus_tsdb_head_samples_appended_total",
    "prometheus_engine_query_duration_seconds",
)


class PrometheusAPI:
    def __init__(self, http: aiohttp.ClientSession, service: Service) -> None:
        self.http = http
        self.base = prometheus.base_url(service)

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(self.base + path, params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", f"GET {path} {params}: {body}"
        return body["data"]

    async def series(self, match: str) -> set[Labels]:
        return {labelset(s) for s in await self.get("/api/v1/series", **{"match[]": match})}

    async def raw_samples(self, selector: str) -> dict[Labels, dict[int, float]]:
        """Every stored sample of ``selector`` (a range selector evaluated now)."""
        data = await self.get("/api/v1/query", query=f"{selector}[10m]", time=f"{time.time():.3f}")
        assert data["resultType"] == "matrix", data
        return {
            labelset(r["metric"]): {round(ts * 1000): float(v) for ts, v in r["values"]}
            for r in data["result"]
        }


async def test_prometheus_remote_write(
    gob_server: Any, prometheus_sender: Service, http: aiohttp.ClientSession
) -> None:
    started_ms = int(time.time() * 1000)
    prom = PrometheusAPI(http, prometheus_sender)
    stored = Stored(gob_server)
    job = "prometheus"
    instance = f"127.0.0.1:{prometheus_sender.port}"

    async def first_samples() -> None:
        got = await stored.by_labels(job, ["up", "prometheus_build_info"])
        up = got.get(labelset({"__name__": "up", "job": job, "instance": instance}), {})
        assert up, f"no up{{instance={instance!r}}} yet; series so far: {[show(s) for s in got]}"
        assert set(up.values()) == {1.0}, f"up values: {up}"
        builds = [dict(ls) for ls in got if dict(ls)["__name__"] == "prometheus_build_info"]
        assert len(builds) == 1 and builds[0]["version"].startswith("2.42"), builds

    await eventually(first_samples, "up and prometheus_build_info to arrive")

    # Labels: gob's series for `up` are exactly Prometheus' own; every series Prometheus knew
    # a moment ago arrives, and gob has none that Prometheus does not know.
    gob_up = {ls for ls in (await stored.series(job)).values() if dict(ls)["__name__"] == "up"}
    assert gob_up == await prom.series("up")
    known = await prom.series(f'{{job="{job}"}}')

    async def all_known_series() -> set[Labels]:
        have = set((await stored.series(job)).values())
        missing = known - have
        assert not missing, f"{len(missing)} series missing, e.g. {[show(s) for s in missing][:5]}"
        return have

    have = await eventually(all_known_series, f"the {len(known)} series Prometheus reported")
    unknown = have - await prom.series(f'{{job="{job}"}}')
    assert not unknown, f"series Prometheus never had: {[show(s) for s in unknown][:5]}"

    # Values: every raw sample gob stored equals Prometheus' own at the same timestamp, and
    # per series gob has no gap between its first and last sample and misses none before.
    async def a_few_samples_each() -> None:
        got = await stored.by_labels(job, PROM_GATE)
        names = {dict(ls)["__name__"] for ls, points in got.items() if len(points) >= 3}
        assert names == set(PROM_GATE), f"3+ samples only for {sorted(names)}"

    await eventually(a_few_samples_each, "3 samples of each of " + ", ".join(PROM_GATE))
    gob_points = await stored.by_labels(job)
    prom_points = await prom.raw_samples(f'{{job="{job}"}}')
    assert set(gob_points) <= set(prom_points), "gob has series Prometheus does not"
    problems = []
    for ls, theirs in prom_points.items():
        ours = gob_points.get(ls, {})
        if not ours:
            continue  # created after gob was read (e.g. a handler's series of the query above)
        first, last = min(ours), max(ours)
        if extra := sorted(set(ours) - set(theirs)):
            problems.append(f"{show(ls)}: timestamps Prometheus does not have: {extra[:3]}")
        if lost := sorted(ts for ts in theirs if ts <= last and ts not in ours):
            problems.append(f"{show(ls)}: samples lost at {lost[:3]} (gob has {first}..{last})")
        if wrong := {
            ts: (v, theirs[ts])
            for ts, v in ours.items()
            if ts in theirs and not same_value(v, theirs[ts])
        }:
            problems.append(f"{show(ls)}: (gob, Prometheus) values differ: {wrong}")
        if not started_ms - 60_000 <= first <= last <= time.time() * 1000 + 1000:
            problems.append(f"{show(ls)}: timestamps outside the test's lifetime: {first}..{last}")
    assert not problems, f"{len(problems)} series differ: " + "; ".join(problems[:5])

    # Metadata: what gob kept for a family is what Prometheus' own metadata API reports.
    family = "prometheus_http_requests_total"

    async def metadata_arrived() -> dict[str, set[tuple[str, str, str]]]:
        meta = await stored.metadata()
        assert family in meta, f"no metadata for {family}; {len(meta)} families so far"
        return meta

    meta = await eventually(metadata_arrived, "metadata (sent every second)")
    reference = await prom.get("/api/v1/metadata")
    expected = {
        name: {(m["type"], m["help"], m["unit"]) for m in ms} for name, ms in reference.items()
    }
    assert meta[family] == expected[family] == {("counter", "Counter of HTTP requests.", "")}
    differing = {
        name: (kept, expected.get(name))
        for name, kept in meta.items()
        if not kept <= expected.get(name, set())
    }
    assert not differing, f"(gob, Prometheus) metadata differ: {differing}"

    # Nothing was refused, dropped or retried on either side.
    await assert_gob_accepted_everything(http, gob_server)
    own = await exposition(http, prometheus.base_url(prometheus_sender) + "/metrics")
    sent = {
        what: sum(select(own, f"prometheus_remote_storage_{what}_total").values())
        for what in ("samples", "metadata")
    }
    assert sent["samples"] > 0 and sent["metadata"] > 0, f"Prometheus sent: {sent}"
    failures = {
        name: sum(select(own, f"prometheus_remote_storage_{name}").values())
        for name in (
            "samples_failed_total",
            "samples_retried_total",
            "samples_dropped_total",
            "metadata_failed_total",
            "metadata_retried_total",
        )
    }
    assert failures == dict.fromkeys(failures, 0.0), f"Prometheus' remote_write: {failures}"


# --- vmagent ------------------------------------------------------------------------------------

# Series whose value never changes while vmagent runs: every sample gob holds must equal the
# value in vmagent's own exposition. (Debian's build exposes vm_app_version with empty version
# labels, so it arrives as just {job, instance}.)
VM_STABLE = (
    "vm_app_version",
    "flag",
    "vm_available_cpu_cores",
    "vm_allowed_memory_bytes",
    "process_start_time_seconds",
)
# Added by the scraper, not in the exposition.
SCRAPE_SERIES = ("up", "scrape_")


async def test_vmagent_remote_write(
    gob_server: Any, vmagent_sender: Service, http: aiohttp.ClientSession
) -> None:
    started_ms = int(time.time() * 1000)
    stored = Stored(gob_server)
    job = "vmagent"
    instance = f"127.0.0.1:{vmagent_sender.port}"
    target = {"job": job, "instance": instance}
    metrics_url = vmagent.base_url(vmagent_sender) + "/metrics"

    async def up_arrived() -> None:
        got = await stored.by_labels(job, ["up"])
        up = got.get(labelset({"__name__": "up", **target}), {})
        assert up, f"no up{{instance={instance!r}}} yet: {[show(s) for s in got]}"
        assert set(up.values()) == {1.0}, f"up values: {up}"

    await eventually(up_arrived, "up from vmagent")

    def as_scraped(samples: dict[Labels, float]) -> dict[Labels, float]:
        return {ls | labelset(target): v for ls, v in samples.items()}

    # Labels: every series of the exposition arrives with the target labels added, and gob
    # has nothing beyond the exposition and the scraper's own series.
    known = as_scraped(await exposition(http, metrics_url))

    async def all_known_series() -> set[Labels]:
        have = set((await stored.series(job)).values())
        missing = set(known) - have
        assert not missing, f"{len(missing)} series missing, e.g. {[show(s) for s in missing][:5]}"
        return have

    have = await eventually(all_known_series, f"the {len(known)} series of vmagent's /metrics")
    later = as_scraped(await exposition(http, metrics_url))
    unknown = {ls for ls in have - set(later) if not dict(ls)["__name__"].startswith(SCRAPE_SERIES)}
    assert not unknown, f"series vmagent never exposed: {[show(s) for s in unknown][:5]}"

    # Values: every stored sample of a stable series equals the exposed value.
    async def two_samples_each() -> dict[Labels, dict[int, float]]:
        got = await stored.by_labels(job, VM_STABLE)
        short = [show(ls) for ls in select_names(later, VM_STABLE) if len(got.get(ls, {})) < 2]
        assert not short, f"fewer than 2 samples: {short[:5]}"
        return got

    gob_points = await eventually(two_samples_each, "2 samples of each stable series")
    for ls, points in gob_points.items():
        wrong = {ts: v for ts, v in points.items() if not same_value(v, later[ls])}
        assert not wrong, f"{show(ls)}: exposed {later[ls]}, gob has {wrong}"
        assert all(started_ms - 60_000 <= ts <= time.time() * 1000 + 1000 for ts in points), (
            f"{show(ls)}: timestamps outside the test's lifetime: {sorted(points)[:3]}"
        )

    # Completeness: a scrape's samples share one timestamp, so each scrape gob has seen must
    # hold exactly scrape_samples_post_metric_relabeling exposed samples plus one sample of
    # each series the scraper adds (up, scrape_*). Blocks travel in parallel queues, so
    # this converges; a lost sample keeps it from converging.
    added = {ls for ls in have - set(later) if dict(ls)["__name__"].startswith(SCRAPE_SERIES)}
    scrape_times = sorted(gob_points[labelset({"__name__": "vm_app_version", **target})])

    async def every_scrape_complete() -> None:
        exposed_key = labelset({"__name__": "scrape_samples_post_metric_relabeling", **target})
        exposed = (await stored.by_labels(job, [dict(exposed_key)["__name__"]]))[exposed_key]
        per_scrape = await stored.samples_per_timestamp(scrape_times)
        wrong = {
            ts: (per_scrape.get(ts, 0), exposed.get(ts, math.nan) + len(added))
            for ts in scrape_times
            if per_scrape.get(ts, 0) != exposed.get(ts, math.nan) + len(added)
        }
        assert not wrong, f"(stored, expected) samples per scrape timestamp: {wrong}"

    await eventually(every_scrape_complete, f"all samples of {len(scrape_times)} scrapes")

    # Nothing was refused, dropped or retried on either side.
    await assert_gob_accepted_everything(http, gob_server)
    final = await exposition(http, metrics_url)
    requests = {
        dict(ls)["status_code"]: v
        for ls, v in select(final, "vmagent_remotewrite_requests_total").items()
    }
    assert requests.get("2XX", 0) > 0 and set(requests) == {"2XX"}, f"vmagent requests: {requests}"
    failures = {
        name: sum(select(final, name).values())
        for name in (
            "vmagent_remotewrite_errors_total",
            "vmagent_remotewrite_retries_count_total",
            "vmagent_remotewrite_packets_dropped_total",
            "vmagent_remotewrite_relabel_metrics_dropped_total",
            "vm_persistentqueue_blocks_dropped_total",
        )
    }
    assert failures == dict.fromkeys(failures, 0.0), f"vmagent remote_write: {failures}"
