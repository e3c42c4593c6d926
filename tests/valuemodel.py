"""A Python model of the value encoding of gob_metrics/write/_values.c, written from its
rules, not its code: tests/test_values.py and tests/values_fuzz.py hold the C encoder to it.
Pure Python on purpose (values_fuzz.py runs it next to a sanitizer build)."""

from __future__ import annotations

import math
import struct

RAW = -128
MUL_BASE = 64
NO_CODE = object()
POS = [float(f"1e{k}") for k in range(19)]
NEG = [float(f"1e-{k}") for k in range(19)]


def bits(v: float) -> int:
    return struct.unpack("<q", struct.pack("<d", v))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def try_code(v: float, code: int) -> int | None:
    scaled = v / POS[code] if 0 <= code <= 18 else v * POS[abs(code) % MUL_BASE]
    if not math.isfinite(scaled) or abs(round(scaled)) >= 2**53:
        return None
    x = float(round(scaled))  # round() is round-half-even, like C's nearbyint
    if 0 <= code <= 18:
        back = x * POS[code]
    elif code < 0:
        back = x / POS[-code]
    else:
        back = x * NEG[code - MUL_BASE]
    return int(x) if bits(back) == bits(v) else None


def search(v: float) -> tuple[int, int]:
    for s in range(min(18, math.floor(math.log10(abs(v)))), -19, -1):
        if (m := try_code(v, s)) is not None:
            return s, m
        if s < 0 and (m := try_code(v, MUL_BASE - s)) is not None:
            return MUL_BASE - s, m
    return RAW, bits(v)


def model(state: dict[bytes, object], sid: bytes, v: float) -> tuple[int, int]:
    """(mantissa, code) of one value, updating the series' remembered code."""
    code = state.setdefault(sid, NO_CODE)
    if not math.isfinite(v) or bits(v) == -(2**63):
        return bits(v), RAW
    if v == 0.0:
        return 0, (0 if code is NO_CODE else code)  # type: ignore[return-value]
    if code == RAW:
        return bits(v), RAW
    if code is not NO_CODE and (m := try_code(v, code)) is not None:  # type: ignore[arg-type]
        return m, code  # type: ignore[return-value]
    code, m = search(v)
    state[sid] = code
    return m, code


def decode(mantissa: int, code: int) -> float:
    """What the samples table's `value` ALIAS computes (sql/003_decimal_values.sql)."""
    if code == RAW:
        return from_bits(mantissa)
    if code > MUL_BASE:
        return float(mantissa) * NEG[code - MUL_BASE]
    if code >= 0:
        return float(mantissa) * POS[code]
    return float(mantissa) / POS[-code]
