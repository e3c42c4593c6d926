"""How values are stored: the writer's (mantissa, scale) encoding (gob_metrics/write/_values.c)
against an independent Python model of the same rules, and ClickHouse's `value` ALIAS
(sql/003_decimal_values.sql) decoding every code bit for bit, also for rows written before
the migration."""

from __future__ import annotations

import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gob_metrics.storage.embedded import EmbeddedStorage
from gob_metrics.storage.schema import SQL_DIR, migrate
from gob_metrics.write import _values
from tests.valuemodel import MUL_BASE, RAW, bits, decode, from_bits, model

Encoder = _values.Encoder
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def test_the_model_and_the_module_agree_on_the_constants() -> None:
    assert (_values.RAW, _values.MUL_BASE) == (RAW, MUL_BASE)


def sid(n: int) -> bytes:
    return n.to_bytes(16, "little")


def encode(enc: Encoder, ids: list[bytes], values: list[float]) -> tuple[list[int], list[int]]:
    m, c = enc.encode(b"".join(ids), np.array(values, np.float64))
    return np.frombuffer(m, np.int64).tolist(), np.frombuffer(c, np.int8).tolist()


# ------------------------------------------------------------------ workloads


SPECIAL = [0.0, -0.0, math.nan, STALE_NAN, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308,
           1.7976931348623157e308, 2.0**53, 2.0**53 + 2, -(2.0**53), 9007199254740991.0,
           1e22, 1e23, 0.1, -0.1, 1 / 3, -2 / 3, 1e-18, 1.5e-18, 123456789012345678.0,
           1673032.8900000001, 1673032.89, 0.30000000000000004, 100.0, 1e18, 1e19]


def series_values(rng: np.random.Generator, kind: int, n: int) -> list[float]:
    """One series of a given shape, like exporters send them."""
    if kind == 0:  # counter in centiseconds, computed as m * 0.01
        return (np.cumsum(rng.integers(0, 3000, n)) * 0.01).tolist()
    if kind == 1:  # the same, computed as m / 100
        return (np.cumsum(rng.integers(0, 3000, n)) / 100).tolist()
    if kind == 2:  # integer counter, growing past 2^53
        return (2.0**53 - 50 + np.cumsum(rng.integers(0, 20, n))).tolist()
    if kind == 3:  # full-precision gauge
        return rng.normal(0.002, 0.0005, n).tolist()
    if kind == 4:  # negative decimals with varying digits
        return (-np.round(rng.uniform(0, 1000, n), rng.integers(0, 6))).tolist()
    if kind == 5:  # mostly short decimals with stale markers, zeros and infinities
        v = np.round(rng.uniform(-5, 5, n), 3)
        v[rng.random(n) < 0.2] = rng.choice([STALE_NAN, 0.0, -0.0, math.inf, math.nan])
        return v.tolist()
    if kind == 6:  # large magnitudes in multiples of 10^6
        return (rng.integers(100, 5000, n) * 1e6).tolist()
    return [from_bits(int(b)) for b in rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)]


def random_batches(seed: int, series: int, rounds: int) -> list[tuple[list[bytes], list[float]]]:
    rng = np.random.default_rng(seed)
    data = [series_values(rng, i % 8, rounds) for i in range(series)]
    out = []
    for r in range(rounds):
        order = rng.permutation(series)
        out.append(([sid(int(i)) for i in order], [data[int(i)][r] for i in order]))
    return out


# ------------------------------------------------------------------ the encoder


def test_encoder_agrees_with_the_model_and_round_trips() -> None:
    enc, state = Encoder(1_000), {}
    for ids, values in [([sid(900 + i) for i in range(len(SPECIAL))], SPECIAL),
                        *random_batches(20261126, 64, 60)]:
        mantissas, codes = encode(enc, ids, values)
        for i, (s, v) in enumerate(zip(ids, values, strict=True)):
            assert (mantissas[i], codes[i]) == model(state, s, v), (v, s)
            assert bits(decode(mantissas[i], codes[i])) == bits(v), (v, codes[i])


def test_a_series_keeps_its_code() -> None:
    enc = Encoder(10)
    counter = [sid(1)] * 6
    _, codes = encode(enc, counter, [1673033.0, 1673032.89, 1673033.9, 1673034.0, 0.0, 1.5])
    # the first value has no decimals; from the second on two decimals, and they stay
    assert codes[0] == 0 and len(set(codes[1:])) == 1 and codes[1] in (-2, MUL_BASE + 2)
    # NaN, -0.0 and infinities are stored raw without changing the series' code
    _, codes2 = encode(enc, [sid(1)] * 4, [STALE_NAN, -0.0, math.inf, 2.25])
    assert codes2[:3] == [RAW] * 3 and codes2[3] == codes[1]
    # a value with no short decimal form makes the series raw, and it stays raw
    _, codes3 = encode(enc, [sid(1)] * 3, [1 / 7, 2.5, 0.0])
    assert codes3 == [RAW, RAW, RAW]
    m, codes4 = encode(enc, [sid(2)] * 2, [0.0, 20.0])  # +0.0 first: no code learnt from it
    assert codes4 == [0, 1] and m == [0, 2]


def test_capacity_bounds_the_table_and_decoding_stays_exact() -> None:
    enc = Encoder(3)
    ids = [sid(i) for i in range(10)]
    values = [i * 0.25 + 1 for i in range(10)]
    for _ in range(3):
        mantissas, codes = encode(enc, ids, values)
        assert len(enc) <= 3
        assert [bits(decode(m, c)) for m, c in zip(mantissas, codes, strict=True)] == \
            [bits(v) for v in values]
    enc.clear()
    assert len(enc) == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Encoder(0)
    with pytest.raises(ValueError, match="16 bytes"):
        Encoder(5).encode(b"x" * 16, np.zeros(2))
    with pytest.raises(ValueError, match="16 bytes"):
        Encoder(5).encode(b"x" * 15, b"y" * 8)
    m, c = Encoder(5).encode(b"", b"")
    assert (len(m), len(c)) == (0, 0)
    bare = Encoder.__new__(Encoder)  # __init__ never ran: no table
    with pytest.raises(RuntimeError, match="not initialised"):
        bare.encode(b"", b"")
    bare.clear()
    assert len(bare) == 0


# ------------------------------------------------------------------ ClickHouse's decoding


def _rows(mantissas: list[int], codes: list[int]) -> pa.Table:
    n = len(mantissas)
    return pa.table({
        "tenant": ["t"] * n,
        "series_id": pa.array([sid(i) for i in range(n)], pa.binary(16)),
        "timestamp": pa.array(range(n), pa.int64()),
        "mantissa": pa.array(mantissas, pa.int64()),
        "scale": pa.array(codes, pa.int8()),
    })


async def _stored_bits(storage: EmbeddedStorage) -> list[int]:
    t = await storage.query(
        "SELECT reinterpretAsInt64(value) AS b FROM gob.samples ORDER BY timestamp")
    return t.column("b").to_pylist()


async def test_clickhouse_decodes_every_code_like_the_writer(tmp_path: Path) -> None:
    # every code with a few mantissas, then everything the encoder made of the workloads
    mantissas, codes = [], []
    for code in [*range(-18, 19), *range(MUL_BASE + 1, MUL_BASE + 19)]:
        for m in (1, -1, 7, 123456789, 2**53 - 1, -(2**52) - 3, 0):
            mantissas.append(m)
            codes.append(code)
    for v in SPECIAL:
        mantissas.append(bits(v))
        codes.append(RAW)
    enc = Encoder(1_000)
    for ids, values in random_batches(7, 40, 25):
        m, c = encode(enc, ids, values)
        mantissas += m
        codes += c
    want = [bits(decode(m, c)) for m, c in zip(mantissas, codes, strict=True)]

    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        await migrate(storage)
        await storage.insert("samples", _rows(mantissas, codes))
        assert await _stored_bits(storage) == want
    finally:
        await storage.close()
    # the ALIAS's constants are read back from the table's metadata after a restart
    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        await storage.execute("OPTIMIZE TABLE gob.samples FINAL")
        assert await _stored_bits(storage) == want
    finally:
        await storage.close()


async def test_rows_written_before_the_migration_keep_their_bits(tmp_path: Path) -> None:
    old = tmp_path / "sql-002"
    old.mkdir()
    for f in sorted(SQL_DIR.glob("*.sql"))[:2]:
        shutil.copy(f, old / f.name)
    values = [*SPECIAL, 1673032.8900000001, 42.0]
    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        assert await migrate(storage, sql_dir=old) == [1, 2]
        await storage.insert("samples", pa.table({
            "tenant": ["t"] * len(values),
            "series_id": pa.array([sid(i % 3) for i in range(len(values))], pa.binary(16)),
            "timestamp": pa.array(range(len(values)), pa.int64()),
            "value": pa.array(values, pa.float64()),
        }))
        assert await migrate(storage) == [3]
        assert await _stored_bits(storage) == [bits(v) for v in values]
        t = await storage.query("SELECT DISTINCT scale FROM gob.samples")
        assert t.column("scale").to_pylist() == [RAW]
        # and new rows go in encoded next to them
        m, c = encode(Encoder(10), [sid(0)], [0.5])
        row = _rows(m, c).set_column(2, "timestamp", pa.array([len(values)], pa.int64()))
        await storage.insert("samples", row)
        assert (await _stored_bits(storage))[-1] == bits(0.5)
    finally:
        await storage.close()


async def test_a_code_the_writer_never_uses_reads_as_nan(tmp_path: Path) -> None:
    storage = EmbeddedStorage(tmp_path / "data")
    await storage.start()
    try:
        await migrate(storage)
        await storage.insert("samples", _rows([5] * 6, [19, 50, 64, 83, 127, -19]))
        assert all(math.isnan(from_bits(b)) for b in await _stored_bits(storage))
    finally:
        await storage.close()
