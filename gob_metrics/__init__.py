"""gob-metrics: a Prometheus-compatible long-term metrics backend on ClickHouse."""

__version__ = "0.1.0"
