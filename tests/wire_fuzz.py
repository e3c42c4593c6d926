"""Fuzz driver for the wire scanner, run by tests/test_wire_sanitized.py in a subprocess
against an AddressSanitizer + UndefinedBehaviorSanitizer build of gob_metrics/write/_wire.c
(the sanitizers must be preloaded into a fresh interpreter, so it cannot run in pytest's).

    python tests/wire_fuzz.py DIR_WITH_SANITIZED_MODULE SEED SECONDS
"""

from __future__ import annotations

import contextlib
import random
import sys
import time


def mutate(rng: random.Random, data: bytearray) -> bytes:
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(data) + 1)
        if op < 0.4 and pos < len(data):
            data[pos] = rng.randrange(256)
        elif op < 0.6:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op < 0.8 and pos < len(data):
            del data[pos:pos + rng.randint(1, 3)]
        elif op < 0.9:
            data[pos:pos] = data[rng.randrange(len(data) + 1):][:20]
        else:
            del data[pos:]
    return bytes(data)


def main() -> int:
    module_dir, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sys.path.insert(0, module_dir)
    import _wire  # the sanitized build, not the package's

    from gob_metrics.proto.prometheus import remote_pb2

    req = remote_pb2.WriteRequest()
    for i in range(8):
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value=f"m{i}")
        ts.labels.add(name="k" * i, value="v" * (i * 3))
        for j in range(4):
            ts.samples.add(value=j / 7, timestamp=-j if i % 2 else 10**12 + j)
        if i == 3:
            ts.exemplars.add(value=1.0, timestamp=5).labels.add(name="t", value="x")
    req.metadata.add(type=2, metric_family_name="m1", help="h", unit="u")
    bases = [req.SerializeToString(), b"\x0a\x04\x0a\x02\x0a\x00" * 5,
             b"\x0b" * 50 + b"\x0c" * 50]
    rng = random.Random(seed)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = mutate(rng, bytearray(rng.choice(bases)))
        for limit in (-1, 0, 3):
            with contextlib.suppress(ValueError):
                _wire.scan(data, limit)
        try:
            keys = _wire.scan(data)[0]
            _wire.resolve({k: b"x" * 16 for k in keys[::2]}, keys)
        except ValueError:
            pass
        n += 1
    print(f"fuzzed {n} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
