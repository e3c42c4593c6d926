"""Turn the scrape rounds into remote_write requests, checksum them, and send them.

The same encoded requests go to every receiver, one at a time and in time order, the
way a Prometheus remote_write queue with one shard delivers them: an in-order receiver
(Prometheus' TSDB head) accepts 2024 samples into an empty database this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
import snappy

from compliance.dataset import DatasetSpec, Labels, scrape_rounds
from gob_metrics.proto.prometheus import remote_pb2, types_pb2

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "User-Agent": "gob-compliance",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
#: one request per minute of scrapes (12 rounds of 5 s), ~15k samples, like a busy queue.
ROUNDS_PER_REQUEST = 12


@dataclass(frozen=True)
class EncodedDataset:
    """The serialized WriteRequests (uncompressed) and what they hold."""

    requests: list[bytes]
    series: int
    samples: int
    first_ms: int
    last_ms: int

    @property
    def sha256(self) -> str:
        """sha256 over the serialized (uncompressed) requests, in order."""
        h = hashlib.sha256()
        for r in self.requests:
            h.update(len(r).to_bytes(8, "big"))
            h.update(r)
        return h.hexdigest()

    def compressed(self) -> list[bytes]:
        return [snappy.compress(r) for r in self.requests]


_LABEL_BYTES: dict[Labels, bytes] = {}


def _label_bytes(labels: Labels) -> bytes:
    """The serialized ``labels`` field of a TimeSeries, built once per series."""
    encoded = _LABEL_BYTES.get(labels)
    if encoded is None:
        msg = types_pb2.TimeSeries(labels=[types_pb2.Label(name=n, value=v) for n, v in labels])
        encoded = _LABEL_BYTES[labels] = msg.SerializeToString()
    return encoded


def encode_request(series: Iterable[tuple[Labels, Sequence[tuple[int, float]]]]) -> bytes:
    """Serialize one WriteRequest: labels in the given (sorted) order, samples as given."""
    req = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        ts.MergeFromString(_label_bytes(labels))
        add = ts.samples.add
        for t, v in samples:
            add(timestamp=t, value=v)
    return req.SerializeToString()


def build_dataset(spec: DatasetSpec | None = None,
                  rounds_per_request: int = ROUNDS_PER_REQUEST) -> EncodedDataset:
    """Generate and encode the whole data set: one WriteRequest per ``rounds_per_request``
    scrape rounds, series sorted by label set, each series' samples in time order."""
    requests: list[bytes] = []
    series: set[Labels] = set()
    samples, first, last = 0, None, None
    window: dict[Labels, list[tuple[int, float]]] = {}

    def flush() -> None:
        requests.append(encode_request(sorted(window.items())))
        series.update(window)
        window.clear()

    for i, rounds in enumerate(scrape_rounds(spec), start=1):
        for t, scraped in rounds:
            for labels, v in scraped:
                window.setdefault(labels, []).append((t, v))
            samples += len(scraped)
        if first is None:
            first = min(t for t, _ in rounds)
        last = max(t for t, _ in rounds)
        if i % rounds_per_request == 0:
            flush()
    if window:
        flush()
    return EncodedDataset(requests, len(series), samples, first or 0, last or 0)


class LoadError(RuntimeError):
    """A receiver refused a request."""


async def send_all(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes],
                   timeout: float = 60.0) -> None:
    """POST every body to ``url`` in order, one at a time; raise on the first refusal."""
    for i, body in enumerate(bodies):
        async with session.post(url, data=body, headers=HEADERS,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status // 100 != 2:
                text = (await resp.text())[:500]
                raise LoadError(f"{url} answered {resp.status} to request {i + 1}/{len(bodies)}: "
                                f"{text.strip()}")
