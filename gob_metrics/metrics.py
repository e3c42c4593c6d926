"""Self-metrics, on an explicit registry built per app (never import-time globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the server exports at /metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gob_http_requests_total",
            "HTTP requests answered, by handler and status code.",
            ["handler", "code"], registry=r)
        self.request_duration = Histogram(
            "gob_http_request_duration_seconds",
            "Time from receiving a request to answering it, by handler.",
            ["handler"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.samples_received = Counter(
            "gob_write_samples_received_total",
            "Samples received in remote_write requests and stored, by tenant.",
            ["tenant"], registry=r)
        self.series_received = Counter(
            "gob_write_series_received_total",
            "Time series entries received in remote_write requests, by tenant.",
            ["tenant"], registry=r)
        self.metadata_received = Counter(
            "gob_write_metadata_received_total",
            "Metric metadata entries received in remote_write requests and stored.",
            registry=r)
        self.series_created = Counter(
            "gob_write_series_created_total",
            "New series registered in the series table (cache misses included).",
            registry=r)
        self.discarded = Counter(
            "gob_discarded_samples_total",
            "Samples received but not stored, by tenant and reason.",
            ["tenant", "reason"], registry=r)
        self.discarded_metadata = Counter(
            "gob_discarded_metadata_total",
            "Metadata entries received but not stored, by tenant and reason.",
            ["tenant", "reason"], registry=r)
        self.batch_samples = Histogram(
            "gob_write_batch_samples",
            "Samples per inserted batch.", registry=r,
            buckets=(100, 1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000))
        self.samples_stored = Counter(
            "gob_write_samples_stored_total",
            "Samples inserted, by how the value is stored: decimal (a mantissa on a scale) or "
            "raw (the 64 float bits: NaN, infinities, -0.0, no short exact decimal form).",
            ["encoding"], registry=r)
        self.insert_duration = Histogram(
            "gob_storage_insert_duration_seconds",
            "Time to insert one batch into a table, by table.",
            ["table"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.pending_samples = Gauge(
            "gob_write_pending_samples",
            "Samples admitted to the write path and not yet inserted.", registry=r)
        self.series_cache_entries = Gauge(
            "gob_write_series_cache_entries",
            "Series remembered as registered by this process.", registry=r)
