#!/usr/bin/env bash
# make down: stop the agent, control plane, nats-server and sandboxes. State is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then echo "nothing to stop (no .venv)"; exit 0; fi
exec .venv/bin/python -m corral.devstack down
