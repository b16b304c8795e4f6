#!/usr/bin/env bash
# Set up a checkout on a fresh machine: the virtualenv with the pinned versions of
# requirements.lock (the ones CI tests), this package (editable), and the MariaDB (and
# PostgreSQL) server binaries the demo and the tests start. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the dependencies changed since the last install. The lock holds every
# dependency, dev tools included (refresh it with ./scripts/lock.sh); the package goes in
# without resolving anything, so nothing unpinned is added.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] \
  || [ requirements.lock -nt .venv/.installed ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  if ! broken=$(.venv/bin/python -m pip check --disable-pip-version-check 2>&1); then
    echo "$broken" >&2
    echo "requirements.lock does not satisfy pyproject.toml: refresh it with ./scripts/lock.sh" >&2
    exit 1
  fi
  touch .venv/.installed
fi
# The package's bytecode, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set
# (Docker images, CI), every process would otherwise compile its ~40 modules again (60 ms).
.venv/bin/python -m compileall -q mysqlsync_dagster

missing=()
if ! PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mariadbd >/dev/null 2>&1; then
  missing+=(mariadb-server)
fi
# The tests of the production instance config start a throwaway PostgreSQL with initdb.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "not installed: ${missing[*]}; install with 'sudo apt-get install ${missing[*]}'" >&2
    exit 1
  fi
  echo "installing ${missing[*]} from Debian's packages..." >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
