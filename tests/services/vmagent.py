"""Start a real vmagent (Debian's victoria-metrics 1.79.5) in a temporary directory, bound to
127.0.0.1, scraping its own ``/metrics`` and remote_writing to a given URL.

The function blocks until the HTTP port answers, so async tests run it with
``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.services.proc import Service, free_port, merge_config, require_binary


def vmagent_scrape_config(
    port: int,
    *,
    scrape_interval: str = "1s",
    scrape_self: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the -promscrape.config contents; lists in ``extra_config`` are appended."""
    config: dict[str, Any] = {"global": {"scrape_interval": scrape_interval}, "scrape_configs": []}
    if scrape_self:
        config["scrape_configs"].append(
            {"job_name": "vmagent", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        )
    return merge_config(config, extra_config)


def start_vmagent(
    workdir: Path,
    remote_write_url: str,
    *,
    scrape_interval: str = "1s",
    scrape_self: bool = True,
    extra_config: Mapping[str, Any] | None = None,
    extra_flags: Sequence[str] = (),
    port: int | None = None,
    ready_timeout: float = 30.0,
) -> Service:
    """Write a scrape config under ``workdir``, start vmagent, wait for its port.

    The caller stops it with ``service.stop()`` (by PID); its log is ``service.log_path``.
    """
    binary = require_binary("vmagent")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "scrape.yml"
    config = vmagent_scrape_config(
        port, scrape_interval=scrape_interval, scrape_self=scrape_self, extra_config=extra_config
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-promscrape.config={config_path}",
        f"-remoteWrite.url={remote_write_url}",
        f"-remoteWrite.tmpDataPath={workdir / 'remotewrite-data'}",
        "-remoteWrite.flushInterval=1s",
        *extra_flags,
    ]
    return Service("vmagent", argv, port, workdir).start(ready_timeout)


def base_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.port}"
