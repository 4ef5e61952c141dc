#!/usr/bin/env bash
# Hospital: the Flower SuperNode. It only dials out to the SuperLink, and the relay ClientApp it
# runs talks to the owner service at OWNER_ADDRESS, which the hospital sets here (never the cloud).
# Run it as a user (or container) with no access to the private data or the ledger; when started
# as root it drops every capability, so root's permission bypass is gone too.
#   CA, NODE_KEY        CA certificate of the SuperLink; this SuperNode's private auth key (OpenSSH)
#   SUPERLINK_ADDRESS   host:port of the SuperLink
#   OWNER_ADDRESS       host:port of the owner service; OWNER_CA, RELAY_CERT, RELAY_KEY for its TLS
#   RUNTIME_PORT        local port of the SuperNode's runtime API (default 9094; one per SuperNode)
#   FLWR_HOME           where Flower keeps the apps it runs
set -uo pipefail
source "$(dirname "$0")/common.sh"
need CA NODE_KEY SUPERLINK_ADDRESS OWNER_ADDRESS FLWR_HOME
export FLWR_HOME
mkdir -p "$FLWR_HOME"
node_config="owner-address='$OWNER_ADDRESS'"
for pair in "owner-ca:${OWNER_CA:-}" "relay-cert:${RELAY_CERT:-}" "relay-key:${RELAY_KEY:-}"; do
    [ -n "${pair#*:}" ] && node_config+=" ${pair%%:*}='${pair#*:}'"
done
sandbox=()
if [ "$(id -u)" = 0 ]; then
    sandbox=(setpriv --bounding-set=-all --inh-caps=-all --no-new-privs)
fi
# After a crash the SuperLink refuses the same node until it has missed its heartbeats (about a
# minute): activation then fails with exit code 305, so wait and try again.
while true; do
    "${sandbox[@]}" flower-supernode --root-certificates "$CA" --superlink "$SUPERLINK_ADDRESS" \
        --auth-supernode-private-key "$NODE_KEY" --port "${RUNTIME_PORT:-9094}" --node-config "$node_config"
    rc=$?
    [ "$rc" = 305 ] || exit "$rc"
    echo "supernode.sh: the SuperLink does not yet accept this node again; retrying in 5 s" >&2
    sleep 5
done
