#!/usr/bin/env bash
# Hospital: the owner service, the only process that reads the private data and the ledger.
#   OWNER_CONFIG  the owner's TOML config (limits, budget, data, ledger, [service] address and TLS)
set -euo pipefail
source "$(dirname "$0")/common.sh"
need OWNER_CONFIG
exec python -m deploy.cli owner-serve --config "$OWNER_CONFIG"
