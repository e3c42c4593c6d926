"""Remote-read benchmark: samples/s and the server's peak RSS while it answers one large
remote_read, for both response types (SAMPLES and STREAMED_XOR_CHUNKS).

Starts ``gob-metrics serve`` on 127.0.0.1 in a temporary data directory, loads
``--series`` x ``--samples-per-series`` samples (15 s apart, counter-like values) by
remote_write, then reads them all back ``--repeat`` times per response type, checking every
answer's sample count. Peak RSS is the server's VmHWM, reset before each read through
/proc/<pid>/clear_refs (Linux; root or the same user), minus nothing: it is the whole
process. Everything is bounded in time; the server is stopped by PID on any exit.

    /tmp/venv0/bin/python loadtest/bench_read.py                 # 1M samples
    /tmp/venv0/bin/python loadtest/bench_read.py --series 2000 --samples-per-series 2500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import snappy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gob_metrics.proto.gob import ingest_pb2  # noqa: E402
from gob_metrics.proto.prometheus import remote_pb2, types_pb2  # noqa: E402
from gob_metrics.read import codec  # noqa: E402

T0 = 1_700_000_000_000
WRITE_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                 "X-Prometheus-Remote-Write-Version": "0.1.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def write_bodies(series: int, per_series: int, batch: int = 50) -> list[bytes]:
    rng = np.random.default_rng(1)
    bodies = []
    ts = (T0 + np.arange(per_series, dtype=np.int64) * 15_000).tolist()
    for lo in range(0, series, batch):
        req = ingest_pb2.RawWriteRequest()
        for k in range(lo, min(lo + batch, series)):
            t = req.timeseries.add()
            for name, value in (("__name__", "bench_read_total"), ("instance", f"host-{k}"),
                                ("job", "bench")):
                t.labels.append(ingest_pb2.RawLabel(name=name.encode(), value=value.encode())
                                .SerializeToString())
            vals = np.cumsum(rng.integers(0, 100, per_series)).astype(np.float64).tolist()
            for tt, v in zip(ts, vals, strict=True):
                t.samples.add(timestamp=tt, value=v)
        bodies.append(snappy.compress(req.SerializeToString()))
    return bodies


def read_body(streamed: bool) -> bytes:
    req = remote_pb2.ReadRequest()
    q = req.queries.add(start_timestamp_ms=T0 - 1, end_timestamp_ms=T0 + 10**12)
    q.matchers.add(type=types_pb2.LabelMatcher.EQ, name="__name__", value="bench_read_total")
    if streamed:
        req.accepted_response_types.append(remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS)
    return snappy.compress(req.SerializeToString())


def count_samples(raw: bytes, streamed: bool) -> int:
    if not streamed:
        resp = remote_pb2.ReadResponse()
        resp.ParseFromString(snappy.uncompress(raw))
        return sum(len(ts.samples) for r in resp.results for ts in r.timeseries)
    return sum(int.from_bytes(ch.data[:2], "big") for frame in codec.read_frames(raw)
               for cs in frame.chunked_series for ch in cs.chunks)


async def run(args: argparse.Namespace, url: str, pid: int) -> int:
    total = args.series * args.samples_per_series
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/-/ready") as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("gob-metrics did not become ready in 60 s")
            await asyncio.sleep(0.2)
        started = time.perf_counter()
        for body in write_bodies(args.series, args.samples_per_series):
            async with http.post(f"{url}/api/v1/write", data=body, headers=WRITE_HEADERS) as r:
                if r.status != 204:
                    raise RuntimeError(f"write answered {r.status}: {await r.text()}")
        print(f"loaded {total:,} samples ({args.series} series) in "
              f"{time.perf_counter() - started:.1f}s; server RSS "
              f"{proc_kib(pid, 'VmRSS') / 1024:.0f} MiB", flush=True)
        print(f"{'response type':<22}{'samples/s (median)':>20}{'best':>14}{'bytes':>12}"
              f"{'peak RSS MiB':>14}")
        failures = 0
        for streamed in (False, True):
            rates, peaks, size = [], [], 0
            for _ in range(args.repeat):
                can_reset = reset_peak(pid)
                started = time.perf_counter()
                async with http.post(f"{url}/api/v1/read", data=read_body(streamed)) as r:
                    raw = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"read answered {r.status}: {raw[:300]!r}")
                elapsed = time.perf_counter() - started
                got = count_samples(raw, streamed)
                if got != total:
                    print(f"  expected {total} samples, got {got}")
                    failures += 1
                rates.append(total / elapsed)
                peaks.append(proc_kib(pid, "VmHWM") / 1024 if can_reset else float("nan"))
                size = len(raw)
            name = "STREAMED_XOR_CHUNKS" if streamed else "SAMPLES"
            print(f"{name:<22}{statistics.median(rates):>20,.0f}{max(rates):>14,.0f}"
                  f"{size:>12,}{max(peaks):>14.0f}", flush=True)
        return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--samples-per-series", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    ap.add_argument("--python", default=sys.executable, help="interpreter for gob-metrics")
    ap.add_argument("--gob-set", action="append", default=[],
                    help="KEY=VALUE for serve (default: no ingestion rate limit)")
    args = ap.parse_args()
    settings = args.gob_set or ["limits.ingestion_rate=0",
                                "limits.max_fetched_chunks_per_query=0"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        argv = [args.python, "-m", "gob_metrics", "serve", "--listen", f"127.0.0.1:{port}",
                "--data-dir", str(Path(tmp) / "data"), "--log-level", "warning",
                *[a for kv in settings for a in ("--set", kv)]]
        log = open(Path(tmp) / "gob.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True, env={**os.environ,
                                                             "PYTHONPATH": str(ROOT)})
        try:
            return 1 if asyncio.run(run(args, f"http://127.0.0.1:{port}", proc.pid)) else 0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
            if proc.returncode not in (0, -signal.SIGTERM):
                print((Path(tmp) / "gob.log").read_text(errors="replace")[-3000:])


if __name__ == "__main__":
    sys.exit(main())
