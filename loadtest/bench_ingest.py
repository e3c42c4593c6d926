"""Ingest benchmark: send one pre-encoded remote_write workload to gob-metrics and to
VictoriaMetrics in turn and compare throughput, CPU, latency, memory and bytes on disk.

Each target is started as a subprocess on a free 127.0.0.1 port with a fresh data directory,
fed every request of the workload by ``--concurrency`` senders that retry 5xx/429 and
connection errors with backoff like Prometheus' queue manager, then flushed, merged, stopped
and measured. All traffic stays on loopback; every wait is bounded; servers are killed by PID
on any exit.

    /tmp/venv0/bin/python loadtest/bench_ingest.py --samples 2000000 --targets gob,vm

See loadtest/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import math
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(REPO)) if p not in sys.path]

import workload  # noqa: E402 - needs the path above when imported from elsewhere

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "gob-metrics-bench/1",
}
# Prometheus' queue_config defaults: min_backoff 30ms, max_backoff 5s, doubling.
MIN_BACKOFF = 0.03
MAX_BACKOFF = 5.0
MAX_ATTEMPTS = 10  # Prometheus retries forever; a benchmark gives up and counts a failure.
REQUEST_TIMEOUT = 30.0  # Prometheus' remote_timeout default
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 180.0
SETTLE_TIMEOUT = 60.0
MERGE_TIMEOUT = 900.0
OPTIMIZE_TIMEOUT = 1800.0

# The benchmark measures capacity: the per-tenant ingestion rate limit (Mimir's default of
# 10k samples/s) would make it measure the limit instead. VictoriaMetrics has none.
GOB_BENCH_SETTINGS = ("limits.ingestion_rate=0",)

# Fidelity: every sample of one host is read back from each target and compared bit for bit
# with what was sent (gob-metrics stores values bit-exact; VictoriaMetrics keeps about 12
# significant decimal digits of a full-precision float, which is part of its disk figure).
FIDELITY_INSTANCE = "host-0:9100"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the server's process tree, from /proc -----------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [0] is field 3 (state)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].decode().split()


def process_tree(root: int) -> list[int]:
    """Return ``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class TreeSample:
    cpu_s: float  # utime+stime of live processes plus cutime+cstime of their reaped children
    rss_bytes: int
    procs: int


def sample_tree(root: int) -> TreeSample:
    """CPU seconds and RSS summed over the process tree of ``root``."""
    ticks = rss = n = 0
    for pid in process_tree(root):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        # fields 14-17: utime stime cutime cstime; field 24: rss in pages
        ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        rss += int(f[21]) * PAGE_SIZE
        n += 1
    return TreeSample(ticks / CLK_TCK, rss, n)


def vm_hwm(pid: int) -> int:
    """Peak resident set size of one process (VmHWM), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMonitor:
    """Samples the server's process tree in the background; keeps the peak total RSS."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.max_procs = 0
        self._task: asyncio.Task | None = None

    async def sample(self) -> TreeSample:
        s = await asyncio.to_thread(sample_tree, self.root)
        self.peak_rss = max(self.peak_rss, s.rss_bytes)
        self.max_procs = max(self.max_procs, s.procs)
        return s

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_idle(self, timeout: float, cores: float = 0.05, window: float = 1.0) -> float:
        """Wait until the tree uses under ``cores`` CPUs over ``window`` s; return its CPU s."""
        deadline = time.monotonic() + timeout
        prev = await self.sample()
        while time.monotonic() < deadline:
            await asyncio.sleep(window)
            cur = await self.sample()
            if cur.cpu_s - prev.cpu_s < cores * window:
                return cur.cpu_s
            prev = cur
        log(f"server still busy after {timeout:.0f}s; taking CPU time as it is")
        return prev.cpu_s


# --- servers -----------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen] = {}


def _kill_all() -> None:
    """Kill every server this script started that is still running, by its PID."""
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # its own session: pgid == pid
            with contextlib.suppress(Exception):
                proc.wait(5)
        _LIVE.pop(pid, None)


atexit.register(_kill_all)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        _LIVE[self.proc.pid] = self.proc

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.base + self.ready_path) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM by PID, wait up to ``timeout``; SIGKILL if it lingers. (exit code, seconds)"""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} still running {timeout}s after SIGTERM: killing it")
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        _LIVE.pop(self.proc.pid, None)
        # anything left in its session (helpers) goes too
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode, time.monotonic() - t0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes like ``du``, apparent bytes) of a directory tree, hard links once."""
    seen: set[tuple[int, int]] = set()
    alloc = apparent = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            alloc += st.st_blocks * 512
            if name in filenames:
                apparent += st.st_size
    return alloc, apparent


# --- the sender ----------------------------------------------------------------------------


@dataclass
class SendStats:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)  # first line of each non-2xx answer
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    concurrency: int = 0
    timed_out: bool = False


async def send_all(
    http: aiohttp.ClientSession,
    url: str,
    payloads: list[bytes],
    concurrency: int,
    window: int,
    timeout: float,
    progress_every: float = 10.0,
) -> SendStats:
    """POST every payload once, in order, with up to ``concurrency`` requests in flight.

    A request may start only when every request more than ``window`` positions before it has
    been answered: requests that close together share no series, so each series' samples
    arrive in time order even when one request is retried, as with Prometheus' shards.
    """
    n = len(payloads)
    st = SendStats(requests=n, concurrency=min(concurrency, window))
    done = bytearray(n)
    low = 0
    next_idx = 0
    cond = asyncio.Condition()
    t_start = time.monotonic()
    deadline = t_start + timeout
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    req_timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def send_one(body: bytes) -> None:
        backoff = MIN_BACKOFF
        for attempt in range(MAX_ATTEMPTS):
            t0 = time.perf_counter()
            retry_after = None
            try:
                async with http.post(url, data=body, headers=HEADERS, timeout=req_timeout) as r:
                    text = await r.read()
                    status: int | str = r.status
                    retry_after = r.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                status, text = f"conn:{type(exc).__name__}", str(exc).encode()
            st.latencies.append(time.perf_counter() - t0)
            st.statuses[status] += 1
            if isinstance(status, int) and 200 <= status < 300:
                st.ok += 1
                return
            first_line = text.decode(errors="replace").strip().splitlines()[:1]
            st.messages[f"{status}: {first_line[0][:200] if first_line else ''}"] += 1
            recoverable = not isinstance(status, int) or status == 429 or status >= 500
            if not recoverable:  # 4xx: Prometheus drops the batch and never retries it
                st.failed += 1
                return
            if attempt == MAX_ATTEMPTS - 1 or time.monotonic() > deadline:
                break
            st.retries += 1
            pause = backoff
            with contextlib.suppress(TypeError, ValueError):
                pause = float(retry_after)
            await asyncio.sleep(min(max(pause, 0.0), MAX_BACKOFF))
            backoff = min(backoff * 2, MAX_BACKOFF)
        st.failed += 1

    async def worker() -> None:
        nonlocal low, next_idx
        while True:
            async with cond:
                if next_idx >= n:
                    return
                if time.monotonic() > deadline:
                    st.timed_out = True
                    return
                j = next_idx
                next_idx += 1
                await cond.wait_for(lambda j=j: j - low < window)  # noqa: B023 - low moves on
            await send_one(payloads[j])
            async with cond:
                done[j] = 1
                while low < n and done[low]:
                    low += 1
                cond.notify_all()

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_every)
            el = time.monotonic() - t_start
            log(
                f"  {low:>7,}/{n:,} requests answered in order, {el:5.0f}s, "
                f"retries {st.retries}, failed {st.failed}"
            )

    rep = asyncio.create_task(reporter())
    try:
        await asyncio.gather(*(worker() for _ in range(st.concurrency)))
    finally:
        rep.cancel()
    st.wall_s = time.monotonic() - t_start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    st.client_cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return st


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# --- targets -------------------------------------------------------------------------------



_EXPECTED: dict[int, dict] = {}


def expected_values(wl) -> dict[tuple, dict[int, bytes]]:
    """{sorted label pairs: {timestamp: 8 value bytes}} for every sample of
    FIDELITY_INSTANCE in the workload (scanned once per workload)."""
    if id(wl) in _EXPECTED:
        return _EXPECTED[id(wl)]
    import numpy as np
    import snappy

    from gob_metrics.proto.gob import ingest_pb2
    from gob_metrics.write import _wire
    from gob_metrics.write.decode import series_labels

    needle = FIDELITY_INSTANCE.encode()
    names: dict[bytes, tuple] = {}
    out: dict[tuple, dict[int, bytes]] = {}
    for body in wl.payloads:
        keys, info, ts, vals, _ = _wire.scan(snappy.uncompress(body))
        counts = np.frombuffer(info, np.uint32).reshape(-1, _wire.INFO_FIELDS)[:, 0]
        starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        for i, key in enumerate(keys):
            if needle not in key:
                continue
            labels = names.get(key)
            if labels is None:
                pairs = (ingest_pb2.RawLabel.FromString(b) for b in series_labels(key))
                labels = names[key] = tuple(sorted(
                    (p.name.decode(), p.value.decode()) for p in pairs if p.value))
            got = out.setdefault(labels, {})
            for j in range(int(starts[i]), int(starts[i + 1])):
                got[int.from_bytes(ts[8 * j:8 * j + 8], "little", signed=True)] = \
                    vals[8 * j:8 * j + 8]
    _EXPECTED[id(wl)] = out
    return out


def compare_values(expected: dict[tuple, dict[int, bytes]],
                   stored: dict[tuple, dict[int, bytes]]) -> dict:
    """Count the expected samples read back bit-exact, read back changed, or missing."""
    exact = changed = missing = 0
    example = ""
    for labels, points in expected.items():
        have = stored.get(labels, {})
        for t, bits in points.items():
            got = have.get(t)
            if got is None:
                missing += 1
            elif got == bits:
                exact += 1
            else:
                changed += 1
                if not example:
                    a = struct.unpack("<d", bits)[0]
                    b = struct.unpack("<d", got)[0]
                    example = f"{dict(labels).get('__name__')} {a!r} -> {b!r}"
    return {"exact": exact, "changed": changed, "missing": missing, "example": example,
            "total": exact + changed + missing}


class Target:
    name = ""
    label = ""
    ready_path = ""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.notes: list[str] = []

    def argv(self, port: int, data_dir: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    async def after_load(self, http: aiohttp.ClientSession, srv: Server, wl) -> dict:
        """Work between the last request and the stop: flush, verify, merge."""
        return {}

    def after_stop(self, data_dir: Path, wl) -> dict:
        """Work once the server has exited: offline merge, verification."""
        return {}


class GobTarget(Target):
    name = "gob"
    label = "gob-metrics"
    ready_path = "/-/ready"

    def _python(self) -> list[str]:
        return [self.args.gob_python, "-m", "gob_metrics"]

    def argv(self, port: int, data_dir: Path) -> list[str]:
        listen = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
        settings = [a for kv in self.args.gob_set for a in ("--set", kv)]
        return [*self._python(), "serve", *listen, *settings, *self.args.gob_arg]

    def env(self) -> dict[str, str]:
        # gob_metrics from this work tree, or from ``args.gob_src`` (bench_query --gob-rev)
        src = getattr(self.args, "gob_src", "") or str(REPO)
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": src + (os.pathsep + path if path else "")}

    async def after_load(self, http: aiohttp.ClientSession, srv: Server, wl) -> dict:
        out = {}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(srv.base + "/metrics") as r:
                text = await r.text()
            (srv.workdir / "metrics-after-load.txt").write_text(text)
            out["self_metrics"] = {
                ln.split(" ")[0]: ln.split(" ")[-1]
                for ln in text.splitlines()
                if ln.startswith("gob_write") and not ln.startswith("#") and "_bucket" not in ln
            }
        return out

    def after_stop(self, data_dir: Path, wl) -> dict:
        out: dict = {}
        cmd = [*self._python(), "optimize", "--data-dir", str(data_dir), *self.args.gob_arg_opt]
        t0 = time.monotonic()
        try:
            p = subprocess.run(
                cmd,
                env={**os.environ, **self.env()},
                capture_output=True,
                text=True,
                timeout=OPTIMIZE_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            out["optimize_s"] = time.monotonic() - t0
            if p.returncode != 0:
                note = f"optimize exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"
                self.notes.append(note + " -- disk measured without it")
                out["optimize_s"] = None
        except subprocess.TimeoutExpired:
            self.notes.append(f"optimize did not finish in {OPTIMIZE_TIMEOUT}s (killed)")
            out["optimize_s"] = None
        out["disk_alloc"], out["disk_apparent"] = disk_usage(data_dir)
        out.update(self._count(data_dir, wl))
        return out

    def _count(self, data_dir: Path, wl) -> dict:
        """Count what was stored, opening the data directory with chdb in a child process."""
        code = r"""
import json, sys
from chdb import session
s = session.Session(sys.argv[1])
def q(sql):
    try:
        return json.loads(str(s.query(sql, "JSON")))["data"]
    except Exception as exc:
        return {"error": str(exc)[:300]}
print(json.dumps({
  "samples": q("SELECT count() AS n, uniqExact(series_id) AS series, min(timestamp) AS tmin,"
               " max(timestamp) AS tmax FROM gob.samples"),
  "series": q("SELECT count() AS n FROM gob.series"),
  "parts": q("SELECT table, count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes,"
             " sum(data_uncompressed_bytes) AS raw FROM system.parts"
             " WHERE active AND database = 'gob' GROUP BY table ORDER BY table"),
  "columns": q("SELECT column, sum(column_data_compressed_bytes) AS bytes"
               " FROM system.parts_columns"
               " WHERE active AND database = 'gob' AND table = 'samples'"
               " GROUP BY column ORDER BY column"),
  "fidelity": q("SELECT any(s.metric_name) AS name, any(s.labels) AS labels,"
                " groupArray(t.timestamp) AS ts, groupArray(reinterpretAsUInt64(t.value)) AS bits"
                " FROM gob.samples AS t INNER JOIN (SELECT DISTINCT series_id, metric_name,"
                " labels FROM gob.series WHERE labels['instance'] = '" + sys.argv[2] + "') AS s"
                " USING (series_id) GROUP BY t.series_id"),
}))
"""
        p = subprocess.run(
            [self.args.gob_python, "-c", code, str(data_dir / "clickhouse"), FIDELITY_INSTANCE],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            self.notes.append(f"counting with chdb failed: {p.stderr.strip()[-300:]}")
            return {}
        res = json.loads(p.stdout.strip().splitlines()[-1])
        out = {"chdb": res}
        s = res.get("samples")
        parts = res.get("parts")
        if isinstance(parts, list) and parts:
            # ClickHouse deletes the parts a merge replaced only after old_parts_lifetime (8 min),
            # so the directory still holds them; the active parts are what stays.
            out["disk_stored"] = sum(int(p["bytes"]) for p in parts)
        if isinstance(s, list) and s:
            out["stored_samples"] = int(s[0]["n"])
            out["stored_series"] = int(s[0]["series"])
        else:
            self.notes.append(f"could not count gob.samples: {s}")
        rows = res.get("fidelity")
        if isinstance(rows, list):
            stored = {}
            for r in rows:
                labels = tuple(sorted([("__name__", r["name"]), *r["labels"].items()]))
                pairs = zip(r["ts"], r["bits"], strict=True)
                stored[labels] = {int(t): struct.pack("<Q", int(b)) for t, b in pairs}
            out["fidelity"] = compare_values(expected_values(wl), stored)
        else:
            self.notes.append(f"could not read back {FIDELITY_INSTANCE}: {rows}")
        return out


class VmTarget(Target):
    name = "vm"
    label = "VictoriaMetrics"
    ready_path = "/health"

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [
            self.args.vm_binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data_dir}",
            "-retentionPeriod=100y",
            *self.args.vm_arg,
        ]

    async def _metrics(self, http: aiohttp.ClientSession, srv: Server) -> dict[str, float]:
        async with http.get(srv.base + "/metrics") as r:
            text = await r.text()
        out = {}
        for ln in text.splitlines():
            if ln and not ln.startswith("#"):
                key, _, val = ln.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(val)
        return out

    async def after_load(self, http: aiohttp.ClientSession, srv: Server, wl) -> dict:
        out: dict = {}
        async with http.get(srv.base + "/internal/force_flush") as r:
            await r.read()
        m = await self._metrics(http, srv)
        out["rows_added"] = int(m.get("vm_rows_added_to_storage_total", -1))
        async with http.get(srv.base + "/api/v1/series/count", params={"nocache": "1"}) as r:
            body = await r.json()
        out["stored_series"] = int(body["data"][0])
        first, last = wl.meta["first_ts_ms"], wl.meta["last_ts_ms"]
        window_s = math.ceil((last - first) / 1000) + 60
        query = {
            "query": f'sum(count_over_time({{job="node"}}[{window_s}s]))',
            "time": f"{last / 1000 + 1:.3f}",
            "nocache": "1",
        }
        # Rows become searchable a little after force_flush answers: count again (up to
        # 10 s) until the count reaches what VictoriaMetrics says it added.
        deadline = time.monotonic() + 10.0
        while True:
            async with http.get(srv.base + "/api/v1/query", params=query) as r:
                body = await r.json()
            try:
                out["stored_samples"] = int(float(body["data"]["result"][0]["value"][1]))
            except (KeyError, IndexError, TypeError, ValueError):
                self.notes.append(f"count_over_time query gave {str(body)[:300]}")
                break
            if out["stored_samples"] >= out["rows_added"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        export = {"match[]": f'{{instance="{FIDELITY_INSTANCE}"}}'}
        async with http.get(srv.base + "/api/v1/export", params=export) as r:
            text = await r.text()
        stored: dict[tuple, dict[int, bytes]] = {}
        for line in text.splitlines():
            row = json.loads(line)
            labels = tuple(sorted(row["metric"].items()))
            stored[labels] = {int(t): struct.pack("<d", float(v))
                              for t, v in zip(row["timestamps"], row["values"], strict=True)}
        out["fidelity"] = compare_values(expected_values(wl), stored)
        # A force merge runs in the background and merges the parts that exist when it starts;
        # rows flushed meanwhile make a new part. Repeat until one part per partition is left.
        t0 = time.monotonic()
        parts = -1.0
        for _ in range(5):
            async with http.get(srv.base + "/internal/force_merge") as r:
                await r.read()
            await asyncio.sleep(1.0)
            while time.monotonic() - t0 < MERGE_TIMEOUT:
                m = await self._metrics(http, srv)
                active = m.get("vm_active_force_merges", 0) + sum(
                    v for k, v in m.items() if k.startswith("vm_active_merges")
                )
                if active == 0:
                    break
                await asyncio.sleep(0.5)
            else:
                self.notes.append(f"merges still active after {MERGE_TIMEOUT}s")
                break
            parts = sum(v for k, v in m.items() if k.startswith('vm_parts{type="storage/'))
            if parts <= 1:  # the workload lies in one monthly partition
                break
        out["parts_after_merge"] = int(parts)
        out["merge_s"] = time.monotonic() - t0
        return out

    def after_stop(self, data_dir: Path, wl) -> dict:
        alloc, apparent = disk_usage(data_dir)
        dirs = {sub.name: disk_usage(sub)[0] for sub in sorted(data_dir.iterdir())}
        # VictoriaMetrics removes the parts a merge replaced at once. Its cache/ folder holds
        # caches saved at shutdown (rebuilt if missing), not data: it is left out.
        stored = sum(v for k, v in dirs.items() if k != "cache")
        return {"disk_alloc": alloc, "disk_apparent": apparent, "disk_stored": stored, "dirs": dirs}


TARGETS = {"gob": GobTarget, "vm": VmTarget}


# --- one run -------------------------------------------------------------------------------


async def run_target(target: Target, wl, args: argparse.Namespace, base_dir: Path) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{target.name}-", dir=base_dir))
    data_dir = workdir / "data"
    port = free_port()
    srv = Server(
        target.name,
        target.argv(port, data_dir),
        port,
        workdir,
        target.ready_path,
        env=target.env(),
    )
    res: dict = {"target": target.label, "workdir": str(workdir), "argv": srv.argv}
    log(f"{target.label}: starting {' '.join(srv.argv)}")
    srv.start()
    finished = False
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(args.concurrency, 1) + 2),
            timeout=aiohttp.ClientTimeout(total=60),
        ) as http:
            res["ready_s"] = await srv.wait_ready(http, READY_TIMEOUT)
            mon = TreeMonitor(srv.proc.pid)
            before = await mon.sample()
            res["rss_ready"] = before.rss_bytes
            mon.start()
            window = max(1, wl.meta["series"] // wl.meta["per_request"])
            log(
                f"{target.label}: ready in {res['ready_s']:.1f}s on port {port}; sending "
                f"{len(wl.payloads):,} requests with {min(args.concurrency, window)} senders"
            )
            load_start = os.getloadavg()[0]
            st = await send_all(
                http,
                srv.base + "/api/v1/write",
                wl.payloads,
                args.concurrency,
                window,
                args.timeout,
            )
            load_end = os.getloadavg()[0]
            at_end = await mon.sample()
            cpu_idle = await mon.wait_idle(SETTLE_TIMEOUT)
            res.update(
                samples_sent=st.ok * wl.meta["per_request"],
                requests=st.requests,
                ok=st.ok,
                failed=st.failed,
                retries=st.retries,
                timed_out=st.timed_out,
                statuses={str(k): v for k, v in st.statuses.items()},
                messages=dict(st.messages.most_common(10)),
                wall_s=st.wall_s,
                loadavg=(load_start, load_end),
                concurrency=st.concurrency,
                client_cpu_s=st.client_cpu_s,
                cpu_send_s=at_end.cpu_s - before.cpu_s,
                cpu_s=cpu_idle - before.cpu_s,
                p50_ms=pct(st.latencies, 0.50) * 1000,
                p99_ms=pct(st.latencies, 0.99) * 1000,
                max_ms=max(st.latencies, default=math.nan) * 1000,
            )
            log(
                f"{target.label}: sent in {st.wall_s:.1f}s, ok {st.ok}, failed {st.failed}, "
                f"retries {st.retries}, statuses {dict(st.statuses)}"
            )
            if srv.proc.poll() is not None:
                raise RuntimeError(
                    f"{target.label} exited with {srv.proc.returncode} during the run:\n"
                    + srv.log_tail()
                )
            res.update(await target.after_load(http, srv, wl))
            await mon.sample()
            await mon.stop()
            res["peak_rss"] = max(vm_hwm(srv.proc.pid), mon.peak_rss)
            res["max_procs"] = mon.max_procs
        log(f"{target.label}: stopping (SIGTERM)")
        res["exit_code"], res["stop_s"] = srv.stop(STOP_TIMEOUT)
        if res["exit_code"] != 0:
            target.notes.append(f"exit code {res['exit_code']} after SIGTERM")
        res.update(target.after_stop(data_dir, wl))
        finished = True
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.stop(10)
        res["log_tail"] = srv.log_tail(15)
        if not finished:
            log(f"{target.label}: run failed; data and log kept in {workdir}")
    sent = res.get("samples_sent", 0)
    if res.get("failed"):
        target.notes.append(f"{res['failed']} of {res['requests']} requests failed")
    if res.get("timed_out"):
        target.notes.append(f"sending stopped after --timeout={args.timeout:.0f}s")
    stored = res.get("stored_samples")
    if stored is not None and stored != sent:
        target.notes.append(f"stored {stored:,} samples but {sent:,} were acknowledged")
    res["notes"] = target.notes
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


# --- report --------------------------------------------------------------------------------


def _rows(r: dict) -> dict[str, float | None]:
    sent = r.get("samples_sent") or 0
    disk = r.get("disk_stored")
    du = r.get("disk_alloc")
    return {
        "samples acknowledged": sent,
        "samples stored (verified)": r.get("stored_samples"),
        "series stored": r.get("stored_series"),
        "wall time, s": r.get("wall_s"),
        "samples/s (wall)": sent / r["wall_s"] if r.get("wall_s") else None,
        "server CPU, s": r.get("cpu_s"),
        "samples per server CPU-s": sent / r["cpu_s"] if r.get("cpu_s") else None,
        "latency p50, ms": r.get("p50_ms"),
        "latency p99, ms": r.get("p99_ms"),
        "latency max, ms": r.get("max_ms"),
        "peak RSS, MiB": r["peak_rss"] / 2**20 if r.get("peak_rss") else None,
        "retries": r.get("retries"),
        "failed requests": r.get("failed"),
        "data dir (du) after merge, MiB": du / 2**20 if du is not None else None,
        "stored data after merge, MiB": disk / 2**20 if disk is not None else None,
        "bytes/sample on disk": disk / sent if disk is not None and sent else None,
        f"values read back bit-exact ({FIDELITY_INSTANCE}), %": (
            100 * r["fidelity"]["exact"] / r["fidelity"]["total"]
            if r.get("fidelity") and r["fidelity"]["total"] else None),
        "client CPU, s": r.get("client_cpu_s"),
        "stop (SIGTERM->exit), s": r.get("stop_s"),
    }


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def gob_revision() -> str:
    """The commit gob-metrics runs from, and whether its package has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "gob_metrics"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in gob_metrics/' if dirty else ''}"


def report(results: list[dict], wl, args: argparse.Namespace) -> str:
    lines = [
        f"workload: {workload.describe(wl.meta)}",
        f"gob-metrics at {gob_revision()}; VictoriaMetrics {args.vm_binary}",
        f"senders: {args.concurrency}; machine: {os.cpu_count()} CPUs; "
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    names = [r["target"] for r in results]
    rows = [_rows(r) for r in results]
    ratio = len(results) == 2 and names[0] == "gob-metrics"
    header = ["", *names] + (["gob/VM"] if ratio else [])
    table = [header]
    for key in rows[0]:
        vals = [row[key] for row in rows]
        line = [key, *(_fmt(v) for v in vals)]
        if ratio:
            a, b = vals
            line.append(f"{a / b:.2f}" if a is not None and b else "-")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in results:
        extra = [f"statuses {r.get('statuses')}"]
        if r.get("messages"):
            extra.append(f"non-2xx answers {r['messages']}")
        if r.get("optimize_s") is not None:
            extra.append(f"optimize {r['optimize_s']:.1f}s")
        if r.get("merge_s") is not None:
            extra.append(f"force merge {r['merge_s']:.1f}s")
        if r.get("dirs"):
            extra.append(
                "du " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in r["dirs"].items())
            )
        chdb = r.get("chdb") or {}
        if isinstance(chdb.get("parts"), list):
            extra.append(
                "active parts "
                + ", ".join(
                    f"{p['table']} {int(p['parts'])} parts {int(p['rows']):,} rows "
                    f"{int(p['bytes']) / 2**20:.2f} MiB"
                    for p in chdb["parts"]
                )
            )
        if isinstance(chdb.get("columns"), list):
            extra.append(
                "samples columns "
                + ", ".join(
                    f"{c['column']} {int(c['bytes']) / 2**20:.2f} MiB" for c in chdb["columns"]
                )
            )
        if r.get("fidelity"):
            f = r["fidelity"]
            extra.append(f"read back {f['total']:,} samples of {FIDELITY_INSTANCE}: "
                         f"{f['exact']:,} bit-exact, {f['changed']:,} changed, "
                         f"{f['missing']:,} missing" + (f" (e.g. {f['example']})"
                                                        if f["example"] else ""))
        if r.get("parts_after_merge") is not None:
            extra.append(f"data parts after merge {r['parts_after_merge']}")
        if r.get("rows_added") is not None:
            extra.append(f"vm_rows_added_to_storage_total {r['rows_added']:,}")
        extra.append(f"CPU s until last answer {r.get('cpu_send_s', 0):.1f}")
        if r.get("loadavg"):
            # other work on the machine slows the wall-clock figures; CPU-s figures much less
            a, b = r["loadavg"]
            extra.append(f"machine load (1 min) at start/end of sending {a:.1f}/{b:.1f}")
        extra += [f"NOTE: {n}" for n in r.get("notes", [])]
        lines.append(f"\n{r['target']}: " + "; ".join(extra))
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    params = workload.WorkloadParams(
        args.samples, args.series, args.per_request, args.start_ms, args.seed, digits=args.digits
    )
    wl = workload.load_or_build(params, args.out_dir)
    log(f"workload: {workload.describe(wl.meta)}")
    base_dir = Path(args.work_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.targets.split(","):
        target = TARGETS[name.strip()](args)
        try:
            results.append(await run_target(target, wl, args, base_dir))
        except Exception as exc:  # report the others anyway
            log(f"{target.label}: FAILED: {exc}")
            results.append({"target": target.label, "notes": [f"run failed: {exc}"]})
    text = report(results, wl, args)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out_dir / f"results-{stamp}.json"
    out.write_text(json.dumps({"workload": wl.meta, "results": results}, indent=2, default=str))
    log(f"results written to {out}")
    return 0 if all(not r.get("notes") for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    defaults = workload.WorkloadParams()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=defaults.samples, help="total samples to send")
    ap.add_argument("--series", type=int, default=defaults.series, help="distinct series")
    ap.add_argument("--per-request", type=int, default=defaults.per_request)
    ap.add_argument("--start-ms", type=int, default=defaults.start_ms, help="first timestamp")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--digits", type=int, default=0,
                    help="workload values rounded to this many significant digits (0: full "
                    "precision; 11: values VictoriaMetrics 1.79.5 stores exactly)")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent senders")
    ap.add_argument("--targets", default="gob,vm", help="comma-separated, in order: gob,vm")
    ap.add_argument("--keep", action="store_true", help="keep data directories and logs")
    ap.add_argument("--timeout", type=float, default=1800, help="max seconds of sending/target")
    ap.add_argument("--out-dir", type=Path, default=workload.DEFAULT_OUT_DIR)
    ap.add_argument("--work-dir", default=tempfile.gettempdir(), help="parent of data dirs")
    ap.add_argument("--gob-python", default=sys.executable, help="python that runs gob_metrics")
    ap.add_argument(
        "--gob-set",
        action="append",
        metavar="KEY=VALUE",
        help="gob setting for serve, repeatable (default: "
        + " ".join(GOB_BENCH_SETTINGS)
        + "; giving any replaces it)",
    )
    ap.add_argument("--gob-arg", action="append", default=[], help="extra arg for gob serve")
    ap.add_argument("--gob-arg-opt", action="append", default=[], help="extra arg for gob optimize")
    ap.add_argument("--vm-binary", default=shutil.which("victoria-metrics") or "victoria-metrics")
    ap.add_argument("--vm-arg", action="append", default=[], help="extra victoria-metrics flag")
    args = ap.parse_args(argv)
    if args.gob_set is None:
        args.gob_set = list(GOB_BENCH_SETTINGS)
    unknown = [t for t in args.targets.split(",") if t.strip() not in TARGETS]
    if unknown:
        ap.error(f"--targets: unknown {unknown}, choose from {sorted(TARGETS)}")

    def on_signal(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        return asyncio.run(amain(args))
    finally:
        _kill_all()


if __name__ == "__main__":
    sys.exit(main())
