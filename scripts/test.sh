#!/usr/bin/env bash
# The README's test command: install what the tests need (Debian packages as root, a
# virtualenv), lint, and run the whole test suite. Services (Prometheus, vmagent,
# redis-server, clickhouse-server) are started by the tests on 127.0.0.1 and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

# Debian packages of the real programs the tests run against.
declare -A bins=(
  [prometheus]=/usr/bin/prometheus
  [victoria-metrics]=/usr/bin/vmagent
  [redis-server]=/usr/bin/redis-server
  [clickhouse-server]=/usr/sbin/clickhouse-server
)
missing=()
for pkg in "${!bins[@]}"; do
  [ -x "${bins[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing packages ${missing[*]}: run as root on Debian, or install them" >&2
    exit 1
  fi
  echo "== apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# Installing a package must not leave its service running: the tests own their servers.
for svc in prometheus redis-server clickhouse-server victoria-metrics; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

echo "== python environment"
bash scripts/setup.sh test
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
echo "== done in $(( $(date +%s) - start ))s (pytest exit $rc)"
exit "$rc"
