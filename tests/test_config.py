"""Configuration: sources in order, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gob_metrics.config import ConfigError, describe, load_config, parse_bytes, parse_duration


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "gob.yaml"
    f.write_text("write:\n  batch_max_age: 1s\n  batch_max_samples: 5000\nserver:\n"
                 "  listen: 127.0.0.1:1000\n")
    cfg = load_config(f, env={"GOB_WRITE__BATCH_MAX_AGE": "250ms",
                              "GOB_SERVER__LISTEN": "127.0.0.1:2000"},
                      overrides={"server.listen": "127.0.0.1:3000"})
    assert cfg.write.batch_max_samples == 5000  # file
    assert cfg.write.batch_max_age == 0.25  # env beats file
    assert cfg.server.listen == "127.0.0.1:3000"  # flags beat env


@pytest.mark.parametrize(("yaml_text", "env", "message"), [
    ("write:\n  batch_max_agee: 1s\n", {}, "unknown setting write.batch_max_agee in config file"),
    ("write: 3\n", {}, "write in config file"),
    ("- a\n- b\n", {}, "must hold a mapping"),
    ("write: [\n", {}, "is not valid YAML"),
    ("write:\n  batch_max_age: soon\n", {}, "invalid value 'soon' for write.batch_max_age"),
    ("write:\n  max_request_bytes: lots\n", {}, "invalid value 'lots' for write.max_request_bytes"),
    ("write:\n  batch_max_samples: 0\n", {}, "invalid value 0 for write.batch_max_samples"),
    ("write:\n  batch_max_samples: 1.5\n", {}, "for write.batch_max_samples: expected an integer"),
    ("server:\n  log_level: loud\n", {}, "server.log_level"),
    ("server:\n  listen: nowhere\n", {}, "server.listen"),
    ("storage:\n  database: 'x; DROP'\n", {}, "storage.database"),
    ("storage:\n  clickhouse:\n    url: http://x\n", {}, "storage.clickhouse.url"),
    ("", {"GOB_WRITE__NOPE": "1"}, "unknown setting write.nope in environment variable"),
    ("", {"GOB_LIMITS__CREATION_GRACE_PERIOD": "-1"}, "limits.creation_grace_period"),
    ("write:\n  max_pending_samples: 10\n  batch_max_samples: 100\n", {},
     "write.max_pending_samples"),
], ids=["unknown-key", "not-mapping", "top-list", "bad-yaml", "bad-duration", "bad-bytes",
        "zero", "float-int", "log-level", "listen", "database", "ch-url", "env-unknown",
        "env-negative", "pending-lt-batch"])
def test_errors_name_the_key(tmp_path: Path, yaml_text: str, env: dict[str, str],
                             message: str) -> None:
    f = tmp_path / "gob.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(f, env=env)
    assert message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("10m", 600), ("1h30m", 5400), ("2", 2), (1.5, 1.5), ("1d", 86400)])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "n"), [
    ("64MiB", 64 << 20), ("10MB", 10_000_000), (1024, 1024), ("1k", 1000), ("2KiB", 2048)])
def test_bytes(text: str | int, n: int) -> None:
    assert parse_bytes(text) == n


def test_describe_lists_every_key() -> None:
    keys = [k for k, _, _ in describe()]
    assert "storage.clickhouse.url" in keys and "write.batch_max_age" in keys
    assert len(keys) == len(set(keys))
