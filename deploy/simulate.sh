#!/usr/bin/env bash
# The main job: owner and distiller simulated in one process on Fashion-MNIST (DOS+SER,
# epsilon 1, delta 1e-5, 10 images per class). Extra arguments go to `dpdistill simulate`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/setup_env.sh
exec .venv/bin/dpdistill simulate "$@"
