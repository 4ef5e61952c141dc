#!/usr/bin/env bash
# Cloud: start a distillation on the SuperLink and wait for it (the ServerApp runs the distiller).
# Usage: distiller.sh "out='/srv/runs/x' owners=2 preset='default'"   (keys: deploy/flower_app/pyproject.toml)
#   FLWR_HOME   the flwr CLI folder prepared by connect.sh;  FEDERATION (default dpdistill)
set -euo pipefail
source "$(dirname "$0")/common.sh"
need FLWR_HOME
export FLWR_HOME
cd "$REPO"
exec python -m deploy.cli flower-run --federation "${FEDERATION:-dpdistill}" --run-config "${1:-}"
