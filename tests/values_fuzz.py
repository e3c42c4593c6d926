"""Random differential test of the value encoder, run by tests/test_wire_sanitized.py in a
subprocess against an AddressSanitizer + UndefinedBehaviorSanitizer build of
gob_metrics/write/_values.c: every (mantissa, code) must equal tests/valuemodel.py's model
and decode to the value's exact bits, through table growth and capacity resets.

    python tests/values_fuzz.py DIR_WITH_SANITIZED_MODULE SEED SECONDS
"""

from __future__ import annotations

import random
import struct
import sys
import time


def value(rng: random.Random) -> float:
    kind = rng.random()
    if kind < 0.3:  # random bits: NaNs, infinities, subnormals, huge and tiny values
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if kind < 0.6:  # short decimals, both ways of computing them
        n, k = rng.randint(-(10**12), 10**12), rng.randint(0, 18)
        return n * float(f"1e-{k}") if rng.random() < 0.5 else n / float(f"1e{k}")
    if kind < 0.8:  # integers around 2^53 and multiples of powers of ten
        big = rng.randint(1, 999) * 10 ** rng.randint(0, 22)
        return float(rng.choice([2**53 + rng.randint(-9, 9), big]))
    return rng.choice([0.0, -0.0, rng.random(), -rng.random() * 1e-300])


def main() -> int:
    module_dir, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sys.path.insert(0, module_dir)
    import _values  # the sanitized build, not the package's
    import numpy as np

    from tests.valuemodel import bits, decode, model

    rng = random.Random(seed)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        capacity = rng.choice([1, 2, 7, 100, 5000])
        enc, state = _values.Encoder(capacity), {}
        pool = [rng.getrandbits(128).to_bytes(16, "little") for _ in range(rng.randint(1, 3000))]
        for _ in range(rng.randint(1, 5)):
            ids = [rng.choice(pool) for _ in range(rng.randint(0, 2000))]
            vals = [value(rng) for _ in ids]
            m, c = enc.encode(b"".join(ids), np.array(vals, np.float64))
            mantissas = np.frombuffer(m, np.int64).tolist()
            codes = np.frombuffer(c, np.int8).tolist()
            for i, (sid, v) in enumerate(zip(ids, vals, strict=True)):
                if len(state) >= capacity and sid not in state:
                    state.clear()  # the encoder forgets every series when full
                assert (mantissas[i], codes[i]) == model(state, sid, v), (v, mantissas[i], codes[i])
                assert bits(decode(mantissas[i], codes[i])) == bits(v), v
            n += len(ids)
            assert len(enc) <= capacity
    print(f"encoded {n} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
