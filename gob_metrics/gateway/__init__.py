"""The SQL gateway: read-only, tenant-scoped ClickHouse SQL over HTTP and the CLI.

Flow: ``handler`` (HTTP) or ``cli`` -> ``validate`` (parse, allow-list) -> ``relations``
(confine every table reference to the tenant) -> ``limits`` (settings, admission) ->
storage ``query_stream`` -> ``encode`` (JSON, CSV, TSV). See docs/sql-gateway.md.
"""

from gob_metrics.gateway.handler import register

__all__ = ["register"]
