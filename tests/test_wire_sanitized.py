"""The wire scanner built with AddressSanitizer and UndefinedBehaviorSanitizer, fed mutated
remote_write bodies for a few seconds: any out-of-bounds read, use after free or undefined
behaviour in gob_metrics/write/_wire.c aborts the run with the sanitizer's report."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "gob_metrics" / "write" / "_wire.c"


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    if not os.path.isabs(out) or not os.path.exists(out):
        pytest.fail(f"gcc has no {name} (Debian: libgcc-12-dev); cannot build the sanitized "
                    "scanner")
    return out


def test_scanner_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = tmp_path / f"_wire{suffix}"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-shared", "-fPIC",
         f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(target)],
        check=True, timeout=120)
    env = {**os.environ,
           "LD_PRELOAD": f"{_runtime('libasan.so')}:{_runtime('libubsan.so')}",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(REPO / "tests" / "wire_fuzz.py"), str(tmp_path),
                          "20261126", "8"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Sanitizer" not in run.stderr, run.stderr[-3000:]
    assert int(run.stdout.split()[1]) > 1000  # it really ran
