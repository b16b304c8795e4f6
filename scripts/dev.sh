#!/usr/bin/env bash
# `dagster dev` from the repo root, with instance state kept under .dagster_home/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export DAGSTER_HOME="$PWD"
exec .venv/bin/dagster dev "$@"
