# The two commands the README opens with. Both install what they need.
.PHONY: up down status test lint bench bench-microvm deps

up:
	bash scripts/up.sh

down:
	bash scripts/down.sh

status:
	.venv/bin/python -m corral.devstack status

test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check corral control_plane byoc_agent billing infra tests bench
	.venv/bin/mypy

bench:
	bash scripts/bootstrap.sh && .venv/bin/python -m bench.sandbox_latency

# microVM boot, restore vs cold create, warm pools: each against its raw baseline (root).
bench-microvm:
	bash scripts/bootstrap.sh && .venv/bin/python -m bench.instant_sandboxes
