"""The C extensions built with AddressSanitizer and UndefinedBehaviorSanitizer and driven for
a few seconds each: the wire scanner with mutated remote_write bodies (tests/wire_fuzz.py),
the value encoder with random values and series ids checked against its Python model
(tests/values_fuzz.py). Any out-of-bounds access, use after free or undefined behaviour in
gob_metrics/write/_wire.c or _values.c aborts the run with the sanitizer's report."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    if not os.path.isabs(out) or not os.path.exists(out):
        pytest.fail(f"gcc has no {name} (Debian: libgcc-12-dev); cannot build the sanitized "
                    "scanner")
    return out


@pytest.mark.parametrize(("module", "driver", "counted"), [
    ("_wire", "wire_fuzz.py", 1000),
    ("_values", "values_fuzz.py", 10000),
])
def test_extension_under_address_and_undefined_behavior_sanitizers(
        tmp_path: Path, module: str, driver: str, counted: int) -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = tmp_path / f"{module}{suffix}"
    source = REPO / "gob_metrics" / "write" / f"{module}.c"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-ffp-contract=off", "-shared", "-fPIC",
         f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target)],
        check=True, timeout=120)
    env = {**os.environ,
           "LD_PRELOAD": f"{_runtime('libasan.so')}:{_runtime('libubsan.so')}",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(REPO / "tests" / driver), str(tmp_path),
                          "20261126", "8"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Sanitizer" not in run.stderr, run.stderr[-3000:]
    assert int(run.stdout.split()[1]) > counted  # it really ran
