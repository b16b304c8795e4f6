#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: set up, lint, then pytest against throwaway
# MariaDB servers that the suite starts itself. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
