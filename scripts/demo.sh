#!/usr/bin/env bash
# Quick start: set up, start a throwaway MariaDB source and target under .demo/ with sample
# data matching tables.json, and sync every table once. Run it again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/mysqlsync-dagster demo
set -a
# shellcheck disable=SC1091
. .demo/demo.env
set +a
# the same Dagster home as scripts/dev.sh: the UI then shows this first load and its checks
export DAGSTER_HOME="$PWD"
.venv/bin/mysqlsync-dagster sync "$@"
