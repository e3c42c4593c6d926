#!/usr/bin/env bash
# The README's run command: set up and start gob-metrics on the embedded engine.
# Extra arguments go to `gob-metrics serve` (e.g. --listen 0.0.0.0:9201 --config gob.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gob-metrics serve --listen 127.0.0.1:9201 --data-dir ./data "$@"
