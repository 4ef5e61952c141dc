"""The deployment images, built and run for real (issue 27). deploy/containers/ci_check.sh builds them
with podman from a Debian base made by debootstrap and then runs this module; without it (no
DPDISTILL_CONTAINER_IMAGES) every test here is skipped.

The owner service container answers Describe, a release and Budget over mutual TLS through the
project's own client and turns away a client without a certificate; its code is root's and read-only
to the service, compiled ahead (the container writes no bytecode), and no image keeps a download cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.certs import make_certs
from distiller_node.client import OwnerClient
from owner_node.config import ServiceConfig, write_config
from shared.wire.messages import FeatureReply
from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError
from tests.conftest import feature_request, make_owner_config
from tests.owner_process import encode_budget, free_port

PREFIX = os.environ.get("DPDISTILL_CONTAINER_IMAGES", "")
pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(not PREFIX, reason="run by deploy/containers/ci_check.sh, which builds the images"),
]
# Each image's user and uid (stable: keys and folders are given to these uids; see README).
USERS = {"owner": ("owner", 10001), "supernode": ("relay", 10002), "cloud": ("cloud", 10003)}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=600)


def in_image(target: str, script: str, user: str | None = None) -> str:
    who = ["--user", user] if user else []
    done = podman("run", "--rm", "--network", "none", *who, "--entrypoint", "sh", f"{PREFIX}-{target}", "-c", script)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def owner_container(tmp_path_factory) -> Iterator[tuple[str, OwnerEndpoint]]:
    """The owner image as a hospital runs it: config and TLS files read-only at /config, the private
    data read-only at /data, the ledger at /ledger; mutual TLS on a port published on loopback."""
    root = tmp_path_factory.mktemp("hospital")
    certs = root / "certs"
    make_certs(certs, ["127.0.0.1", "localhost", "owner-service"], ["a"])
    data, config_dir, ledger = root / "data", root / "owner", root / "ledger"
    host_config = make_owner_config(data, epsilon=3.0)  # writes private.npz and aux.npz into data/
    config_dir.mkdir()
    ledger.mkdir()
    shutil.move(data / "aux.npz", config_dir / "aux.npz")
    for name in ("owner-a.pem", "owner-a.key", "relay-ca-a.pem"):  # the owner role's folder from make_certs
        shutil.copy(certs / "owner-a" / name, config_dir / name)
    # The service's key and its ledger folder belong to the owner image's uid (README: keys per role).
    uid = USERS["owner"][1]
    os.chown(config_dir / "owner-a.key", uid, uid)
    os.chown(ledger, uid, uid)
    config = replace(
        host_config,
        data_path=Path("/data/private.npz"),
        aux_path=Path("/config/aux.npz"),
        ledger_path=Path("/ledger/ledger.sqlite"),
        service=ServiceConfig(
            listen="0.0.0.0:50051",
            tls_cert=Path("/config/owner-a.pem"),
            tls_key=Path("/config/owner-a.key"),
            client_ca=Path("/config/relay-ca-a.pem"),  # this owner's own relay CA
            client_names=("relay-a",),
        ),
    )
    write_config(config_dir / "owner.toml", config)
    port = free_port()
    name = f"dpdistill-owner-check-{port}"
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:50051",
        "-v", f"{config_dir}:/config:ro", "-v", f"{data}:/data:ro", "-v", f"{ledger}:/ledger",
        f"{PREFIX}-owner",
    )  # fmt: skip
    endpoint = OwnerEndpoint(
        f"127.0.0.1:{port}", str(certs / "ca.pem"), str(certs / "relay-a.pem"), str(certs / "relay-a.key")
    )
    channel = OwnerChannel(endpoint, timeout_s=10)
    try:
        deadline = time.time() + 180
        while True:
            try:
                channel.call("Budget", encode_budget())
                break
            except OwnerCallError as exc:
                running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                if exc.code != "owner_unavailable" or running != "true" or time.time() > deadline:
                    logs = podman("logs", name, check=False)
                    tail = (logs.stdout + logs.stderr)[-4000:]
                    raise AssertionError(f"owner container not serving ({exc}): {tail}") from exc
                time.sleep(1)
        yield name, endpoint
    finally:
        channel.close()
        podman("rm", "-f", name, check=False)


def test_the_owner_container_answers_and_releases_over_mutual_tls(owner_container) -> None:
    _, endpoint = owner_container
    channel = OwnerChannel(endpoint, timeout_s=120)
    client = OwnerClient(channel.call, "a")
    try:
        assert client.describe().owner_id == "test-owner"
        reply, raw = client.release(feature_request(None, "container-1"))
        assert isinstance(reply, FeatureReply) and reply.noisy_sums.shape == (2, 4, 6)
        assert client.release(feature_request(None, "container-1"))[1] == raw  # from the ledger, not spent again
        assert client.budget().num_draws == 2
    finally:
        channel.close()


def test_the_owner_container_turns_away_a_client_without_a_certificate(owner_container) -> None:
    _, endpoint = owner_container
    anonymous = OwnerChannel(OwnerEndpoint(endpoint.address, endpoint.root_cert), timeout_s=10)
    with pytest.raises(OwnerCallError):
        anonymous.call("Budget", encode_budget())
    anonymous.close()


def test_the_service_cannot_write_its_code_and_compiles_nothing(owner_container) -> None:
    name, _ = owner_container
    # As the service's user: nothing of the installed code is writable, and all of it is root's.
    assert podman("exec", name, "find", "/opt/dpdistill", "-writable").stdout.strip() == ""
    assert podman("exec", name, "find", "/opt/dpdistill", "!", "-user", "root").stdout.strip() == ""
    # After serving a release the container has written no bytecode: it was compiled at build time.
    changed = podman("diff", name).stdout.splitlines()
    assert not [line for line in changed if line.endswith(".pyc")], changed[:20]


@pytest.mark.parametrize("target", sorted(USERS))
def test_each_image_runs_as_its_own_uid_and_keeps_no_download_cache(target: str) -> None:
    user, uid = USERS[target]
    assert in_image(target, "id -un; id -u").split() == [user, str(uid)]
    leftovers = in_image(
        target,
        "find /root/.cache /root/.local /tmp /var/lib/apt/lists -type f 2>/dev/null | head -n 5;"
        "find /opt /root /home /tmp /var/cache -name '*.whl' -o -name '*.deb' -o -name '*.tar.gz' | head -n 5",
        user="root",
    )
    assert leftovers == ""
    # Bytecode is there for the code the image runs.
    module = "shared.wire.rpc.channel"
    probe = f"import importlib.util as u, os, {module} as m; print(os.path.exists(u.cache_from_source(m.__file__)))"
    assert in_image(target, f"python -c '{probe}'") == "True"


def test_the_relay_image_has_the_rpc_package_and_no_torch() -> None:
    # A plain package list once left shared.wire.rpc out of the install: the relay failed with
    # ModuleNotFoundError (Flower exit code 607).
    script = (
        "import sys, shared.wire.rpc.channel, deploy.flower_app.dpdistill_flower.client_app;"
        "assert 'torch' not in sys.modules; import importlib.util as u; print(u.find_spec('torch') is None)"
    )
    assert in_image("supernode", f'python -c "{script}"') == "True"
    assert in_image("supernode", "command -v flower-supernode") != ""


def test_the_cloud_image_has_the_superlink_and_the_server_app() -> None:
    assert in_image("cloud", "command -v flower-superlink") != ""
    assert in_image("cloud", 'python -c "import deploy.flower_app.dpdistill_flower.server_app"') == ""
