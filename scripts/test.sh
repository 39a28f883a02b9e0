#!/usr/bin/env bash
# make test: install what the suite needs, lint and type-check, then run every test.
# The control-plane tests run on SQLite and on PostgreSQL (127.0.0.1:5432, database
# `test`, trust auth) when it is reachable; CI requires it (CORRAL_REQUIRE_POSTGRES=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "• ruff"
.venv/bin/ruff check corral control_plane byoc_agent billing infra tests bench
echo "• mypy --strict"
.venv/bin/mypy
echo "• pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
