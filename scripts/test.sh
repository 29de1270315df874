#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian/Ubuntu machine, then runs them.
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -k relay   extra arguments go to pytest
#   ./scripts/test.sh --db=both  database tests on SQLite and on a throwaway PostgreSQL (CI does)
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the real-world tests drive (nginx, Chromium, a systemd container host, wrk for the
# benchmark tests, ip for network namespaces, valgrind for the instruction counts, and
# PostgreSQL's binaries: --db=postgresql|both starts a throwaway cluster of its own; pebble, Let's
# Encrypt's test CA, and certbot for the custom-domain tests).
APT_PACKAGES=(nginx-light chromium debootstrap systemd-container openssh-server openssh-client sqlite3 cron curl openssl systemd postgresql wrk iproute2 valgrind pebble certbot)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: missing system packages (tests needing them will skip): ${missing[*]}" >&2
  fi
fi
# The distribution's nginx and PostgreSQL units may start on install; tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
if command -v systemctl >/dev/null && systemctl is-active --quiet postgresql 2>/dev/null; then systemctl stop postgresql || true; fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[server,test]'
# tests/client_install installs the client into fresh Python 3.9 venvs with no network: its one
# dependency there (tomli), and the tools its pure tests run with on 3.9, come from this
# wheelhouse, outside the checkout.
CLIENT_WHEELHOUSE=.venv/client-wheelhouse
for tool in tomli pytest hypothesis h11 httptools exceptiongroup; do
  if ! ls "$CLIENT_WHEELHOUSE/$tool"-*.whl >/dev/null 2>&1; then
    .venv/bin/pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.9 \
      -d "$CLIENT_WHEELHOUSE" 'tomli>=1.1' 'pytest>=8' 'hypothesis>=6' 'h11>=0.14' 'httptools>=0.6' \
      'exceptiongroup>=1'   # pytest's and hypothesis' on Pythons before 3.11 (pip reads markers as for this one)
    break
  fi
done

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that is a failure here, not a pass.
exit $rc
