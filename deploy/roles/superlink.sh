#!/usr/bin/env bash
# Cloud: the Flower SuperLink. TLS on, only registered SuperNodes admitted, and it never installs
# an app's dependencies at run time (the distiller's environment is fixed by uv.lock).
#   CERTS   folder with ca.pem, superlink.pem, superlink.key (deploy/make_certs.sh)
#   STATE   folder for the SuperLink's database (node registrations survive restarts)
#   SUPERLINK_LISTEN  host:port to listen on (default 0.0.0.0:9093)
set -euo pipefail
source "$(dirname "$0")/common.sh"
need CERTS STATE
LISTEN=${SUPERLINK_LISTEN:-0.0.0.0:9093}
mkdir -p "$STATE"
exec flower-superlink \
    --ssl-ca-certfile "$CERTS/ca.pem" --ssl-certfile "$CERTS/superlink.pem" --ssl-keyfile "$CERTS/superlink.key" \
    --enable-supernode-auth --disable-runtime-dependency-installation \
    --host "${LISTEN%:*}" --port "${LISTEN##*:}" --database "$STATE/superlink.db"
