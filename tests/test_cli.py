"""The gob-metrics command as a user runs it: a real process, real signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from gob_metrics.storage.embedded import EmbeddedStorage
from tests.services.proc import free_port, wait_for, wait_port
from tests.writes import HEADERS, body, count

GOB = [sys.executable, "-m", "gob_metrics"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOB, *args], capture_output=True, text=True, timeout=timeout)


def serve(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GOB, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def post(port: int, data: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/write", data=data,
                                 headers=HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_help_lists_flags() -> None:
    out = run("serve", "--help")
    assert out.returncode == 0
    for flag in ("--listen", "--data-dir", "--config", "--clickhouse-url", "--set"):
        assert flag in out.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    out = run("serve", "--data-dir", str(tmp_path), "--set", "write.batch_max_age=soon")
    assert out.returncode == 2
    assert "configuration error: invalid value 'soon' for write.batch_max_age" in out.stderr
    assert "Traceback" not in out.stderr
    out = run("serve", "--set", "nokey")
    assert out.returncode == 2 and "expected KEY=VALUE" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  nope: 1\n")
    out = run("migrate", "--config", str(bad))
    assert out.returncode == 2 and "unknown setting storage.nope" in out.stderr


def test_migrate_command(tmp_path: Path) -> None:
    out = run("migrate", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "migrations applied: [1, 2, 3]" in out.stdout
    out = run("migrate", "--data-dir", str(tmp_path))
    assert "up to date" in out.stdout


def test_sigterm_drains_and_second_instance_refused(tmp_path: Path) -> None:
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        wait_port(port, 60, proc)
        start_line = proc.stderr.readline() if proc.stderr else ""
        while start_line and "gob-metrics started" not in start_line:
            start_line = proc.stderr.readline() if proc.stderr else ""
        assert f'"listen": "127.0.0.1:{port}"' in start_line
        assert '"engine": "embedded"' in start_line

        other = run("serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
                    str(tmp_path))
        assert other.returncode == 1
        assert "is in use by another gob-metrics process" in other.stderr

        # Senders keep writing (one sample per request, distinct timestamps) while SIGTERM
        # arrives: every request answered 204 must be stored, whatever happens to the rest.
        now = int(time.time() * 1000)
        statuses: list[int] = []
        stop = threading.Event()

        def send(worker: int) -> None:
            for i in range(10_000):
                if stop.is_set():
                    return
                data = body([({"__name__": "up", "job": f"w{worker}"}, [(now - i, 1.0)])])
                try:
                    statuses.append(post(port, data))
                except OSError:  # refused or reset once the listener is gone
                    return

        senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
        for t in senders:
            t.start()
        wait_for(lambda: statuses.count(204) >= 40, 30, "40 acknowledged writes")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stop.set()
        for t in senders:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def stored() -> int:
        storage = EmbeddedStorage(tmp_path)
        await storage.start()
        try:
            return await count(storage, "samples")
        finally:
            await storage.close()

    acknowledged = statuses.count(204)
    assert acknowledged >= 40
    assert set(statuses) <= {204, 503}
    assert asyncio.run(stored()) == acknowledged


def test_restart_serves_again(tmp_path: Path) -> None:
    port = free_port()
    for _ in range(2):
        proc = serve(tmp_path, port)
        try:
            wait_port(port, 60, proc)
            wait_for(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{port}/-/ready", timeout=5).status == 200, 30, "ready")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
