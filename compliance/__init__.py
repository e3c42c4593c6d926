"""A PromQL compliance harness: the Prometheus compliance suite's queries, compared between
a reference Prometheus 2.42 and gob-metrics (through remote_read, or its own PromQL API), on
a deterministic demo-service data set. Run ``python -m compliance --help``."""
