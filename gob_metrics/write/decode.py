"""remote_write 1.0 body decoding: pure functions over bytes.

The snappy block's declared length is read and checked against the limit *before*
decompressing, so a small body that claims gigabytes (a snappy bomb) is refused without
allocating anything.
"""

from __future__ import annotations

import snappy
from google.protobuf.message import DecodeError

from gob_metrics.errors import BadRequest, PayloadTooLarge
from gob_metrics.proto.gob import ingest_pb2

RawWriteRequest = ingest_pb2.RawWriteRequest


def snappy_declared_length(body: bytes) -> int:
    """Return the uncompressed length a snappy block declares (its varint preamble)."""
    result = 0
    for i in range(min(len(body), 10)):
        byte = body[i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i > 4 or result > 0xFFFFFFFF:
                break
            return result
    raise BadRequest("corrupt snappy block: invalid length preamble")


def decompress(body: bytes, max_decompressed_bytes: int) -> bytes:
    """Snappy-decompress ``body``, refusing declared sizes over the limit."""
    if not body:
        raise BadRequest("empty request body: expected a snappy-compressed WriteRequest")
    declared = snappy_declared_length(body)
    if declared > max_decompressed_bytes:
        raise PayloadTooLarge(
            f"decompressed body of {declared} bytes exceeds "
            f"write.max_decompressed_bytes={max_decompressed_bytes}"
        )
    try:
        data = snappy.uncompress(body)
    except Exception as exc:  # cramjam raises its own error types
        raise BadRequest(f"corrupt snappy block: {exc}") from exc
    if len(data) != declared:
        raise BadRequest(
            f"corrupt snappy block: declared {declared} bytes, decompressed {len(data)}"
        )
    return bytes(data)


def parse_write_request(data: bytes) -> RawWriteRequest:
    """Parse a serialized prometheus.WriteRequest into its raw (bytes-labelled) view."""
    req = RawWriteRequest()
    try:
        req.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"invalid protobuf WriteRequest: {exc}") from exc
    return req
