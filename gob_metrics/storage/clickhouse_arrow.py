"""Convert between clickhouse-driver's columnar Python values and Arrow, by ClickHouse type.

Pure functions, no server: the transport in ``clickhouse.py`` calls ``column_to_arrow`` on
each column of a SELECT result and ``arrow_to_column`` on each column of an insert. The
Arrow types are the ones chdb produces (see ``storage/base.py``), so callers get the same
table from either transport:

* ``UInt128``/``Int128``/``UInt256``/``Int256`` <-> ``fixed_size_binary(16|32)``, the
  value's little-endian two's-complement bytes;
* ``String`` -> ``string`` (``binary`` if a value is not UTF-8), ``FixedString(N)`` ->
  ``fixed_size_binary(N)``;
* ``DateTime`` -> ``uint32`` seconds; ``DateTime64(p)`` -> ``timestamp[s|ms|us|ns]`` in the
  column's time zone, or the server's when the type names none;
* ``Enum8``/``Enum16`` -> ``int8``/``int16`` values; ``UUID`` -> ``arrow.uuid``;
* ``Map(K, V)`` -> ``map<K, V>``, ``Array(T)`` -> ``list<T>``, ``Tuple(...)`` -> ``struct``.

The driver must run with ``strings_as_bytes=True`` so strings arrive as bytes (binary data
in ``String``/``FixedString`` survives) and go out as bytes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa


class UnsupportedType(TypeError):
    """A ClickHouse type this transport has no Arrow mapping for."""


_PLAIN: dict[str, pa.DataType] = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Bool": pa.bool_(),
    "Date": pa.date32(),
    "Date32": pa.date32(),
}
#: ClickHouse integers wider than 64 bits: (bytes, signed).
_WIDE_INTS = {
    "UInt128": (16, False),
    "Int128": (16, True),
    "UInt256": (32, False),
    "Int256": (32, True),
}
_DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}
#: Arrow timestamp unit for a DateTime64 precision, and that unit's digits after the second.
_UNITS = [("s", 0), ("ms", 3), ("ms", 3), ("ms", 3), ("us", 6), ("us", 6), ("us", 6)]
_UNITS += [("ns", 9)] * 3
_UNIT_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_NAMED_ELEMENT = re.compile(r"(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)", re.S)
_ENUM_ITEM = re.compile(r"'((?:[^'\\]|\\.)*)'\s*=\s*(-?\d+)", re.S)


def split_type(spec: str) -> tuple[str, list[str]]:
    """Split a type into its name and top-level arguments.

    ``"Map(String, Array(UInt8))"`` -> ``("Map", ["String", "Array(UInt8)"])``.
    """
    spec = spec.strip()
    start = spec.find("(")
    if start < 0 or not spec.endswith(")"):
        return spec, []
    name, inner = spec[:start], spec[start + 1 : -1]
    args: list[str] = []
    depth, begin, quote, i = 0, 0, "", 0
    while i < len(inner):
        c = inner[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(inner[begin:i].strip())
            begin = i + 1
        i += 1
    args.append(inner[begin:].strip())
    return name, args


def _unquote(literal: str) -> str:
    literal = literal.strip()
    if len(literal) >= 2 and literal[0] == literal[-1] and literal[0] in "'`":
        literal = literal[1:-1]
    return re.sub(r"\\(.)", r"\1", literal)


def _tuple_elements(args: list[str]) -> list[tuple[str, str]]:
    """``["a UInt8", "String"]`` -> ``[("a", "UInt8"), ("2", "String")]``."""
    out = []
    for i, arg in enumerate(args, 1):
        m = _NAMED_ELEMENT.fullmatch(arg)
        out.append((_unquote(m.group(1)), m.group(2)) if m else (str(i), arg))
    return out


def _enum_values(args: list[str]) -> dict[str, int]:
    values = {}
    for arg in args:
        m = _ENUM_ITEM.fullmatch(arg.strip())
        if m is None:
            raise UnsupportedType(f"cannot parse Enum element {arg!r}")
        values[_unquote("'" + m.group(1) + "'")] = int(m.group(2))
    return values


def _decimal_type(name: str, args: list[str]) -> pa.DataType:
    if name == "Decimal":
        precision, scale = int(args[0]), int(args[1]) if len(args) > 1 else 0
    else:
        precision, scale = _DECIMAL_PRECISION[name], int(args[0])
    if precision <= 38:
        return pa.decimal128(precision, scale)
    return pa.decimal256(precision, scale)


def _epoch_us(value: datetime, tz: str) -> int:
    """Microseconds since the epoch of a datetime the driver decoded.

    The driver returns naive datetimes in the server's time zone when the column type
    names none (a wall time repeated by a DST change resolves to its first occurrence).
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz))
    return (value - _EPOCH) // _ONE_US


def column_to_arrow(values: Sequence[Any], spec: str, server_tz: str = "UTC") -> pa.Array:
    """Build the Arrow array for one result column of ClickHouse type ``spec``."""
    name, args = split_type(spec)
    if name in ("Nullable", "LowCardinality", "SimpleAggregateFunction"):
        return column_to_arrow(values, args[-1], server_tz)
    if name in _PLAIN:
        return pa.array(values, type=_PLAIN[name])
    if name in _WIDE_INTS:
        size, signed = _WIDE_INTS[name]
        out = [None if v is None else v.to_bytes(size, "little", signed=signed) for v in values]
        return pa.array(out, type=pa.binary(size))
    if name == "String":
        raw = pa.array(values, type=pa.binary())
        try:
            return raw.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8: the contract says binary
            return raw
    if name == "FixedString":
        return pa.array(values, type=pa.binary(int(args[0])))
    if name == "DateTime":
        tz = _unquote(args[0]) if args else server_tz
        secs = [None if v is None else _epoch_us(v, tz) // 1_000_000 for v in values]
        return pa.array(secs, type=pa.uint32())
    if name == "DateTime64":
        tz = _unquote(args[1]) if len(args) > 1 else server_tz
        unit, digits = _UNITS[int(args[0])]
        if digits <= 6:
            div = 10 ** (6 - digits)
            ticks = [None if v is None else _epoch_us(v, tz) // div for v in values]
        else:
            ticks = [None if v is None else _epoch_us(v, tz) * 1000 for v in values]
        return pa.array(ticks, type=pa.timestamp(unit, tz=tz))
    if name.startswith("Decimal"):
        return pa.array(values, type=_decimal_type(name, args))
    if name in ("Enum8", "Enum16"):
        mapping = _enum_values(args)
        codes = [None if v is None else mapping[v] for v in values]
        return pa.array(codes, type=pa.int8() if name == "Enum8" else pa.int16())
    if name == "UUID":
        raw = [None if v is None else v.bytes for v in values]
        return pa.ExtensionArray.from_storage(pa.uuid(), pa.array(raw, type=pa.binary(16)))
    if name == "Array":
        offsets = [0]
        flat: list[Any] = []
        for row in values:
            flat.extend(row)
            offsets.append(len(flat))
        inner = column_to_arrow(flat, args[0], server_tz)
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), inner)
    if name == "Map":
        offsets = [0]
        keys: list[Any] = []
        items: list[Any] = []
        for row in values:
            keys.extend(row.keys())
            items.extend(row.values())
            offsets.append(len(keys))
        return pa.MapArray.from_arrays(
            pa.array(offsets, type=pa.int32()),
            column_to_arrow(keys, args[0], server_tz),
            column_to_arrow(items, args[1], server_tz),
        )
    if name == "Tuple":
        elements = _tuple_elements(args)
        fields = [
            column_to_arrow([row[i] for row in values], element_type, server_tz)
            for i, (_, element_type) in enumerate(elements)
        ]
        return pa.StructArray.from_arrays(fields, names=[n for n, _ in elements])
    if name == "Nothing":
        return pa.nulls(len(values))
    raise UnsupportedType(f"no Arrow mapping for ClickHouse type {spec}")


def _timestamp_ticks(arr: pa.Array, digits: int) -> list[int | None]:
    """Integers in units of 10**-digits seconds from an Arrow timestamp array."""
    have = _UNIT_DIGITS[arr.type.unit]
    raw = arr.cast(pa.int64()).to_pylist()
    if digits >= have:
        mul = 10 ** (digits - have)
        return [None if t is None else t * mul for t in raw]
    div = 10 ** (have - digits)
    return [None if t is None else t // div for t in raw]


def _split_rows(flat: list[Any], arr: pa.Array) -> list[list[Any]]:
    offsets = arr.offsets.to_pylist()
    nulls = arr.is_null().to_pylist()
    # ClickHouse arrays are never NULL: a null list becomes an empty array.
    return [[] if nulls[i] else flat[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def arrow_to_column(arr: pa.Array | pa.ChunkedArray, spec: str) -> list[Any]:
    """Python values clickhouse-driver writes into a column of ClickHouse type ``spec``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    name, args = split_type(spec)
    if name in ("Nullable", "LowCardinality", "SimpleAggregateFunction"):
        return arrow_to_column(arr, args[-1])
    atype = arr.type
    if isinstance(atype, pa.ExtensionType):
        arr, atype = arr.storage, arr.storage.type
    if name == "Array":
        if not (pa.types.is_list(atype) or pa.types.is_large_list(atype)):
            raise TypeError(f"an Array column needs an Arrow list, got {atype}")
        return _split_rows(arrow_to_column(arr.values, args[0]), arr)
    if name == "Map":
        if not pa.types.is_map(atype):
            raise TypeError(f"a Map column needs an Arrow map, got {atype}")
        keys = arrow_to_column(arr.keys, args[0])
        items = arrow_to_column(arr.items, args[1])
        pairs = _split_rows(list(zip(keys, items, strict=True)), arr)
        return [dict(row) for row in pairs]
    if name == "Tuple":
        if not pa.types.is_struct(atype):
            raise TypeError(f"a Tuple column needs an Arrow struct, got {atype}")
        elements = _tuple_elements(args)
        fields = [
            arrow_to_column(field, element_type)
            for field, (_, element_type) in zip(arr.flatten(), elements, strict=True)
        ]
        return [tuple(row) for row in zip(*fields, strict=True)]
    if name in _WIDE_INTS and pa.types.is_fixed_size_binary(atype):
        size, signed = _WIDE_INTS[name]
        if atype.byte_width != size:
            raise TypeError(f"{name} needs fixed_size_binary({size}), got {atype}")
        return [
            None if b is None else int.from_bytes(b, "little", signed=signed)
            for b in arr.to_pylist()
        ]
    if name in ("String", "FixedString"):
        if pa.types.is_string(atype):
            arr = arr.cast(pa.binary())
        elif pa.types.is_large_string(atype):
            arr = arr.cast(pa.large_binary())
        return arr.to_pylist()
    if name in ("DateTime", "DateTime64") and pa.types.is_timestamp(atype):
        # Raw integers skip the driver's time zone handling, so nothing is lost.
        return _timestamp_ticks(arr, int(args[0]) if name == "DateTime64" else 0)
    if name == "UUID" and pa.types.is_fixed_size_binary(atype):
        return [None if b is None else uuid.UUID(bytes=b) for b in arr.to_pylist()]
    values = arr.to_pylist()
    if name in ("Date", "Date32") and values and isinstance(values[0], datetime):
        return [None if v is None else v.date() for v in values]
    return values


__all__ = ["UnsupportedType", "arrow_to_column", "column_to_arrow", "split_type"]
