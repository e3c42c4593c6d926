#!/usr/bin/env bash
# Creates .venv and installs gob-metrics into it (editable), with optional extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test,bench
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "gob-metrics needs Python 3.11 or newer as $PY (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian splits venv/ensurepip into python3-venv.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing python3-venv with apt-get" >&2
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
      rm -rf .venv
      "$PY" -m venv .venv
    else
      echo "cannot create a virtualenv: install python3-venv" >&2
      exit 1
    fi
  fi
fi
# The remote_write wire scanner is a C extension built at install: it needs a C compiler
# and Python.h (both present on Debian's Python images; installed here if missing).
has_headers() {
  "$PY" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
if ! command -v cc >/dev/null || ! has_headers; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing gcc and the Python headers with apt-get (for the C extension)" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev python3-dev >/dev/null
  else
    echo "gob-metrics builds one C extension: install a C compiler (gcc) and the Python" \
      "headers (python3-dev)" >&2
    exit 1
  fi
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 \
  | { grep -v "^WARNING: Location .* is ignored" || true; }
