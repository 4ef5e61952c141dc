#!/usr/bin/env bash
# Hospital: the Flower SuperNode. It only dials out to the SuperLink, and the relay ClientApp it
# runs talks to the owner service at OWNER_ADDRESS, which the hospital sets here (never the cloud).
# Run it as a user (or container) with no access to the private data or the ledger; when started
# as root it drops every capability, so root's permission bypass is gone too.
#   CA, NODE_KEY        CA certificate of the SuperLink; this SuperNode's private auth key (OpenSSH)
#   SUPERLINK_ADDRESS   host:port of the SuperLink
#   OWNER_ADDRESS       host:port of the owner service; OWNER_CA, RELAY_CERT, RELAY_KEY for its TLS
#                       (any path: spaces, quotes, non-ASCII; checked readable by this user before start)
#   RUNTIME_PORT        local port of the SuperNode's runtime API (default 9094; one per SuperNode)
#   FLWR_HOME           where Flower keeps the apps it runs
set -uo pipefail
source "$(dirname "$0")/common.sh"
need CA NODE_KEY SUPERLINK_ADDRESS OWNER_ADDRESS FLWR_HOME
export FLWR_HOME
mkdir -p "$FLWR_HOME"
sandbox=()
if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        sandbox=(setpriv --bounding-set=-all --inh-caps=-all --no-new-privs)
    else
        echo "supernode.sh: WARNING: running as root without setpriv (util-linux); run as an unprivileged user" >&2
    fi
fi
# The relay's settings as Flower's --node-config parser reads them back exactly (shared/wire/rpc/relay_config.py
# escapes every character that parser could cut at), after checking that this user, with the
# capabilities the SuperNode will have, can read and use the TLS files.
export OWNER_ADDRESS OWNER_CA RELAY_CERT RELAY_KEY
node_config=$(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${sandbox[@]}" python -m shared.wire.rpc.relay_config) || exit 2
# After a crash the SuperLink refuses the same node until it has missed its heartbeats (about a
# minute; "Failed to activate SuperNode", Flower exit code 305, process status 1), so a failed
# start is retried every 5 s, up to RETRIES times (default 36: three minutes).
tries=0
while true; do
    "${sandbox[@]}" flower-supernode --root-certificates "$CA" --superlink "$SUPERLINK_ADDRESS" \
        --auth-supernode-private-key "$NODE_KEY" --port "${RUNTIME_PORT:-9094}" --node-config "$node_config"
    rc=$?
    tries=$((tries + 1))
    if [ "$rc" = 0 ] || [ "$tries" -ge "${RETRIES:-36}" ]; then exit "$rc"; fi
    echo "supernode.sh: the SuperNode stopped (status $rc); retrying in 5 s ($tries/${RETRIES:-36})" >&2
    sleep 5
done
