"""Ingest cost of the Redis layer: the same remote_write workload sent to gob-metrics with
Redis off (in-process caches, local token bucket) and on (shared series registration,
Redis token bucket, overrides subscription), printed side by side as samples per
CPU-second of the server (and of server + redis-server).

Each run starts its own ``gob-metrics serve`` on a fresh embedded data directory (and one
redis-server for the "on" run) on free 127.0.0.1 ports; every process is stopped by PID.
Limits that would throttle a benchmark are disabled (0); the rate limiter still runs its
token-bucket call on every request (with a limit too high to hit), so its cost is measured.

    /tmp/venv0/bin/python loadtest/bench_redis.py --series 20000 --rounds 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import snappy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gob_metrics.proto.prometheus import remote_pb2, types_pb2  # noqa: E402

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout}s")


def scrape(url: str, name: str) -> float:
    """Sum of one self-metric's samples at /metrics."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_bodies(series: int, rounds: int, per_request: int, hosts: int) -> list[bytes]:
    """node_exporter-like series (~10 labels), one sample per series per round."""
    label_sets = []
    for i in range(series):
        host = i % hosts
        label_sets.append([
            ("__name__", f"node_metric_{i // hosts % 200}_total"), ("cpu", str(i % 16)),
            ("datacenter", f"dc{host % 3}"), ("env", "prod"), ("instance", f"host-{host}:9100"),
            ("job", "node"), ("mode", ("user", "system", "idle")[i % 3]),
            ("region", f"eu-{host % 4}"), ("team", f"team-{host % 7}"),
        ])
    start = int(time.time() * 1000) - rounds * 15_000
    bodies = []
    req = remote_pb2.WriteRequest()
    for r in range(rounds):
        ts = start + r * 15_000
        for i, labels in enumerate(label_sets):
            t = req.timeseries.add()
            t.labels.extend(types_pb2.Label(name=n, value=v) for n, v in labels)
            t.samples.add(timestamp=ts, value=float(i + r))
            if len(req.timeseries) == per_request:
                bodies.append(snappy.compress(req.SerializeToString()))
                req = remote_pb2.WriteRequest()
    if len(req.timeseries):
        bodies.append(snappy.compress(req.SerializeToString()))
    return bodies


async def send(url: str, bodies: list[bytes], concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = list(reversed(bodies))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            data = queue.pop()
            for attempt in range(20):
                t0 = time.perf_counter()
                async with session.post(url, data=data, headers=HEADERS) as resp:
                    text = await resp.text()
                    if resp.status == 204:
                        latencies.append(time.perf_counter() - t0)
                        break
                    if resp.status < 500 and resp.status != 429:
                        raise RuntimeError(f"{resp.status}: {text}")
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError("request kept failing")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
    return latencies


def run(mode: str, bodies: list[bytes], samples: int, args: argparse.Namespace,
        workdir: Path) -> dict[str, float]:
    redis_proc = None
    extra: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "on":
        rport = free_port()
        redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
        redis_proc = subprocess.Popen(
            [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        extra = ["--redis-url", f"redis://127.0.0.1:{rport}/0"]
        deadline = time.monotonic() + 10
        while not _listening(rport):
            if redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    port = free_port()
    cmd = [sys.executable, "-m", "gob_metrics", "serve", "--listen", f"127.0.0.1:{port}",
           "--data-dir", str(workdir / f"data-{mode}"), "--log-level", "warning",
           "--set", "limits.ingestion_rate=1e12", "--set", "limits.ingestion_burst_size=1000000000",
           "--set", "limits.max_global_series_per_user=0", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc)
        time.sleep(0.5)
        cpu0 = cpu_seconds(proc.pid)
        rcpu0 = cpu_seconds(redis_proc.pid) if redis_proc else 0.0
        t0 = time.perf_counter()
        lat = asyncio.run(send(f"http://127.0.0.1:{port}/api/v1/write", bodies,
                               args.concurrency))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        rcpu = (cpu_seconds(redis_proc.pid) - rcpu0) if redis_proc else 0.0
        redis_up = scrape(f"http://127.0.0.1:{port}/metrics", "gob_redis_up")
        redis_errors = scrape(f"http://127.0.0.1:{port}/metrics", "gob_redis_errors_total")
        if mode == "on" and redis_up != 1:
            raise RuntimeError(f"redis was not in use: gob_redis_up={redis_up}")
    finally:
        stop(proc)
        if redis_proc is not None:
            stop(redis_proc)
    lat.sort()
    return {"samples": samples, "wall_s": wall, "server_cpu_s": cpu, "redis_cpu_s": rcpu,
            "per_server_cpu_s": samples / cpu, "per_total_cpu_s": samples / (cpu + rcpu),
            "redis_errors": redis_errors, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=50, help="samples per series")
    ap.add_argument("--per-request", type=int, default=2000, help="samples per request")
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode (best is shown)")
    args = ap.parse_args()
    bodies = build_bodies(args.series, args.rounds, args.per_request, args.hosts)
    samples = args.series * args.rounds
    print(f"workload: {samples} samples, {args.series} series, {len(bodies)} requests of "
          f"{args.per_request}, concurrency {args.concurrency}", flush=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gob-bench-redis-") as tmp:
        for i in range(args.repeat):
            for mode in ("off", "on"):
                r = run(mode, bodies, samples, args, Path(tmp) / f"{mode}-{i}")
                best = results.get(mode)
                if best is None or r["per_server_cpu_s"] > best["per_server_cpu_s"]:
                    results[mode] = r
    rows = [("samples per server CPU-second", "per_server_cpu_s", "{:,.0f}"),
            ("samples per CPU-second incl. redis-server", "per_total_cpu_s", "{:,.0f}"),
            ("server CPU, s", "server_cpu_s", "{:.2f}"),
            ("redis-server CPU, s", "redis_cpu_s", "{:.2f}"),
            ("wall, s", "wall_s", "{:.2f}"),
            ("redis calls that fell back (errors)", "redis_errors", "{:.0f}"),
            ("write p50, ms", "p50_ms", "{:.1f}"),
            ("write p99, ms", "p99_ms", "{:.1f}")]
    print(f"\n{'':44}{'redis off':>14}{'redis on':>14}")
    for title, key, fmt in rows:
        print(f"{title:44}{fmt.format(results['off'][key]):>14}"
              f"{fmt.format(results['on'][key]):>14}")


if __name__ == "__main__":
    main()
