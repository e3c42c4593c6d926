"""One typed configuration tree, loaded from defaults, a YAML file, ``GOB_*`` environment
variables and command-line flags (later sources win), and validated at start.

Every error names the offending key the way a user writes it (``write.batch_max_age``), the
value seen and what was expected. Environment variables use ``__`` between levels:
``GOB_STORAGE__CLICKHOUSE__URL=clickhouse://host:9000/gob``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from gob_metrics.errors import ConfigError

ENV_PREFIX = "GOB_"

# Field annotations that change how a value is parsed.
DURATION = "duration"  # float seconds; accepts 1.5, "250ms", "10m", "1h30m"
BYTES = "bytes"  # int bytes; accepts 1048576, "64MiB", "10MB"

Duration = Annotated[float, DURATION]
ByteSize = Annotated[int, BYTES]


@dataclass
class ServerConfig:
    #: host:port the HTTP server listens on.
    listen: str = "127.0.0.1:9201"
    #: directory for the embedded engine's data and the instance lock.
    data_dir: str = "./data"
    #: debug, info, warning or error.
    log_level: str = "info"
    #: json (one object per line) or text.
    log_format: str = "json"
    #: on SIGTERM, how long to wait for pending batches to flush before exiting.
    shutdown_timeout: Duration = 30.0


@dataclass
class EmbeddedConfig:
    #: threads that run chdb queries and inserts beside the event loop.
    query_threads: int = 4


@dataclass
class ClickHouseConfig:
    #: clickhouse://user:password@host:9000/database; empty means use the embedded engine.
    url: str = ""
    #: cluster name for ON CLUSTER DDL with ReplicatedMergeTree + Distributed tables.
    cluster: str = ""
    pool_size: int = 8
    connect_timeout: Duration = 5.0
    send_receive_timeout: Duration = 60.0
    #: retries of retryable errors (network, server restart) before a request fails with 503.
    max_retries: int = 3


@dataclass
class StorageConfig:
    #: ClickHouse database that holds the tables.
    database: str = "gob"
    #: merge_selector_base of the samples table (ClickHouse's default is 5): how many
    #: similar parts wait to be merged at once. 20 rewrites each sample fewer times, which
    #: cut ClickHouse's CPU per ingested sample by about 30% on the ingest benchmark, for a
    #: few more parts between merges. 0 keeps the table's setting. Applied at every start
    #: (a server without the setting logs a warning and keeps its default).
    samples_merge_selector_base: int = 20
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)


@dataclass
class WriteConfig:
    #: largest accepted request body as sent (snappy-compressed).
    max_request_bytes: ByteSize = 16 * 1024 * 1024
    #: largest accepted body after snappy decompression (checked before decompressing).
    max_decompressed_bytes: ByteSize = 64 * 1024 * 1024
    #: most series, samples and metadata entries one request may hold (413 beyond): bounds
    #: the memory a small body of tiny entries can make the decoder allocate.
    max_entries_per_request: int = 1_000_000
    #: a pending batch is inserted once it holds this many samples...
    batch_max_samples: int = 100_000
    #: ...or, when no insert is running, once it holds this many (each insert costs
    #: ClickHouse about 5 ms of CPU whatever its size: tiny batches waste it; 0 inserts
    #: every request at once when idle)...
    batch_min_samples: int = 10_000
    #: ...or once its oldest request has waited this long.
    batch_max_age: Duration = 0.2
    #: when no insert is running and a batch holds batch_min_samples (but not twice
    #: that), hold it up to this long more if samples arrive fast enough to grow it by half
    #: in that time: fewer, larger inserts under load; 0 turns it off.
    batch_linger: Duration = 0.025
    #: samples held in memory (pending plus being inserted); beyond it requests wait.
    max_pending_samples: int = 1_000_000
    #: how long a request waits for room before it is answered 503 with Retry-After.
    queue_timeout: Duration = 5.0
    #: series remembered as registered per process (LRU); a miss costs one series-table row.
    #: Also how many series' value scales the writer remembers (about 48 bytes each).
    series_cache_size: int = 1_000_000


@dataclass
class ReadConfig:
    """Read-path settings of the process; the query limits are per tenant (``limits``)."""

    #: largest accepted remote_read body as sent (snappy-compressed).
    max_request_bytes: ByteSize = 1024 * 1024
    #: largest remote_read body after snappy decompression (checked before decompressing).
    max_decompressed_bytes: ByteSize = 4 * 1024 * 1024
    #: chunk bytes per frame of a streamed remote_read response (Prometheus:
    #: storage.remote.read-max-bytes-in-frame).
    max_bytes_in_frame: ByteSize = 1024 * 1024
    #: samples fetched per storage round trip while streaming; bounds a streamed read's memory.
    stream_batch_samples: int = 500_000


@dataclass
class Credential:
    """One credential bound to a tenant: a bearer token, or a basic-auth user."""

    #: the tenant every request with this credential acts for.
    tenant: str = ""
    #: ``sha256:<hex>`` of a bearer token (``gob-metrics hash-secret``).
    bearer_token_hash: str = ""
    #: basic-auth user name.
    username: str = ""
    #: ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` or ``sha256:<hex>`` of the password.
    password_hash: str = ""


@dataclass
class TenancyConfig:
    #: take the tenant from X-Scope-OrgID (401 without it); off: every request is default_tenant.
    multitenancy_enabled: bool = False
    #: tenant of every request when multi-tenancy is off (Mimir: no_auth_tenant).
    default_tenant: str = "anonymous"
    #: bearer tokens and basic-auth users, each bound to a tenant; empty means no auth.
    credentials: list[Credential] = field(default_factory=list)
    #: YAML file of per-tenant limits (``overrides: {tenant: {limit: value}}``), reloaded on change.
    overrides_file: str = ""
    #: how often the overrides file is checked for changes.
    overrides_reload_period: Duration = 1.0
    #: how often per-tenant series counts are re-read from the series table (limits drift).
    series_count_refresh: Duration = 60.0


@dataclass
class Limits:
    """Per-tenant limits with Mimir's names (and, where Mimir has one, its default).

    These are the defaults of every tenant; ``tenancy.overrides_file`` and runtime overrides
    in Redis replace them per tenant. 0 disables a limit.
    """

    #: samples (and metadata) per second a tenant may send; over it, 429 (token bucket).
    ingestion_rate: float = 10_000.0
    #: token bucket size: the largest request, and how far a tenant may burst.
    ingestion_burst_size: int = 200_000
    #: series a tenant may have in the series table; new ones beyond it are discarded (400).
    max_global_series_per_user: int = 150_000
    #: series one metric name may have per tenant (Mimir's default: 0, unlimited).
    max_global_series_per_metric: int = 0
    #: labels (including __name__) one series may have.
    max_label_names_per_series: int = 30
    #: bytes in a label name.
    max_label_name_length: int = 1024
    #: bytes in a label value (and in the metric name).
    max_label_value_length: int = 2048
    #: bytes in a metadata entry's metric name, help or unit.
    max_metadata_length: int = 1024
    #: samples further than this in the future are discarded (400).
    creation_grace_period: Duration = 600.0
    #: discard samples older than reject_old_samples_max_age (400).
    reject_old_samples: bool = False
    #: how old a sample may be when reject_old_samples is on (Cortex's default: 2w).
    reject_old_samples_max_age: Duration = 14 * 86400.0
    #: series one query may fetch; over it the query fails (0: unlimited).
    max_fetched_series_per_query: int = 0
    #: samples one query may fetch (Mimir counts chunks; 0: unlimited).
    max_fetched_chunks_per_query: int = 2_000_000
    #: longest time range one query may cover (0: unlimited).
    max_query_length: Duration = 0.0
    #: sub-queries of one query run at once.
    max_query_parallelism: int = 14
    # The SQL gateway's limits per tenant (no Mimir equivalent): each is the same setting as
    # sql.<name without sql_>, whose value is every tenant's default (see SQL_TENANT_LIMITS).
    #: time one SQL gateway query may run (0: unlimited).
    sql_max_execution_time: Duration = 10.0
    #: memory one SQL gateway query may use (0: unlimited).
    sql_max_memory_usage: ByteSize = 512 * 1024 * 1024
    #: rows one SQL gateway query may read (0: unlimited).
    sql_max_rows_to_read: int = 100_000_000
    #: rows in one SQL gateway result (0: unlimited).
    sql_max_result_rows: int = 1_000_000
    #: bytes in one SQL gateway result (0: unlimited).
    sql_max_result_bytes: ByteSize = 128 * 1024 * 1024
    #: SQL gateway queries a tenant may run at once, per replica (0: unlimited).
    sql_max_concurrent_queries: int = 2
    #: SQL gateway queries per second a tenant may start (token bucket; 0: unlimited).
    sql_query_rate: float = 5.0
    #: token bucket size of sql_query_rate.
    sql_query_burst_size: int = 10


#: per-tenant limit -> the sql.* setting that is its default for every tenant.
SQL_TENANT_LIMITS = {
    "sql_max_execution_time": "max_execution_time",
    "sql_max_memory_usage": "max_memory_usage",
    "sql_max_rows_to_read": "max_rows_to_read",
    "sql_max_result_rows": "max_result_rows",
    "sql_max_result_bytes": "max_result_bytes",
    "sql_max_concurrent_queries": "max_concurrent_queries",
    "sql_query_rate": "query_rate",
    "sql_query_burst_size": "query_burst_size",
}


@dataclass
class RedisConfig:
    #: redis://[:password@]host:6379/0 (or rediss://, unix://); empty means no Redis.
    url: str = ""
    #: prefix of every key and channel, so deployments can share one Redis.
    key_prefix: str = "gob:"
    #: socket timeout of one Redis call; past it the call falls back to local state.
    timeout: Duration = 1.0
    #: after a failure, Redis is skipped (local fallbacks) and probed again this often.
    retry_interval: Duration = 1.0
    #: time a cached label lookup (matchers -> series ids) lives, minus up to 20% jitter.
    lookup_cache_ttl: Duration = 300.0
    #: lookups matching more series than this are not cached (binding the ids costs more
    #: than the matcher scan they save beyond a few thousand: docs/tenancy.md).
    lookup_cache_max_series: int = 5_000


@dataclass
class SqlConfig:
    """Limits of the SQL gateway, POST /api/v1/sql (docs/sql-gateway.md)."""

    #: time one query may run (ClickHouse max_execution_time); on the embedded engine a
    #: query holds the engine, so writes wait behind it for up to this long.
    max_execution_time: Duration = 10.0
    #: memory one query may use (ClickHouse max_memory_usage).
    max_memory_usage: ByteSize = 512 * 1024 * 1024
    #: rows one query may read from the relations and numbers() (ClickHouse max_rows_to_read).
    max_rows_to_read: int = 100_000_000
    #: rows in one result (ClickHouse max_result_rows); more is an error, never a cut.
    max_result_rows: int = 1_000_000
    #: bytes in one result as ClickHouse counts them (max_result_bytes).
    max_result_bytes: ByteSize = 128 * 1024 * 1024
    #: queries one tenant may run at once; more is 429.
    max_concurrent_queries: int = 2
    #: queries per second one tenant may start (token bucket); 0 = unlimited.
    query_rate: float = 5.0
    #: token bucket size of query_rate: how many queries a tenant may start at once.
    query_burst_size: int = 10
    #: longest query text, and largest request body; more is 413.
    max_query_bytes: ByteSize = 64 * 1024
    #: longest regular expression or LIKE pattern in a query.
    max_regex_length: int = 1024
    #: largest constant that sizes a generated value: numbers(N), range(N), repeat(s, N), ...
    max_generated_elements: int = 1_000_000


@dataclass
class QueryConfig:
    """Limits and defaults of the PromQL query API (docs/configuration.md)."""

    #: longest a query may run (Prometheus: query.timeout); past it 503, errorType timeout.
    timeout: Duration = 120.0
    #: samples one query may hold: fetched samples plus the points of one intermediate
    #: result (Prometheus: query.max-samples); over it 422.
    max_samples: int = 50_000_000
    #: how far back an instant selector looks for a sample (Prometheus: query.lookback-delta).
    lookback_delta: Duration = 300.0
    #: points per series of a range query, (end - start) / step (Prometheus: 11,000).
    max_points_per_series: int = 11_000
    #: step of a subquery written without one (``x[5m:]``; Prometheus' evaluation_interval).
    default_evaluation_interval: Duration = 60.0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    tenancy: TenancyConfig = field(default_factory=TenancyConfig)
    limits: Limits = field(default_factory=Limits)
    redis: RedisConfig = field(default_factory=RedisConfig)
    sql: SqlConfig = field(default_factory=SqlConfig)
    query: QueryConfig = field(default_factory=QueryConfig)

    def validate(self) -> Config:
        """Check cross-field constraints; raise ConfigError naming the key."""
        _check(self.server.log_level in {"debug", "info", "warning", "error"},
               "server.log_level", self.server.log_level, "one of debug, info, warning, error")
        _check(self.server.log_format in {"json", "text"},
               "server.log_format", self.server.log_format, "json or text")
        _host, sep, port = self.server.listen.rpartition(":")
        _check(bool(sep) and port.isdigit() and 0 < int(port) < 65536,
               "server.listen", self.server.listen, "host:port, e.g. 127.0.0.1:9201")
        _check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.storage.database) is not None,
               "storage.database", self.storage.database, "an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        url = self.storage.clickhouse.url
        _check(url == "" or url.startswith(("clickhouse://", "clickhouses://")),
               "storage.clickhouse.url", url, "clickhouse://user:password@host:9000/database")
        _check(self.storage.clickhouse.cluster == ""
               or re.fullmatch(r"[A-Za-z0-9_\-.]+", self.storage.clickhouse.cluster) is not None,
               "storage.clickhouse.cluster", self.storage.clickhouse.cluster, "a cluster name")
        for key, value in [
            ("storage.embedded.query_threads", self.storage.embedded.query_threads),
            ("storage.clickhouse.pool_size", self.storage.clickhouse.pool_size),
            ("write.max_request_bytes", self.write.max_request_bytes),
            ("write.max_decompressed_bytes", self.write.max_decompressed_bytes),
            ("write.max_entries_per_request", self.write.max_entries_per_request),
            ("write.batch_max_samples", self.write.batch_max_samples),
            ("write.max_pending_samples", self.write.max_pending_samples),
            ("write.series_cache_size", self.write.series_cache_size),
            ("write.batch_max_age", self.write.batch_max_age),
            ("write.queue_timeout", self.write.queue_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
            ("read.max_request_bytes", self.read.max_request_bytes),
            ("read.max_decompressed_bytes", self.read.max_decompressed_bytes),
            ("read.max_bytes_in_frame", self.read.max_bytes_in_frame),
            ("read.stream_batch_samples", self.read.stream_batch_samples),
        ]:
            _check(value > 0, key, value, "a positive number")
        for key, value in [
            ("write.batch_min_samples", self.write.batch_min_samples),
            ("write.batch_linger", self.write.batch_linger),
            ("storage.samples_merge_selector_base", self.storage.samples_merge_selector_base),
            ("storage.clickhouse.max_retries", self.storage.clickhouse.max_retries),
            ("tenancy.overrides_reload_period", self.tenancy.overrides_reload_period),
            ("tenancy.series_count_refresh", self.tenancy.series_count_refresh),
            ("redis.timeout", self.redis.timeout),
            ("redis.retry_interval", self.redis.retry_interval),
            ("redis.lookup_cache_ttl", self.redis.lookup_cache_ttl),
            ("redis.lookup_cache_max_series", self.redis.lookup_cache_max_series),
        ]:
            _check(value >= 0, key, value, "zero or more")
        _check(self.write.max_pending_samples >= self.write.batch_max_samples,
               "write.max_pending_samples", self.write.max_pending_samples,
               f"at least write.batch_max_samples={self.write.batch_max_samples}")
        check_limits(self.limits, "limits")
        _check_sql(self.sql)
        _link_sql_limits(self)
        for f in dataclasses.fields(self.query):
            _check(getattr(self.query, f.name) >= 0, f"query.{f.name}",
                   getattr(self.query, f.name), "zero (no limit) or more")
        _check(self.query.lookback_delta > 0 and self.query.default_evaluation_interval > 0,
               "query.lookback_delta", self.query.lookback_delta,
               "a positive duration (and query.default_evaluation_interval too)")
        _check_tenancy(self.tenancy)
        _check(self.redis.url == ""
               or self.redis.url.startswith(("redis://", "rediss://", "unix://")),
               "redis.url", self.redis.url, "redis://host:6379/0, rediss://... or unix://...")
        _check(re.fullmatch(r"[A-Za-z0-9_\-.:/]*", self.redis.key_prefix) is not None,
               "redis.key_prefix", self.redis.key_prefix, "characters A-Z a-z 0-9 _ - . : /")
        return self


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value {value!r} for {key}: expected {expected}")


def check_limits(limits: Limits, prefix: str) -> None:
    """Every limit is zero (disabled) or more; raise ConfigError naming ``prefix.key``."""
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        if not isinstance(value, bool):
            _check(value >= 0, f"{prefix}.{f.name}", value, "zero (no limit) or more")


def _check_sql(sql: SqlConfig) -> None:
    for f in dataclasses.fields(sql):
        value = getattr(sql, f.name)
        if f.name == "query_rate":
            _check(value >= 0, "sql.query_rate", value, "zero (no limit) or more")
        else:
            _check(value > 0, f"sql.{f.name}", value, "a positive number")


def _link_sql_limits(cfg: Config) -> None:
    """Make ``sql.<key>`` and ``limits.sql_<key>`` one setting. The first is the gateway's
    own key, the second the per-tenant limit's (what overrides replace): whichever of the
    two was changed from its default is the value of both; both changed to different values
    is an error naming both."""
    sql_defaults, limit_defaults = SqlConfig(), Limits()
    for limit, key in SQL_TENANT_LIMITS.items():
        a, b = getattr(cfg.sql, key), getattr(cfg.limits, limit)
        a_set, b_set = a != getattr(sql_defaults, key), b != getattr(limit_defaults, limit)
        if a_set and b_set and a != b:
            raise ConfigError(f"sql.{key}={a!r} and limits.{limit}={b!r} are the same setting "
                              f"(every tenant's default of {limit}): set one of them")
        value = b if b_set else a
        setattr(cfg.sql, key, value)
        setattr(cfg.limits, limit, value)


def _check_tenancy(t: TenancyConfig) -> None:
    from gob_metrics.tenants.auth import check_credentials, tenant_id_problem

    problem = tenant_id_problem(t.default_tenant)
    _check(problem is None, "tenancy.default_tenant", t.default_tenant, f"a tenant id ({problem})")
    check_credentials(t.credentials, "tenancy.credentials")


# ---------------------------------------------------------------------------- parsing

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                   "y": 31536000}
_BYTES_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_BYTES_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
                "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
                "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
                "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}


def parse_duration(text: str | float | int) -> float:
    """Parse ``1.5``, ``"250ms"``, ``"10m"`` or ``"1h30m"`` into seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 250ms, 1h30m)")
    return total


def parse_bytes(text: str | int) -> int:
    """Parse ``1048576``, ``"64MiB"`` or ``"10MB"`` into bytes."""
    if isinstance(text, bool):
        raise ValueError("expected a size in bytes, got a boolean")
    if isinstance(text, int):
        return text
    m = _BYTES_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 64MiB, 10MB)")
    return int(float(m.group(1)) * _BYTES_UNITS[(m.group(2) or "").lower()])


def _coerce_list(value: Any, hint: Any, key: str, source: str) -> list[Any]:
    # A list of sections (tenancy.credentials); from an environment variable or a flag it
    # is written as YAML: GOB_TENANCY__CREDENTIALS='[{tenant: a, username: u, ...}]'.
    (item_type,) = typing.get_args(hint)
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid value for {key} in {source}: not YAML: {exc}") from exc
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key} in {source} must be a list of mappings")
    items = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}] in {source} must be a mapping of settings")
        item = item_type()
        _apply(item, entry, f"{key}[{i}].", source)
        items.append(item)
    return items


def _coerce(value: Any, hint: Any, key: str) -> Any:
    meta = None
    if typing.get_origin(hint) is Annotated:
        hint, meta = typing.get_args(hint)[0], typing.get_args(hint)[1]
    try:
        if meta == DURATION:
            return parse_duration(value)
        if meta == BYTES:
            return parse_bytes(value)
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if hint is str:
            if isinstance(value, dict | list):
                raise ValueError("expected a string")
            return "" if value is None else str(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid value {value!r} for {key}: {exc}") from exc
    raise ConfigError(f"unsupported type for {key}")  # pragma: no cover - schema bug


def _apply(obj: Any, values: Mapping[str, Any], prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        path = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(prefix + n for n in names))
            raise ConfigError(f"unknown setting {path} in {source} (known here: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} in {source} must be a mapping of settings")
            _apply(getattr(obj, key), value, f"{path}.", source)
        elif typing.get_origin(hint) is list:
            setattr(obj, key, _coerce_list(value, hint, path, source))
        else:
            setattr(obj, key, _coerce(value, hint, path))


def apply_values(obj: Any, values: Mapping[str, Any], prefix: str, source: str) -> None:
    """Set fields of the section ``obj`` from a mapping, coercing and naming bad keys as
    ``prefix + key`` (used for per-tenant limit overrides)."""
    _apply(obj, values, prefix, source)


def set_value(cfg: Config, dotted: str, value: Any, source: str) -> None:
    """Set one setting by its dotted key (``write.batch_max_age``)."""
    parts = dotted.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    _apply(cfg, nested, "", source)


def _env_values(env: Mapping[str, str]) -> Iterable[tuple[str, str, str]]:
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            yield dotted, value, f"environment variable {name}"


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults, then the YAML file, env vars, then ``overrides``
    (dotted keys from command-line flags); validate and return it."""
    cfg = Config()
    if path:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if data is not None:
            if not isinstance(data, Mapping):
                raise ConfigError(f"config file {p} must hold a mapping of settings")
            _apply(cfg, data, "", f"config file {p}")
    for dotted, value, source in _env_values(os.environ if env is None else env):
        set_value(cfg, dotted, value, source)
    for dotted, value in (overrides or {}).items():
        set_value(cfg, dotted, value, "command-line flags")
    return cfg.validate()


def describe(cfg: Config | None = None) -> list[tuple[str, str, Any]]:
    """List (dotted key, type name, value) for every setting: the reference in docs/."""
    cfg = cfg or Config()
    rows: list[tuple[str, str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj), include_extras=True)
        for f in dataclasses.fields(obj):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(getattr(obj, f.name), f"{prefix}{f.name}.")
                continue
            if typing.get_origin(hint) is list:
                tname = "list"
            elif isinstance(hint, type):
                tname = hint.__name__
            else:
                tname = str(typing.get_args(hint)[1])
            rows.append((prefix + f.name, tname, getattr(obj, f.name)))

    walk(cfg, "")
    return rows
