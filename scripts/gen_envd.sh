#!/usr/bin/env bash
# Regenerate byoc_agent/dataplane/envd/{process,filesystem}/*_pb.py and *_connect.py from
# the .proto files beside them (envd's process and filesystem services; see ADR 0015).
# The generated modules are committed; run this only after changing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q -e ".[codegen]"
cd byoc_agent/dataplane/envd
../../../.venv/bin/python -m grpc_tools.protoc -I proto \
  --plugin=protoc-gen-py=../../../.venv/bin/protoc-gen-py \
  --plugin=protoc-gen-connectrpc=../../../.venv/bin/protoc-gen-connectrpc \
  --py_out=. --connectrpc_out=. \
  process/process.proto filesystem/filesystem.proto
echo "generated: $(ls process/*.py filesystem/*.py | tr '\n' ' ')"
