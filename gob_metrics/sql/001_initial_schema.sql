-- Initial schema: samples, the series lookup table, metric metadata.
-- Macros (expanded by gob_metrics/storage/schema.py, never by user input):
--   {db}                 the configured database
--   {local:NAME}         NAME, or NAME_local when a cluster is configured
--   {on_cluster}         "", or ON CLUSTER <cluster>
--   {engine:ENGINE(...)} the engine, or its Replicated variant on a cluster
--   {distributed:NAME:SHARDING_KEY} a Distributed table NAME over NAME_local (cluster only)
--   {cluster_only}       anywhere in a statement: run it only when a cluster is configured

-- One row per sample. Values are Float64 stored bit-exact (StaleNaN 0x7ff0000000000002
-- survives). ReplacingMergeTree: a batch a sender retries after a 5xx collapses onto the
-- rows it already wrote; readers deduplicate (series_id, timestamp) until merges have.
CREATE TABLE IF NOT EXISTS {db}.{local:samples} {on_cluster}
(
    tenant    LowCardinality(String),
    series_id UInt128,
    timestamp Int64   CODEC(DoubleDelta, ZSTD(1)),
    value     Float64 CODEC(Gorilla, ZSTD(1))
)
ENGINE = {engine:ReplacingMergeTree()}
PARTITION BY intDiv(timestamp, 86400000)
ORDER BY (tenant, series_id, timestamp);

{distributed:samples:sipHash64(tenant, series_id)};

-- The labels-to-series lookup table: one row per series, written once per new series.
-- labels holds every label but __name__, which is metric_name.
CREATE TABLE IF NOT EXISTS {db}.{local:series} {on_cluster}
(
    tenant      LowCardinality(String),
    series_id   UInt128,
    metric_name LowCardinality(String),
    labels      Map(LowCardinality(String), String),
    created_at  DateTime64(3) DEFAULT now64(3),
    INDEX idx_series_id series_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = {engine:ReplacingMergeTree()}
ORDER BY (tenant, metric_name, series_id);

{distributed:series:sipHash64(tenant, series_id)};

-- Metric family metadata from WriteRequest.metadata; each distinct (type, help, unit)
-- of a family is kept, newest first by updated_at.
CREATE TABLE IF NOT EXISTS {db}.{local:metadata} {on_cluster}
(
    tenant             LowCardinality(String),
    metric_family_name String,
    type               LowCardinality(String),
    help               String,
    unit               String,
    updated_at         DateTime64(3)
)
ENGINE = {engine:ReplacingMergeTree(updated_at)}
ORDER BY (tenant, metric_family_name, type, help, unit);

{distributed:metadata:sipHash64(tenant, metric_family_name)};
