#!/usr/bin/env bash
# Sets up a venv and runs the whole appliance on loopback (web :8000, tunnels :8080,
# domain localhost).  Extra arguments go to `intunnel serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[server]'
exec .venv/bin/intunnel serve "$@"
