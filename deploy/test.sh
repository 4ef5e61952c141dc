#!/usr/bin/env bash
# The test suite (default: everything not marked slow). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/setup_env.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
