#!/usr/bin/env bash
# Cloud operator: tell the flwr CLI where the SuperLink is and which CA signed it; then register
# each hospital's SuperNode public key. Usage: connect.sh PUBKEY...   (keys from the hospitals)
#   FLWR_HOME          the flwr CLI's folder (its config.toml is written here)
#   SUPERLINK_ADDRESS  host:port of the SuperLink;  CA  the CA certificate (ca.pem)
#   FEDERATION         connection name (default dpdistill)
set -euo pipefail
source "$(dirname "$0")/common.sh"
need FLWR_HOME SUPERLINK_ADDRESS CA
FEDERATION=${FEDERATION:-dpdistill}
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "$FEDERATION"

[superlink.$FEDERATION]
address = "$SUPERLINK_ADDRESS"
root-certificates = "$(cd "$(dirname "$CA")" && pwd)/$(basename "$CA")"
TOML
export FLWR_HOME
for key in "$@"; do
    flwr supernode register "$key" "$FEDERATION"
done
