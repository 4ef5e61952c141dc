#!/usr/bin/env bash
# CI's container check (its own slow step; .ci/run calls it after the test suites). As a hospital's
# operator would, with no container registry: podman from Debian's packages, a Debian base made with
# debootstrap, the three images built from deploy/containers/Dockerfile; then tests/test_containers.py
# starts the owner service container and talks to it over mutual TLS with the project's client.
# Skips (exit 0, saying why) where podman cannot run or less than MIN_FREE_GB of disk is free.
# Its podman storage lives in a folder of its own (WORK) and is reset and removed at the end.
#   WORK         scratch folder (default /var/tmp/dpdistill-containers): 6.4 GB for the images, with a
#                peak of about 23 GB while podman commits the owner's 6 GB environment layer
#   MIN_FREE_GB  skip below this much free disk at WORK (default 25)
#   KEEP=1       keep the images and WORK afterwards (to look at them)
#   PYTHON, UV   the project's Python and uv (default: .venv/bin/python; uv on PATH, else .tools/bin/uv)
#   TORCH_CPU_WHEELS  a folder holding torch-2.13.0+cpu-*.whl (PyPI has none): also build the CPU-only
#                owner image (TORCH=cpu) and run the owner checks on it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
WORK=${WORK:-/var/tmp/dpdistill-containers}
MIN_FREE_GB=${MIN_FREE_GB:-25}
say() { echo "[containers] $*" >&2; }
skip() { say "SKIPPED: $*"; rmdir "$WORK" 2>/dev/null || true; exit 0; }
START=$(date +%s)
elapsed() { echo "$(($(date +%s) - START)) s"; }

# 1. podman, runc and debootstrap from Debian's packages, when missing and apt is usable.
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (Debian packages)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 \
            || skip "could not install ${missing[*]} with apt-get"
    else
        skip "${missing[*]} missing and apt-get not usable as root here"
    fi
fi
[ "$(id -u)" = 0 ] || skip "run as root (debootstrap and rootful podman)"

mkdir -p "$WORK"
free_gb=$(($(df -Pk "$WORK" | awk 'NR == 2 {print $4}') / 1024 / 1024))
[ "$free_gb" -ge "$MIN_FREE_GB" ] || skip "only $free_gb GB free at $WORK; the builds peak at about 23 GB (MIN_FREE_GB=$MIN_FREE_GB)"

# 2. podman settings these VMs need as root, and storage of its own so that cleaning up touches
#    nothing else on the machine.
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
CONF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: images and $WORK kept"; return; fi
    podman system reset -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
    say "cleaned up (podman system reset, $WORK removed) after $(elapsed)"
}
trap cleanup EXIT
podman info >/dev/null 2>"$WORK/podman-info.err" || skip "podman cannot run here: $(tail -n 3 "$WORK/podman-info.err")"

# 3. A Debian base made with debootstrap (bookworm, minimal), imported as an image.
if ! podman image exists localhost/dpdistill-debian-base; then
    say "debootstrap bookworm (minbase) into $WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
    tar -C "$WORK/rootfs" -c . | podman import --quiet - localhost/dpdistill-debian-base >/dev/null
    rm -rf "$WORK/rootfs"
    say "base image ready after $(elapsed)"
fi

# 4. The images. Downloads from inside a build pass through this machine's TLS settings: its CA
#    bundle is mounted for the build only; the host's uv cache too, when there is one, so that the
#    locked wheels are not downloaded again (neither ends up in an image).
build_args=(--build-arg BASE_IMAGE=localhost/dpdistill-debian-base)
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca" ]; then
    build_args+=(-v "$ca:/run/build-ca.pem:ro" --build-arg SSL_CERT_FILE=/run/build-ca.pem --build-arg PIP_CERT=/run/build-ca.pem)
fi
uv=${UV:-$(command -v uv || echo "$REPO/.tools/bin/uv")}
if [ -x "$uv" ] && uv_cache=$("$uv" cache dir 2>/dev/null) && [ -d "$uv_cache" ]; then
    build_args+=(-v "$uv_cache:/root/.cache/uv")
fi
build() {  # build TARGET IMAGE [extra podman build arguments]
    local target=$1 image=$2 t0
    t0=$(date +%s)
    say "building $image"
    podman build --quiet -f deploy/containers/Dockerfile --target "$target" -t "$image" \
        "${build_args[@]}" "${@:3}" . >"$WORK/build-$image.log" 2>&1 || { tail -n 40 "$WORK/build-$image.log" >&2; exit 1; }
    say "$image built in $(($(date +%s) - t0)) s"
}
for target in owner supernode cloud; do build "$target" "dpdistill-$target"; done
if [ -n "${TORCH_CPU_WHEELS:-}" ]; then
    build owner dpdistill-cpu-owner --build-arg TORCH=cpu --build-arg TORCH_CPU_FIND_LINKS=/run/torch-cpu-wheels \
        -v "$TORCH_CPU_WHEELS:/run/torch-cpu-wheels:ro"
fi
podman images --format '{{.Repository}} {{.Size}}' | grep dpdistill >&2
say "disk used by the storage: $(du -sh "$WORK/storage" | cut -f1)"

# 5. Run them: owner service over mutual TLS, read-only code, compiled bytecode, no caches.
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
DPDISTILL_CONTAINER_IMAGES=dpdistill "$PYTHON" -m pytest -q -p no:cacheprovider -m containers tests/test_containers.py
if [ -n "${TORCH_CPU_WHEELS:-}" ]; then
    say "the CPU-only owner image"
    DPDISTILL_CONTAINER_IMAGES=dpdistill-cpu "$PYTHON" -m pytest -q -p no:cacheprovider -m containers \
        tests/test_containers.py -k "owner_container or cannot_write or (own_uid and owner)"
fi
say "passed in $(elapsed)"
