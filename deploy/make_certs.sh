#!/usr/bin/env bash
# Makes the CA, TLS certificates and SuperNode auth keys for a deployment.
# Usage: deploy/make_certs.sh --out certs --host superlink.example.org --host 10.0.0.5 --owner a --owner b
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${DPDISTILL_VENV:-.venv}/bin/python" -m deploy.certs "$@"
