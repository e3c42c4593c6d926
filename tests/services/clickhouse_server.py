"""A real clickhouse-server (Debian's 18.16 package) for tests, on free 127.0.0.1 ports
with its configuration, data and logs in one temporary directory.

The same server can be stopped (SIGTERM), killed (SIGKILL) or frozen (SIGSTOP) by PID and
started again on the same ports and data, which the reconnect tests need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.services.proc import Service, ServiceOwner, free_port, require_binary

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <!-- poll_interval: an idle connection holds a stopping server for up to this many
         seconds (10 by default), which would make every restart test slow. -->
    <profiles><default><poll_interval>1</poll_interval></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""


class ClickHouseServer(ServiceOwner):
    """One clickhouse-server process and its directory; restartable on the same ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tcp_port = free_port()
        self.http_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "log").mkdir(exist_ok=True)
        config = workdir / "config.xml"
        config.write_text(
            _CONFIG.format(dir=workdir, tcp_port=self.tcp_port, http_port=self.http_port)
        )
        (workdir / "users.xml").write_text(_USERS)
        binary = require_binary("clickhouse-server")
        self.service = Service(
            "clickhouse-server", [binary, f"--config-file={config}"], self.tcp_port, workdir
        )

    def url(self, database: str = "gob") -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{database}"

    def start(self, timeout: float = 30.0) -> ClickHouseServer:
        """Start (or start again) on the same ports and data; return when it listens."""
        try:
            self.service.start(ready_timeout=timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc
        return self

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "log" / "clickhouse-server.err.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return self.service.log_tail(lines) + "\n" + "\n".join(text)


@contextmanager
def clickhouse_server(workdir: Path) -> Iterator[ClickHouseServer]:
    """A started server in ``workdir``, stopped by PID on exit."""
    server = ClickHouseServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
