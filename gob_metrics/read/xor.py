"""Prometheus' Gorilla XOR chunk encoding (``tsdb/chunkenc/xor.go``): pure functions over
bytes, used for STREAMED_XOR_CHUNKS remote_read responses.

Layout of one chunk, bit-exact with Prometheus 2.42:

* 2 bytes: number of samples, big-endian;
* sample 0: timestamp as a signed (zigzag) varint, value as its 64 IEEE-754 bits;
* sample 1: timestamp delta as an unsigned varint, value XOR-encoded;
* sample 2..: delta-of-delta of the timestamp in one of five buckets: ``0`` (dod = 0),
  ``10`` + 14 bits, ``110`` + 17 bits, ``1110`` + 20 bits, ``1111`` + 64 bits (two's
  complement, a bucket of n bits holds -(2^(n-1)-1) .. 2^(n-1)); then the value XOR-encoded.

A value is XOR-ed with the previous one: ``0`` if equal; else ``1``, then ``0`` and the
meaningful bits if they fit the previous leading/trailing-zero window, or ``1``, 5 bits of
leading zeros (clamped to 31), 6 bits of significant bits (64 written as 0) and the bits.
Bits are written most significant first; the last byte is zero-padded.

Values are handled as their 64-bit patterns, so every NaN payload (the StaleNaN
``0x7ff0000000000002`` among them) survives a round trip.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import numpy as np

#: samples per chunk, as Prometheus cuts head chunks.
MAX_SAMPLES_PER_CHUNK = 120

_MASK64 = (1 << 64) - 1
# (prefix bits, prefix width, payload width) of the delta-of-delta buckets.
_DOD_BUCKETS = ((0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20))


class ChunkDecodeError(ValueError):
    """The bytes are not a well-formed XOR chunk."""


def uvarint(x: int) -> bytes:
    """Protobuf's unsigned varint (also the remote_read frame length prefix)."""
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def _in_bucket(dod: int, nbits: int) -> bool:
    return -((1 << (nbits - 1)) - 1) <= dod <= (1 << (nbits - 1))


def encode_chunk(timestamps: Sequence[int], value_bits: Sequence[int]) -> bytes:
    """Encode one chunk of up to 65535 samples; values given as 64-bit patterns
    (``np.ndarray.view(np.uint64)``) so NaN payloads are kept exactly."""
    n = len(timestamps)
    if n != len(value_bits):
        raise ValueError("timestamps and values differ in length")
    if not 0 < n <= 0xFFFF:
        raise ValueError(f"a chunk holds 1..65535 samples, got {n}")
    t0 = int(timestamps[0])
    v_prev = int(value_bits[0])
    zigzag = ((t0 << 1) ^ (t0 >> 63)) & _MASK64
    head = struct.pack(">H", n) + uvarint(zigzag) + struct.pack(">Q", v_prev)
    acc = 0  # the bit stream after `head`, as one integer
    width = 0
    t_prev = t0
    delta_prev = 0
    leading = 0xFF  # no window yet
    trailing = 0
    bytewise = True  # whether the last field went out through bstream.writeByte
    for i in range(1, n):
        t = int(timestamps[i])
        delta = (t - t_prev) & _MASK64
        if i == 1:
            vb = uvarint(delta)
            acc = (acc << (8 * len(vb))) | int.from_bytes(vb, "big")
            width += 8 * len(vb)
        else:
            dod = (delta - delta_prev) & _MASK64
            if dod >= 1 << 63:
                dod -= 1 << 64
            if dod == 0:
                acc <<= 1
                width += 1
            else:
                for prefix, pwidth, nbits in _DOD_BUCKETS:
                    if _in_bucket(dod, nbits):
                        acc = (((acc << pwidth) | prefix) << nbits) | (dod & ((1 << nbits) - 1))
                        width += pwidth + nbits
                        break
                else:
                    acc = (((acc << 4) | 0b1111) << 64) | (dod & _MASK64)
                    width += 68
        t_prev = t
        delta_prev = delta
        v = int(value_bits[i])
        x = v ^ v_prev
        v_prev = v
        if x == 0:
            acc <<= 1
            width += 1
            bytewise = False
            continue
        new_leading = 64 - x.bit_length()
        new_trailing = (x & -x).bit_length() - 1
        if new_leading >= 32:
            new_leading = 31
        if leading != 0xFF and new_leading >= leading and new_trailing >= trailing:
            sig = 64 - leading - trailing
            acc = (((acc << 2) | 0b10) << sig) | (x >> trailing)
            width += 2 + sig
        else:
            leading, trailing = new_leading, new_trailing
            sig = 64 - leading - trailing
            acc = (((((acc << 2) | 0b11) << 5 | leading) << 6 | (sig & 0x3F)) << sig) | (
                x >> trailing)
            width += 13 + sig
        bytewise = sig % 8 == 0
    pad = -width % 8
    # Prometheus' bstream.writeByte always appends the next byte, so a chunk whose last
    # field ended byte-aligned through writeByte carries one more, empty byte. Kept, so
    # chunks are byte-identical to Prometheus' (decoders ignore it either way).
    extra = b"\x00" if bytewise and pad == 0 else b""
    return head + (acc << pad).to_bytes((width + pad) // 8, "big") + extra


def encode_series(timestamps: np.ndarray, values: np.ndarray,
                  max_samples: int = MAX_SAMPLES_PER_CHUNK) -> Iterator[tuple[int, int, bytes]]:
    """Cut one series into chunks of at most ``max_samples``; yield (min time, max time,
    chunk bytes). ``timestamps`` are int64 ms, ``values`` float64."""
    ts = timestamps.tolist()
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64).tolist()
    for lo in range(0, len(ts), max_samples):
        hi = min(lo + max_samples, len(ts))
        yield ts[lo], ts[hi - 1], encode_chunk(ts[lo:hi], bits[lo:hi])


class _Bits:
    """Reads big-endian bit fields from a byte string."""

    __slots__ = ("pos", "total", "value")

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.total = 8 * len(data)
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > self.total:
            raise ChunkDecodeError("chunk ends in the middle of a sample")
        self.pos = end
        return (self.value >> (self.total - end)) & ((1 << n) - 1)

    def uvarint(self) -> int:
        x = 0
        for shift in range(0, 70, 7):
            b = self.read(8)
            x |= (b & 0x7F) << shift
            if b < 0x80:
                if shift == 63 and b > 1:
                    break
                return x
        raise ChunkDecodeError("varint overflows 64 bits")


def decode_chunk(data: bytes) -> tuple[list[int], list[int]]:
    """Decode one XOR chunk into (timestamps, value bit patterns)."""
    if len(data) < 2:
        raise ChunkDecodeError("chunk shorter than its 2-byte header")
    n = struct.unpack_from(">H", data)[0]
    ts: list[int] = []
    vals: list[int] = []
    if n == 0:
        return ts, vals
    r = _Bits(data[2:])
    zigzag = r.uvarint()
    t = (zigzag >> 1) ^ -(zigzag & 1)
    v = r.read(64)
    ts.append(t)
    vals.append(v)
    delta = 0
    leading = trailing = 0
    for i in range(1, n):
        if i == 1:
            delta = r.uvarint()
        else:
            d = 0
            for _ in range(4):
                bit = r.read(1)
                d = (d << 1) | bit
                if bit == 0:
                    break
            if d == 0:
                dod = 0
            elif d == 0b1111:
                dod = r.read(64)
            else:
                nbits = {0b10: 14, 0b110: 17, 0b1110: 20}[d]
                dod = r.read(nbits)
                if dod > 1 << (nbits - 1):
                    dod -= 1 << nbits
            delta = (delta + dod) & _MASK64
        t = (t + delta) & _MASK64
        if t >= 1 << 63:
            t -= 1 << 64
        if r.read(1):
            if r.read(1):
                leading = r.read(5)
                sig = r.read(6) or 64
                trailing = 64 - leading - sig
                if trailing < 0:
                    raise ChunkDecodeError("leading zeros and significant bits exceed 64")
            else:
                sig = 64 - leading - trailing
            v ^= r.read(sig) << trailing
        ts.append(t)
        vals.append(v)
    return ts, vals


def decode_chunk_arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode one XOR chunk into (int64 timestamps, float64 values)."""
    ts, vals = decode_chunk(data)
    return np.array(ts, dtype=np.int64), np.array(vals, dtype=np.uint64).view(np.float64)
