"""Simulate what a Prometheus scraping three PromLabs demo-service instances stores, as a
deterministic sequence of scrape rounds.

The model follows ../shared/compliance/promql/demo-service-metrics.yml, a description of
juliusv/prometheus_demo_service (Apache-2.0) written from reading that repository; this is
our own simulation of that description, not its code. Departures, all deliberate:

* the histogram is simulated per 5 s slot from the latency distribution (expected bucket
  counts from the normal CDF) instead of request by request, so three hours of data take
  about a second to build;
* ``go_*``, ``process_*`` and ``promhttp_*`` series are left out: no query reads them;
* instance 10001 is restarted once inside the compared window, so the data has a counter
  reset, a failed-scrape gap (``up`` = 0) and staleness markers for every series of that
  target, besides those of ``demo_intermittent_metric``.

Every random draw comes from :class:`random.Random` seeded with an integer, whose
``random()`` sequence Python keeps reproducible across versions, so the data set (and
its checksum) is the same on every run and machine.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

STALE_NAN_BITS = 0x7FF0000000000002
#: The value Prometheus writes when a series disappears from a scrape (a NaN whose payload
#: marks it as a staleness marker, distinct from an ordinary NaN sample).
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]

START_MS = 1_705_276_800_000  # 2024-01-15T00:00:00Z
JOB = "demo"
INSTANCES = ("demo.promlabs.com:10000", "demo.promlabs.com:10001", "demo.promlabs.com:10002")

MiB = 1 << 20
GiB = 1 << 30
TICK_MS = 100          # the demo service updates its CPU, memory and item counters every 100 ms
SLOT_MS = 5_000        # our histogram resolution
DISK_TOTAL = 160e9

Labels = tuple[tuple[str, str], ...]
"""A label set as (name, value) pairs sorted by name, ``__name__`` included."""


@dataclass(frozen=True)
class Target:
    """One scraped demo-service instance and the life of its process."""

    instance: str
    #: scrape phase within the interval (Prometheus spreads targets by a hash of their labels).
    offset_ms: int
    #: a scrape lands up to this many ms late (0 = exactly on the phase, like an idle host).
    jitter_ms: int
    #: process start times, ms; each process runs until the next one's ``down_ms``.
    starts_ms: tuple[int, ...]
    #: when each process but the last stops; scrapes in [down, next start) fail.
    downs_ms: tuple[int, ...] = ()


def _default_targets() -> tuple[Target, ...]:
    s = START_MS
    return (
        Target(INSTANCES[0], offset_ms=0, jitter_ms=0, starts_ms=(s - 253_000,)),
        # Restarted at 02:33:20 and back at 02:34:03: a counter reset, nine failed scrapes
        # and staleness markers inside the compared window (02:30-02:40).
        Target(INSTANCES[1], offset_ms=1_234, jitter_ms=3,
               starts_ms=(s - 97_000, s + 9_243_000), downs_ms=(s + 9_200_000,)),
        Target(INSTANCES[2], offset_ms=3_721, jitter_ms=3, starts_ms=(s - 3_751_000,)),
    )


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate; the defaults are the data set the compliance run uses."""

    start_ms: int = START_MS
    duration_s: int = 3 * 3600
    interval_ms: int = 5_000
    seed: int = 20240115
    targets: tuple[Target, ...] = field(default_factory=_default_targets)

    @property
    def rounds(self) -> int:
        return self.duration_s * 1000 // self.interval_ms


# -- the histogram: demo_api_request_duration_seconds ------------------------------------

def _exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    # Multiplied step by step, as client_golang's ExponentialBuckets does, so the upper
    # bounds (and their text) are the ones a real scrape shows.
    out, b = [], start
    for _ in range(count):
        out.append(b)
        b *= factor
    return out


BUCKETS = _exponential_buckets(0.0001, 1.5, 25)
LE_TEXT = [repr(b) for b in BUCKETS] + ["+Inf"]


@dataclass(frozen=True)
class RequestLoop:
    """One self-request loop of the demo client: ``method path`` every ``sleep_ms * osc``."""

    method: str
    path: str
    sleep_ms: float
    latency: float
    error_ratio: float
    outage_s: int
    ok_status: str = "200"


LOOPS = (
    RequestLoop("GET", "/api/foo", 10, 0.010, 0.005, 23),
    RequestLoop("POST", "/api/foo", 150, 0.020, 0.02, 60),
    RequestLoop("GET", "/api/bar", 20, 0.015, 0.0025, 13),
    RequestLoop("POST", "/api/bar", 100, 0.050, 0.01, 47),
    # Requests to an unknown path answer 404 in tens of microseconds, never 500.
    RequestLoop("GET", "/api/nonexistent", 500, 0.00005, 0.0, 0, ok_status="404"),
)


def _bucket_fractions(mean: float, stddev: float) -> list[float]:
    """P(latency <= le) for every finite bucket and +Inf, under a normal distribution."""
    cdf = [0.5 * (1.0 + math.erf((b - mean) / (stddev * math.sqrt(2.0)))) for b in BUCKETS]
    return [*cdf, 1.0]


@dataclass
class _HistogramSeries:
    cumulative: list[float]   # expected cumulative count per bucket (last one: +Inf, exact)
    total: int = 0            # observations (equals cumulative[-1])
    sum: float = 0.0


# -- one demo-service process -------------------------------------------------------------

class DemoProcess:
    """The metrics of one demo-service process from its start: advance it to a time, then
    read what a scrape at that time would see."""

    def __init__(self, seed: int, start_ms: int, instance: str) -> None:
        self.rng = random.Random(seed)
        self.instance = instance
        self.start_ms = start_ms
        self.next_tick = start_ms + TICK_MS
        self.next_second = start_ms + 1000
        self.next_slot = start_ms + SLOT_MS
        self.next_holiday = start_ms
        self.next_batch_us = start_ms * 1000 + 11_000_000 + self.rng.randrange(3000)
        self.cpu = {"user": 0.0, "system": 0.0, "idle": 0.0}
        self.memory_base = {"used": 1200 * MiB, "cached": 2500 * MiB, "buffers": 165 * MiB}
        self.memory = dict(self.memory_base)
        self.disk = 16e9
        self.items_acc = 0.0
        self.holiday = 0.0
        self.batch_last_run_us = self.start_ms * 1000
        self.batch_last_run_ts = 0.0
        self.batch_last_success_ts = 0.0
        self.batch_duration = 0.0
        self.batch_processed = 0.0
        self.histograms: dict[tuple[str, str, str], _HistogramSeries] = {}
        self.fractions = {
            (loop.path, loop.method, outage): _bucket_fractions(
                loop.latency * (3 if outage else 1), loop.latency * (3 if outage else 1) / 10)
            for loop in LOOPS for outage in (False, True)
        }

    def advance(self, until_ms: int) -> None:
        """Run every timer of the process that fires at or before ``until_ms``."""
        rnd = self.rng.random
        cpu, mem, base = self.cpu, self.memory, self.memory_base
        while self.next_tick <= until_ms:
            t = self.next_tick
            while self.next_holiday <= t:
                self.holiday = 1.0 if rnd() < 0.2 else 0.0
                self.next_holiday += 300_000
            while self.next_batch_us <= t * 1000:
                self._batch_run()
            u_user = (0.3 + (rnd() - 0.5) / 5) * 0.4
            u_system = (0.2 + (rnd() - 0.5) / 5) * 0.4
            cpu["user"] += u_user
            cpu["system"] += u_system
            cpu["idle"] += 0.4 - u_user - u_system
            for kind in ("used", "cached", "buffers"):
                x = mem[kind] + int((rnd() - 0.5) * 60 * MiB)
                b = base[kind]
                mem[kind] = x if b * 0.5 <= x <= b * 1.5 else b
            since_start = (t - self.start_ms) / 1000
            period = 100 * (2 + math.sin(1 + 2 * math.pi * since_start / 300))
            if self.holiday:
                period *= 1.8
            self.items_acc += TICK_MS / period
            if t >= self.next_second:
                self.disk += int(0.5e6 * (1 - (rnd() - 0.5)))
                if self.disk > 0.9 * DISK_TOTAL:
                    self.disk = 16e9
                self.next_second += 1000
            if t >= self.next_slot:
                self._requests(self.next_slot)
                self.next_slot += SLOT_MS
            self.next_tick += TICK_MS

    def _batch_run(self) -> None:
        now_us = self.next_batch_us
        self.batch_duration = (now_us - self.batch_last_run_us) / 1e6
        self.batch_last_run_us = now_us
        self.batch_last_run_ts = now_us / 1e6
        if self.rng.random() < 0.75:
            self.batch_last_success_ts = now_us / 1e6
            self.batch_processed = float(1_000_000 + 100_000 - self.rng.randrange(100_000))
        self.next_batch_us = now_us + 60_000_000 + self.rng.randrange(3000)

    def _requests(self, slot_end_ms: int) -> None:
        """Add the requests of the 5 s slot ending at ``slot_end_ms`` to the histograms."""
        rnd = self.rng.random
        mid_s = (slot_end_ms - SLOT_MS / 2) / 1000
        since_start = (slot_end_ms - SLOT_MS / 2 - self.start_ms) / 1000
        osc = 2 + math.sin(math.sin(2 * math.pi * mid_s / 3600))
        for loop in LOOPS:
            expected = SLOT_MS / (loop.sleep_ms * osc)
            n = int(expected + rnd())
            outage = bool(loop.outage_s) and since_start % (10 * loop.outage_s) < loop.outage_s
            p_error = loop.error_ratio * (10 if outage else 1)
            errors = int(n * p_error + rnd()) if p_error else 0
            errors = min(errors, n)
            fractions = self.fractions[(loop.path, loop.method, outage)]
            mean = loop.latency * (3 if outage else 1)
            for status, count in ((loop.ok_status, n - errors), ("500", errors)):
                if count == 0:
                    continue
                key = (loop.method, loop.path, status)
                h = self.histograms.get(key)
                if h is None:
                    h = self.histograms[key] = _HistogramSeries([0.0] * len(fractions))
                h.cumulative = [c + count * f for c, f in zip(h.cumulative, fractions,
                                                               strict=True)]
                h.total += count
                h.sum += count * mean * (1 + (rnd() - 0.5) / 50)

    def expose(self, t_ms: int) -> list[tuple[Labels, float]]:
        """What the process's /metrics shows at ``t_ms``, as (labels, value) with the
        target labels (``job``, ``instance``) Prometheus attaches."""
        def lbl(name: str, *extra: tuple[str, str]) -> Labels:
            return _labels(name, self.instance, extra)

        out: list[tuple[Labels, float]] = []
        for mode in ("idle", "system", "user"):
            out.append((lbl("demo_cpu_usage_seconds_total", ("mode", mode)), self.cpu[mode]))
        used, cached, buffers = (self.memory[k] for k in ("used", "cached", "buffers"))
        memory = {"buffers": buffers, "cached": cached, "used": used,
                  "free": 8 * GiB - used - cached - buffers}
        for kind, value in sorted(memory.items()):
            out.append((lbl("demo_memory_usage_bytes", ("type", kind)), float(value)))
        out.append((lbl("demo_num_cpus"), 4.0))
        out.append((lbl("demo_disk_usage_bytes"), float(self.disk)))
        out.append((lbl("demo_disk_total_bytes"), DISK_TOTAL))
        out.append((lbl("demo_batch_last_success_timestamp_seconds"),
                    self.batch_last_success_ts))
        out.append((lbl("demo_batch_last_run_timestamp_seconds"), self.batch_last_run_ts))
        out.append((lbl("demo_batch_last_run_duration_seconds"), self.batch_duration))
        out.append((lbl("demo_batch_last_run_processed_bytes"), self.batch_processed))
        out.append((lbl("demo_is_holiday"), self.holiday))
        out.append((lbl("demo_items_shipped_total"), float(math.floor(self.items_acc))))
        in_progress = self.rng.choices((0, 1, 2, 3, 4), weights=(50, 25, 15, 7, 3))[0]
        out.append((lbl("demo_api_http_requests_in_progress"), float(in_progress)))
        floor = math.floor
        for key, h in sorted(self.histograms.items()):
            buckets, sum_labels, count_labels = _histogram_labels(self.instance, key)
            out.extend(zip(buckets, [float(floor(c)) for c in h.cumulative], strict=True))
            out.append((sum_labels, h.sum))
            out.append((count_labels, float(h.total)))
        # Exposed only while the wall-clock minute is even.
        if (t_ms // 60_000) % 2 == 0:
            out.append((lbl("demo_intermittent_metric"), 1.0))
        return out


# -- the scraper ---------------------------------------------------------------------------

_LABELS_CACHE: dict[tuple[str, str, Labels], Labels] = {}
_HISTOGRAM_CACHE: dict[tuple[str, tuple[str, str, str]], tuple[list[Labels], Labels, Labels]] = {}


def _labels(name: str, instance: str, extra: Labels) -> Labels:
    key = (name, instance, extra)
    labels = _LABELS_CACHE.get(key)
    if labels is None:
        labels = tuple(sorted((("__name__", name), ("instance", instance), ("job", JOB),
                               *extra)))
        _LABELS_CACHE[key] = labels
    return labels


def _histogram_labels(instance: str, key: tuple[str, str, str]
                      ) -> tuple[list[Labels], Labels, Labels]:
    """Label sets of one histogram child: its buckets (in ``le`` order), _sum and _count."""
    cached = _HISTOGRAM_CACHE.get((instance, key))
    if cached is None:
        method, path, status = key
        common = (("method", method), ("path", path), ("status", status))
        name = "demo_api_request_duration_seconds"
        cached = ([_labels(f"{name}_bucket", instance, (("le", le), *common)) for le in LE_TEXT],
                  _labels(f"{name}_sum", instance, common),
                  _labels(f"{name}_count", instance, common))
        _HISTOGRAM_CACHE[(instance, key)] = cached
    return cached


@dataclass
class _TargetState:
    target: Target
    index: int
    rng: random.Random
    process: DemoProcess | None = None
    incarnation: int = -1
    previous: set[Labels] = field(default_factory=set)


def scrape_rounds(spec: DatasetSpec | None = None
                  ) -> Iterator[list[tuple[int, list[tuple[Labels, float]]]]]:
    """Yield one list per scrape round with one (timestamp ms, [(labels, value), ...]) per
    target: what Prometheus appends for that scrape, staleness markers and the synthetic
    series (``up``, ``scrape_*``) included."""
    spec = spec or DatasetSpec()
    states = [_TargetState(t, i, random.Random(spec.seed * 100 + i))
              for i, t in enumerate(spec.targets)]
    for r in range(spec.rounds):
        out: list[tuple[int, list[tuple[Labels, float]]]] = []
        for st in states:
            t = st.target
            ts = spec.start_ms + r * spec.interval_ms + t.offset_ms
            if t.jitter_ms:
                ts += st.rng.randrange(t.jitter_ms + 1)
            out.append((ts, _scrape(spec, st, ts)))
        yield out


def _scrape(spec: DatasetSpec, st: _TargetState, ts: int) -> list[tuple[Labels, float]]:
    t = st.target
    alive = -1
    for i, start in enumerate(t.starts_ms):
        stop = t.downs_ms[i] if i < len(t.downs_ms) else None
        if start <= ts and (stop is None or ts < stop):
            alive = i
    exposed: list[tuple[Labels, float]] = []
    if alive >= 0:
        if alive != st.incarnation:
            seed = spec.seed * 1000 + st.index * 10 + alive
            st.process = DemoProcess(seed, t.starts_ms[alive], t.instance)
            st.incarnation = alive
        assert st.process is not None
        st.process.advance(ts)
        exposed = st.process.expose(ts)
    current = {labels for labels, _ in exposed}
    scraped = float(len(exposed))
    samples = exposed
    # A series seen in the previous scrape but not in this one gets a staleness marker.
    samples.extend((labels, STALE_NAN) for labels in sorted(st.previous - current))
    synthetic = {
        "up": 1.0 if alive >= 0 else 0.0,
        "scrape_duration_seconds": round(0.0015 + st.rng.random() * 0.004, 6),
        "scrape_samples_scraped": scraped,
        "scrape_samples_post_metric_relabeling": scraped,
        "scrape_series_added": float(len(current - st.previous)),
    }
    samples.extend((_labels(name, t.instance, ()), v) for name, v in synthetic.items())
    st.previous = current
    return samples
