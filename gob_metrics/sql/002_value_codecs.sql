-- Cheaper codecs for the samples table, measured on the node_exporter-like benchmark
-- workload (2M samples, 20k series, after OPTIMIZE FINAL), bytes per sample of `value`:
--   Gorilla, ZSTD(1) 2.84 | ZSTD(3) 2.56 | FPC, ZSTD(1) 2.69 | Delta, ZSTD(1) 2.18
-- Delta over the Float64 bit patterns wins because exporters' values are mostly integers
-- or slowly changing; it is lossless (bit-exact, StaleNaN included) like every codec.
-- series_id had the default LZ4; ZSTD halves it (runs of one id sorted together).
-- Applies to parts written or merged from now on.
ALTER TABLE {db}.{local:samples} {on_cluster}
    MODIFY COLUMN value Float64 CODEC(Delta, ZSTD(1));

ALTER TABLE {db}.{local:samples} {on_cluster}
    MODIFY COLUMN series_id UInt128 CODEC(ZSTD(1));
