"""Start a real Prometheus (Debian's 2.42) in a temporary directory, bound to 127.0.0.1.

Two roles: a *sender* that scrapes itself and remote_writes to gob, and a *reference*
(``--web.enable-remote-write-receiver``) that receives the same data and answers PromQL.
Both are one call with different arguments; the function blocks until ``/-/ready``, so
async tests run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.services.proc import Service, free_port, merge_config, require_binary, wait_for

# Small batches and short deadlines so a test sees its samples within seconds instead of
# the production defaults (2,000 samples or 5 s per request, metadata every minute).
DEFAULT_QUEUE_CONFIG: dict[str, Any] = {
    "batch_send_deadline": "1s",
    "max_samples_per_send": 500,
    "capacity": 2500,
    "min_backoff": "100ms",
    "max_backoff": "1s",
}
DEFAULT_METADATA_CONFIG: dict[str, Any] = {"send": True, "send_interval": "1s"}


def prometheus_config(
    port: int,
    *,
    remote_write_url: str | None = None,
    scrape_interval: str = "1s",
    scrape_self: bool = True,
    remote_write_options: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the prometheus.yml contents as a dict.

    ``remote_write_options`` is merged into the one remote_write entry (``queue_config``
    and ``metadata_config`` are merged key by key with the defaults above).
    ``extra_config`` adds top-level sections; a list there (``scrape_configs``,
    ``remote_write``, ``remote_read``) is appended to the generated one, anything else
    replaces it.
    """
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [],
    }
    if scrape_self:
        config["scrape_configs"].append(
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        )
    if remote_write_url is not None:
        options = dict(remote_write_options or {})
        entry: dict[str, Any] = {
            "url": remote_write_url,
            "queue_config": {**DEFAULT_QUEUE_CONFIG, **options.pop("queue_config", {})},
            "metadata_config": {**DEFAULT_METADATA_CONFIG, **options.pop("metadata_config", {})},
        }
        entry.update(options)
        config["remote_write"] = [entry]
    return merge_config(config, extra_config)


def start_prometheus(
    workdir: Path,
    *,
    remote_write_url: str | None = None,
    remote_write_receiver: bool = False,
    scrape_interval: str = "1s",
    scrape_self: bool = True,
    remote_write_options: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    extra_flags: Sequence[str] = (),
    port: int | None = None,
    ready_timeout: float = 30.0,
) -> Service:
    """Write a config under ``workdir``, start Prometheus, wait for ``/-/ready``.

    The caller stops it with ``service.stop()`` (by PID); its log is ``service.log_path``.
    """
    binary = require_binary("prometheus")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config = prometheus_config(
        port,
        remote_write_url=remote_write_url,
        scrape_interval=scrape_interval,
        scrape_self=scrape_self,
        remote_write_options=remote_write_options,
        extra_config=extra_config,
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'data'}",
        "--log.level=info",
    ]
    if remote_write_receiver:
        argv.append("--web.enable-remote-write-receiver")
    argv.extend(extra_flags)
    service = Service("prometheus", argv, port, workdir).start(ready_timeout)
    try:
        wait_for(lambda: _ready(port), ready_timeout, f"prometheus on {port} to be ready")
    except TimeoutError as exc:
        service.stop()
        raise RuntimeError(f"{exc}\n{service.log_tail()}") from exc
    return service


def base_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.port}"


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as resp:
        return resp.status == 200
