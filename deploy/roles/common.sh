# Sourced by the role scripts: the installed environment and Flower's quiet settings.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${DPDISTILL_VENV:-$REPO/.venv}
# flower-superlink and flower-supernode start flower-superexec by name, so the venv must be on PATH.
export PATH="$VENV/bin:$PATH"
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
need() { for v in "$@"; do [ -n "${!v:-}" ] || { echo "$(basename "$0"): set $v" >&2; exit 2; }; done; }
