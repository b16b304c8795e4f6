#!/usr/bin/env bash
# Refresh requirements.lock: every package of this project with its `dev` extra (which holds
# dagster-postgres) pinned for Python 3.11 on linux x86_64, the versions CI tests.
# scripts/bootstrap.sh installs from it, and the Dockerfile uses it as constraints.
#   ./scripts/lock.sh                            keep the current pins; add/drop what pyproject.toml changed
#   ./scripts/lock.sh --upgrade                  the newest versions pyproject.toml's ranges allow
#   ./scripts/lock.sh --upgrade-package dlt      one package (and what it needs)
# Then run ./scripts/test.sh (it reinstalls from the new lock) and commit the lock with the change.
# Uses uv from PATH (or $UV); without one, installs uv into a throwaway virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-$(command -v uv || true)}
if [ -z "$UV" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${PYTHON:-python3}" -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check uv
  UV=$tmp/venv/bin/uv
fi
"$UV" pip compile pyproject.toml --extra dev \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command ./scripts/lock.sh \
  --output-file requirements.lock "$@"
