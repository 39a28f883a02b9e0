#!/usr/bin/env bash
# make up: install, build the base template, start nats-server + control plane + agent,
# run a smoke sandbox, write .corral/dev.env. A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m corral.devstack up
