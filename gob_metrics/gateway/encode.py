"""Encode a streamed result (ClickHouse column types plus Arrow record batches) as JSON,
CSV or TSV, one chunk of bytes per batch.

Values, in every format (the conversion is chosen once per column from its ClickHouse type):

* integers up to 64 bits and finite floats are numbers; NaN and infinities are the strings
  ``"NaN"``, ``"+Inf"``, ``"-Inf"`` (as in Prometheus' API); 128- and 256-bit integers
  (``series_id`` is a UInt128) are decimal strings, since JSON numbers lose them;
* Decimal is a decimal string; Bool is true/false;
* Date is ``YYYY-MM-DD``; DateTime and DateTime64 are RFC 3339 instants in UTC
  (``2024-05-01T12:00:00Z``, ``2024-05-01T12:00:00.123Z``);
* String is text (invalid UTF-8 replaced by U+FFFD); Enum is its name; UUID and IP
  addresses their usual text;
* Array and Tuple are JSON arrays, Map a JSON object (keys as strings);
* NULL is ``null`` in JSON, an empty field in CSV and ``\\N`` in TSV.

In CSV and TSV, arrays, tuples and maps are written as JSON text.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import json
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gob_metrics.storage.clickhouse_arrow import split_type

Converter = Callable[[pa.Array], list[Any]]
Columns = Sequence[tuple[str, str]]

FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8; header=present",
    "tsv": "text/tab-separated-values; charset=utf-8",
}

_INTS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}
_WIDE_INTS = {"Int128": True, "Int256": True, "UInt128": False, "UInt256": False}
_EPOCH_DATE = dt.date(1970, 1, 1)


def _float(v: Any) -> Any:
    if v is None or math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "+Inf" if v > 0 else "-Inf"


def _plain(arr: pa.Array) -> list[Any]:
    return arr.to_pylist()


def _floats(arr: pa.Array) -> list[Any]:
    if pa.types.is_float32(arr.type):
        # float32 values printed the way ClickHouse prints them (0.1, not 0.100000001).
        values = arr.to_numpy(zero_copy_only=False)
        nulls = arr.is_null().to_pylist() if arr.null_count else None
        out = [float(np.format_float_positional(v, unique=True, trim="-"))
               if math.isfinite(v) else float(v) for v in values]
        if nulls:
            out = [None if n else v for v, n in zip(out, nulls, strict=True)]
        return [_float(v) for v in out]
    return [_float(v) for v in arr.to_pylist()]


def _wide_int(signed: bool) -> Converter:
    def convert(arr: pa.Array) -> list[Any]:
        if pa.types.is_integer(arr.type):
            return [None if v is None else str(v) for v in arr.to_pylist()]
        return [None if b is None else str(int.from_bytes(b, "little", signed=signed))
                for b in arr.to_pylist()]

    return convert


def _text(arr: pa.Array) -> list[Any]:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            return arr.to_pylist()
        except UnicodeDecodeError:  # chdb hands over non-UTF-8 bytes as "string"
            arr = arr.cast(pa.binary() if pa.types.is_string(arr.type) else pa.large_binary())
    return [None if b is None else b.decode("utf-8", "replace") for b in arr.to_pylist()]


def _decimal(arr: pa.Array) -> list[Any]:
    return [None if v is None else str(v) for v in arr.to_pylist()]


def _date(arr: pa.Array) -> list[Any]:
    if pa.types.is_integer(arr.type):
        return [None if v is None else (_EPOCH_DATE + dt.timedelta(days=v)).isoformat()
                for v in arr.to_pylist()]
    return [None if v is None else v.isoformat() for v in arr.to_pylist()]


def _instants(arr: pa.Array) -> list[Any]:
    """DateTime (seconds as an integer) or DateTime64 (an Arrow timestamp) as RFC 3339."""
    if pa.types.is_integer(arr.type):
        arr = arr.cast(pa.int64()).cast(pa.timestamp("s"))
    elif pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        arr = arr.cast(pa.timestamp(arr.type.unit))  # the stored value is UTC already
    text = pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
    return [None if v is None else v + "Z" for v in text.to_pylist()]


def _enum(args: Sequence[str]) -> Converter:
    names: dict[int, str] = {}
    for item in args:
        label, _, number = item.rpartition("=")
        label = label.strip()
        if len(label) >= 2 and label[0] == "'" and label[-1] == "'":
            label = label[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        names[int(number.strip())] = label

    def convert(arr: pa.Array) -> list[Any]:
        if pa.types.is_integer(arr.type):
            return [None if v is None else names.get(v, str(v)) for v in arr.to_pylist()]
        return _text(arr)

    return convert


def _uuid(arr: pa.Array) -> list[Any]:
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if pa.types.is_string(arr.type):
        return arr.to_pylist()
    return [None if b is None else str(uuid.UUID(bytes=b)) for b in arr.to_pylist()]


def _ipv4(arr: pa.Array) -> list[Any]:
    if pa.types.is_string(arr.type):
        return arr.to_pylist()
    return [None if v is None else str(ipaddress.IPv4Address(v)) for v in arr.to_pylist()]


def _ipv6(arr: pa.Array) -> list[Any]:
    if pa.types.is_string(arr.type):
        return arr.to_pylist()
    return [None if b is None else str(ipaddress.IPv6Address(b)) for b in arr.to_pylist()]


def _split(flat: list[Any], arr: pa.Array) -> list[Any]:
    offsets = arr.offsets.to_pylist()
    valid = arr.is_valid().to_pylist()
    return [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(arr))]


def _array(inner: Converter) -> Converter:
    def convert(arr: pa.Array) -> list[Any]:
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            return _fallback(arr)
        return _split(inner(arr.values), arr)

    return convert


def _map(key: Converter, item: Converter) -> Converter:
    def convert(arr: pa.Array) -> list[Any]:
        if not pa.types.is_map(arr.type):
            return _fallback(arr)
        keys = key(arr.keys)
        items = item(arr.items)
        pairs = _split(list(zip(keys, items, strict=True)), arr)
        return [None if row is None else {_key(k): v for k, v in row} for row in pairs]

    return convert


def _key(k: Any) -> str:
    return k if isinstance(k, str) else json.dumps(k)


def _tuple(elements: Sequence[Converter]) -> Converter:
    def convert(arr: pa.Array) -> list[Any]:
        if not pa.types.is_struct(arr.type) or arr.type.num_fields != len(elements):
            return _fallback(arr)
        fields = [c(arr.field(i)) for i, c in enumerate(elements)]
        valid = arr.is_valid().to_pylist()
        return [list(row) if ok else None
                for row, ok in zip(zip(*fields, strict=True), valid, strict=True)]

    return convert


def _fallback(arr: pa.Array) -> list[Any]:
    return [_jsonable(v) for v in arr.to_pylist()]


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {_key(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def converter(spec: str) -> Converter:
    """The column converter for ClickHouse type ``spec``."""
    name, args = split_type(spec)
    if name in ("Nullable", "LowCardinality") and args:
        return converter(args[0])
    if name == "SimpleAggregateFunction" and args:
        return converter(args[-1])
    if name in _INTS or name.startswith("Interval"):
        return _plain
    if name in _WIDE_INTS:
        return _wide_int(_WIDE_INTS[name])
    if name in ("Float32", "Float64", "BFloat16"):
        return _floats
    if name == "Bool":
        return _plain
    if name in ("String", "FixedString"):
        return _text
    if name.startswith("Decimal"):
        return _decimal
    if name in ("Date", "Date32"):
        return _date
    if name in ("DateTime", "DateTime64"):
        return _instants
    if name in ("Enum8", "Enum16"):
        return _enum(args)
    if name == "UUID":
        return _uuid
    if name == "IPv4":
        return _ipv4
    if name == "IPv6":
        return _ipv6
    if name == "Array" and args:
        return _array(converter(args[0]))
    if name == "Map" and len(args) == 2:
        return _map(converter(args[0]), converter(args[1]))
    if name == "Tuple" and args:
        return _tuple([converter(_element_type(a)) for a in args])
    return _fallback


def _element_type(arg: str) -> str:
    """``name Type`` of a named tuple element -> ``Type``."""
    head, sep, rest = arg.partition(" ")
    if sep and head.isidentifier() and "(" not in head:
        return rest.strip()
    return arg


class Encoder:
    """Turns (columns, batches) into bytes in one format; ``header``, ``batch``, ``end``."""

    def __init__(self, fmt: str, columns: Columns) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format = fmt
        self.columns = list(columns)
        self.rows = 0
        self._converters = [converter(t) for _, t in self.columns]
        self._first = True

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]

    def header(self) -> bytes:
        if self.format == "json":
            cols = [{"name": n, "type": t} for n, t in self.columns]
            return b'{"data":{"columns":' + _dumps(cols) + b',"rows":['
        return self._lines([[n for n, _ in self.columns]])

    def rows_of(self, batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
        values = [c(batch.column(i)) for i, c in enumerate(self._converters)]
        return list(zip(*values, strict=True)) if values else [()] * batch.num_rows

    def batch(self, batch: pa.RecordBatch) -> bytes:
        rows = self.rows_of(batch)
        self.rows += len(rows)
        if not rows:
            return b""
        if self.format == "json":
            body = _dumps([list(r) for r in rows])[1:-1]
            if self._first:
                self._first = False
                return body
            return b"," + body
        return self._lines(rows)

    def end(self, error: BaseException | None = None, error_type: str = "") -> bytes:
        """The closing bytes: for JSON, ``status`` last (it is only known at the end)."""
        if self.format != "json":
            return b""
        tail = {"stats": {"rows": self.rows}}
        if error is None:
            tail["status"] = "success"
        else:
            tail.update(status="error", errorType=error_type or "execution", error=str(error))
        return b"]}," + _dumps(tail)[1:-1] + b"}\n"

    def _lines(self, rows: Iterable[Sequence[Any]]) -> bytes:
        out = io.StringIO()
        if self.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerows([_csv_cell(v) for v in row] for row in rows)
        else:
            for row in rows:
                out.write("\t".join(_tsv_cell(v) for v in row))
                out.write("\n")
        return out.getvalue().encode()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _csv_cell(v: Any) -> str:
    return "" if v is None else _cell(v)


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                              "\0": "\\0"})


def _tsv_cell(v: Any) -> str:
    return "\\N" if v is None else _cell(v).translate(_TSV_ESCAPES)
