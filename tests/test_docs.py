"""The configuration reference in docs/ lists every key the code knows."""

from __future__ import annotations

from pathlib import Path

from gob_metrics.config import describe

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_config_key_is_documented() -> None:
    text = DOC.read_text()
    missing = [key for key, _, _ in describe() if f"| `{key}` |" not in text]
    assert missing == []
