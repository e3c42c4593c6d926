"""Per-tenant limits the Mimir way: one ``Limits`` dataclass (in the config tree, field names
equal to the YAML keys) and an ``Overrides`` object with one accessor per limit that takes
the tenant id. Callers depend on the accessors, never on where a value came from.

Where values come from, later wins: the ``limits:`` section of the config (every tenant's
defaults), the overrides file (``tenancy.overrides_file``), runtime overrides in Redis
(``gob-metrics limits set``). A limit of 0 is disabled.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable, Mapping
from typing import Any

from gob_metrics.config import Limits, apply_values, check_limits
from gob_metrics.errors import ConfigError
from gob_metrics.tenants.auth import tenant_id_problem

__all__ = ["LIMIT_NAMES", "SOURCES", "Limits", "Overrides", "format_limit", "limit_message",
           "parse_overrides", "parse_tenant_limits"]

log = logging.getLogger(__name__)

LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))
#: layers of per-tenant values, lowest precedence first.
SOURCES = ("file", "redis")

TenantValues = dict[str, Any]  # limit name -> parsed value, only the overridden ones


def parse_tenant_limits(values: Mapping[str, Any], where: str) -> TenantValues:
    """Parse one tenant's overrides (``{limit: value}``, values as YAML or strings) into
    typed values; raise ConfigError naming ``where.key`` for an unknown key or bad value."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of limit names to values")
    probe = Limits()
    apply_values(probe, values, f"{where}.", where)
    check_limits(probe, where)
    return {str(k).replace("-", "_"): getattr(probe, str(k).replace("-", "_")) for k in values}


def parse_overrides(data: Any, where: str) -> dict[str, TenantValues]:
    """Parse ``{tenant: {limit: value}}`` (the ``overrides:`` mapping of a runtime file)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must map tenant ids to limits")
    out: dict[str, TenantValues] = {}
    for tenant, values in data.items():
        tenant = str(tenant)
        problem = tenant_id_problem(tenant)
        if problem is not None:
            raise ConfigError(f"invalid tenant id {tenant!r} in {where}: {problem}")
        out[tenant] = parse_tenant_limits(values or {}, f"{where}.{tenant}")
    return out


DURATION_LIMITS = frozenset(
    f.name for f in dataclasses.fields(Limits)
    if "duration" in getattr(typing.get_type_hints(Limits, include_extras=True)[f.name],
                             "__metadata__", ()))


def format_duration(seconds: float) -> str:
    """``600`` -> ``10m``, ``1209600`` -> ``2w``, ``1.5`` -> ``1.5s``, ``0`` -> ``0``."""
    if seconds == 0:
        return "0"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_limit(name: str, value: Any) -> str:
    """A limit's value as a user writes it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in DURATION_LIMITS:
        return format_duration(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def limit_message(name: str, value: Any, tenant: str) -> str:
    """The words every limit error uses: ``max_label_names_per_series=30 for tenant "a"``."""
    return f"{name}={format_limit(name, value)} for tenant {tenant!r}"


class Overrides:
    """The effective limits of each tenant, with one accessor per limit."""

    def __init__(self, defaults: Limits) -> None:
        self.defaults = defaults
        self._layers: dict[str, dict[str, TenantValues]] = {s: {} for s in SOURCES}
        self._effective: dict[str, Limits] = {}
        #: called with the set of tenants whose limits changed (cache invalidation).
        self.listeners: list[Callable[[set[str]], None]] = []

    # -- updating

    def set_layer(self, source: str, overrides: dict[str, TenantValues]) -> set[str]:
        """Replace every tenant's values from ``source``; return the tenants that changed."""
        old = self._layers[source]
        changed = {t for t in old.keys() | overrides.keys() if old.get(t) != overrides.get(t)}
        self._layers[source] = dict(overrides)
        if changed:
            for tenant in changed:
                self._effective.pop(tenant, None)
            log.info("tenant limits changed", extra={"source": source,
                                                     "tenants": sorted(changed)[:20]})
            for listener in self.listeners:
                listener(changed)
        return changed

    def layer(self, source: str) -> dict[str, TenantValues]:
        return self._layers[source]

    # -- reading

    def for_tenant(self, tenant: str) -> Limits:
        """Every limit of ``tenant`` (cached until one of its sources changes)."""
        limits = self._effective.get(tenant)
        if limits is None:
            values: TenantValues = {}
            for source in SOURCES:
                values.update(self._layers[source].get(tenant, {}))
            limits = dataclasses.replace(self.defaults, **values) if values else self.defaults
            self._effective[tenant] = limits
        return limits

    def source_of(self, tenant: str, name: str) -> str:
        """Where ``tenant``'s value of limit ``name`` comes from: redis, file or default."""
        for source in reversed(SOURCES):
            if name in self._layers[source].get(tenant, {}):
                return source
        return "default"

    def tenants(self) -> list[str]:
        """Tenants with at least one override."""
        return sorted({t for layer in self._layers.values() for t in layer})

    # -- one accessor per limit (Mimir's names); each takes the tenant id

    def ingestion_rate(self, tenant: str) -> float:
        return self.for_tenant(tenant).ingestion_rate

    def ingestion_burst_size(self, tenant: str) -> int:
        return self.for_tenant(tenant).ingestion_burst_size

    def max_global_series_per_user(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_global_series_per_user

    def max_global_series_per_metric(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_global_series_per_metric

    def max_label_names_per_series(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_label_names_per_series

    def max_label_name_length(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_label_name_length

    def max_label_value_length(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_label_value_length

    def max_metadata_length(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_metadata_length

    def creation_grace_period(self, tenant: str) -> float:
        """Seconds."""
        return self.for_tenant(tenant).creation_grace_period

    def reject_old_samples(self, tenant: str) -> bool:
        return self.for_tenant(tenant).reject_old_samples

    def reject_old_samples_max_age(self, tenant: str) -> float:
        """Seconds."""
        return self.for_tenant(tenant).reject_old_samples_max_age

    def max_fetched_series_per_query(self, tenant: str) -> int:
        """Series one query may fetch; 0 is unlimited."""
        return self.for_tenant(tenant).max_fetched_series_per_query

    def max_fetched_chunks_per_query(self, tenant: str) -> int:
        """Samples one query may fetch (Mimir counts chunks; we count samples); 0 is unlimited."""
        return self.for_tenant(tenant).max_fetched_chunks_per_query

    def max_query_length(self, tenant: str) -> float:
        """Longest time range of one query in seconds; 0 is unlimited."""
        return self.for_tenant(tenant).max_query_length

    def max_query_parallelism(self, tenant: str) -> int:
        return self.for_tenant(tenant).max_query_parallelism

    # -- the SQL gateway (defaults: the sql.* settings; 0 disables, as for every limit)

    def sql_max_execution_time(self, tenant: str) -> float:
        """Seconds."""
        return self.for_tenant(tenant).sql_max_execution_time

    def sql_max_memory_usage(self, tenant: str) -> int:
        """Bytes."""
        return self.for_tenant(tenant).sql_max_memory_usage

    def sql_max_rows_to_read(self, tenant: str) -> int:
        return self.for_tenant(tenant).sql_max_rows_to_read

    def sql_max_result_rows(self, tenant: str) -> int:
        return self.for_tenant(tenant).sql_max_result_rows

    def sql_max_result_bytes(self, tenant: str) -> int:
        """Bytes."""
        return self.for_tenant(tenant).sql_max_result_bytes

    def sql_max_concurrent_queries(self, tenant: str) -> int:
        """Per replica."""
        return self.for_tenant(tenant).sql_max_concurrent_queries

    def sql_query_rate(self, tenant: str) -> float:
        """Queries per second, shared by replicas through Redis."""
        return self.for_tenant(tenant).sql_query_rate

    def sql_query_burst_size(self, tenant: str) -> int:
        return self.for_tenant(tenant).sql_query_burst_size
