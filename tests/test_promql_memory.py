"""The allocator thresholds the query engine sets (glibc only)."""

from __future__ import annotations

import ctypes.util

import pytest

from gob_metrics.promql import memory


def test_keep_freed_memory_is_applied_once() -> None:
    libc = ctypes.util.find_library("c")
    if not libc or not hasattr(ctypes.CDLL(libc), "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert memory.keep_freed_memory()
    assert memory.keep_freed_memory()  # idempotent
