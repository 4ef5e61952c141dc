#!/usr/bin/env bash
# Installs what the project needs, idempotently: uv, the locked environment (.venv) and the
# Fashion-MNIST data (Debian package dataset-fashion-mnist when apt is available).
# Sourced by simulate.sh and test.sh; safe to run by hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.9
if command -v uv >/dev/null 2>&1; then
    UV=$(command -v uv)
else
    if [ ! -x .tools/bin/uv ]; then
        echo "[setup] installing uv $UV_VERSION into .tools/" >&2
        python3 -m venv .tools
        .tools/bin/python -m pip install --quiet "uv==$UV_VERSION"
    fi
    UV=$PWD/.tools/bin/uv
fi

# The lock file pins every package; torch 2.13.0 and torchvision 0.28.0 come from PyPI so that
# they import together. Use the machine's python3 when it is new enough.
PY_ARGS=()
if python3 -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
    PY_ARGS=(--python "$(command -v python3)")
fi
echo "[setup] syncing the locked environment (.venv); the first time downloads about 5 GB" >&2
"$UV" sync --frozen --extra dev "${PY_ARGS[@]}" >&2

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -f "${DPDISTILL_DATA_CACHE:-$HOME/.cache/dpdistill}/FashionMNIST/raw/train-images-idx3-ubyte" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
        echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >&2 \
            || echo "[setup] WARNING: could not install dataset-fashion-mnist; pass --data-root DIR with the IDX files" >&2
    else
        echo "[setup] NOTE: Fashion-MNIST not installed; pass --data-root DIR with the IDX files" >&2
    fi
fi
