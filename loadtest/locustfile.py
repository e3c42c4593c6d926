"""Locust load for a remote_write endpoint: POST the pre-built payloads of loadtest/workload.py.

Run it as its own process only (locust monkey-patches the standard library with gevent when
imported; nothing else may import this file), against a server on loopback:

    /tmp/venv0/bin/python loadtest/workload.py --samples 2000000      # build the cache once
    /tmp/venv0/bin/locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 60s \\
        --host http://127.0.0.1:9201

Settings, from the environment:
  GOB_WORKLOAD_FILE  cache file to send (default: the newest loadtest/out/node-*.bin)
  GOB_LOOP           "1": start again from the first request when all were sent; the server
                     then sees the same timestamps again (duplicates). Default: each payload is
                     sent once and the run stops when the last one was answered.

Payloads are handed out in order from one shared cursor. Unlike bench_ingest.py, locust
does not keep a series' samples in time order across users when a request is slow, and never
retries: a 5xx or 429 is counted as a failure, which is what a load test should show.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

MAGIC = b"GOBWL1\n"  # must match workload.MAGIC (not imported: keep this process small)
OUT_DIR = Path(__file__).resolve().parent / "out"
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "gob-metrics-locust/1",
}


def _workload_file() -> Path:
    env = os.environ.get("GOB_WORKLOAD_FILE")
    if env:
        return Path(env)
    files = sorted(OUT_DIR.glob("node-*.bin"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(
            "no workload cache: run `python loadtest/workload.py --samples N` first "
            "or set GOB_WORKLOAD_FILE"
        )
    return files[-1]


def _load(path: Path) -> list[bytes]:
    """Read the payloads of a workload cache file (layout: see workload.load_cache)."""
    data = path.read_bytes()
    tail = len(data) - len(MAGIC)
    if not data.startswith(MAGIC) or data[tail:] != MAGIC:
        raise SystemExit(f"{path} is not a complete workload cache file")
    (flen,) = struct.unpack_from("<I", data, tail - 4)
    end = tail - 4 - flen
    out, pos = [], len(MAGIC)
    while pos < end:
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


PATH = _workload_file()
PAYLOADS = _load(PATH)
LOOP = os.environ.get("GOB_LOOP") == "1"
_cursor = 0  # gevent greenlets switch only on I/O: incrementing it needs no lock
_quitting = False


@events.init.add_listener
def _announce(environment, **_kw) -> None:
    print(f"locustfile: {len(PAYLOADS):,} payloads from {PATH}, loop={LOOP}")


class RemoteWriteUser(FastHttpUser):
    """One remote_write sender: posts the next payload as soon as the previous one answered."""

    @task
    def write(self) -> None:
        global _cursor, _quitting
        if _cursor >= len(PAYLOADS):
            if not LOOP:
                if not _quitting and self.environment.runner is not None:
                    _quitting = True
                    # from its own greenlet: quit() kills the users, this one included
                    gevent.spawn(self.environment.runner.quit)
                raise StopUser()
            _cursor = 0
        body = PAYLOADS[_cursor]
        _cursor += 1
        with self.client.post(
            "/api/v1/write", data=body, headers=HEADERS, name="/api/v1/write", catch_response=True
        ) as resp:
            if resp.status_code not in (200, 204):
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
