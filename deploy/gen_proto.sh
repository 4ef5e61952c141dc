#!/usr/bin/env bash
# Regenerates the gRPC stubs from shared/wire/rpc/owner.proto (grpcio-tools is a dev dependency).
# The stubs are committed so that a relay or owner host needs no compiler; a test checks they match.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. shared/wire/rpc/owner.proto
