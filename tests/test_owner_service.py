"""The owner service as its own process behind gRPC: TLS, mutual TLS, refusals as gRPC errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.certs import make_certs
from distiller_node.client import OwnerClient, OwnerRefused
from owner_node.config import OwnerConfig, ServiceConfig, write_config
from owner_node.ledger import Ledger
from shared.protocol import BudgetRequest, DescribeRequest, FeatureReply, decode, encode
from shared.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.rpc.errors import OwnerCallError
from tests.conftest import feature_request, make_owner_config

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_owner_service(config_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "owner-serve", "--config", str(config_path)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(channel: OwnerChannel, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"owner service exited: {log.read_text()[-2000:]}")
        try:
            channel.call("Budget", encode_budget())
            return
        except OwnerCallError as exc:
            if exc.code != "owner_unavailable":
                raise
            time.sleep(0.3)
    raise AssertionError("owner service never became ready")


def encode_budget() -> bytes:
    return encode(BudgetRequest())


@pytest.fixture(scope="module")
def tls_owner(tmp_path_factory):
    """One owner service process with mutual TLS, shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("tls_owner")
    certs = folder / "certs"
    make_certs(certs, ["127.0.0.1", "localhost"], ["a"])
    port = free_port()
    config = replace(
        make_owner_config(folder / "owner", epsilon=3.0, max_message_bytes=200_000),
        service=ServiceConfig(
            listen=f"127.0.0.1:{port}",
            tls_cert=certs / "owner-a.pem",
            tls_key=certs / "owner-a.key",
            client_ca=certs / "ca.pem",
        ),
    )
    config_path = folder / "owner" / "owner.toml"
    write_config(config_path, config)
    log = folder / "owner.log"
    proc = start_owner_service(config_path, log)
    endpoint = OwnerEndpoint(
        f"127.0.0.1:{port}", str(certs / "ca.pem"), str(certs / "relay-a.pem"), str(certs / "relay-a.key")
    )
    channel = OwnerChannel(endpoint, timeout_s=60)
    wait_ready(channel, proc, log)
    yield config, endpoint, channel, proc
    proc.terminate()
    proc.wait(timeout=30)
    channel.close()


def test_release_over_mutual_tls_is_recorded(tls_owner) -> None:
    config, _, channel, _ = tls_owner
    client = OwnerClient(channel.call, "a")
    info = client.describe()
    assert info.owner_id == "test-owner" and info.limits["max_message_bytes"] == 200_000
    reply, raw = client.release(feature_request(None, "grpc-1"))
    assert isinstance(reply, FeatureReply) and reply.noisy_sums.shape == (2, 4, 6)
    ledger = Ledger(config.ledger_path)
    try:
        row = {r.request_id: r for r in ledger.rows()}["grpc-1"]
        assert row.state == "released"
    finally:
        ledger.close()
    # The same id again is answered from the ledger: identical bytes, nothing spent twice.
    assert client.release(feature_request(None, "grpc-1"))[1] == raw
    assert client.budget().num_draws == 2


def test_refusals_arrive_as_grpc_errors_with_their_code(tls_owner) -> None:
    _, _, channel, proc = tls_owner
    client = OwnerClient(channel.call, "a")
    with pytest.raises(OwnerRefused) as exc:
        client.release(feature_request(None, "too-noisy-not", noise_multiplier=0.01))
    assert exc.value.code == "noise_too_low"
    with pytest.raises(OwnerRefused) as exc:
        client.release(feature_request(None, "greedy", draws=50, noise_multiplier=0.5))
    assert exc.value.code == "budget_exceeded" and "budget epsilon=3.0" in str(exc.value)
    # The raw gRPC status is meaningful to any gRPC client, not only ours.
    with pytest.raises(OwnerCallError) as err:
        channel.call("Describe", encode(feature_request(None, "wrong-rpc")))
    assert err.value.code == "wrong_method"
    with pytest.raises(OwnerCallError) as err:
        channel.call("Release", b"DPDM garbage")
    assert err.value.code == "bad_message"
    # Larger than the owner's configured max_message_bytes: gRPC refuses it before the service sees it.
    with pytest.raises(OwnerCallError) as err:
        channel.call("Release", b"x" * 300_000)
    assert err.value.code == "message_too_large"
    assert proc.poll() is None
    assert client.describe().owner_id == "test-owner"  # still serving


def test_a_client_without_a_certificate_is_turned_away(tls_owner) -> None:
    _, endpoint, _, _ = tls_owner
    anonymous = OwnerChannel(OwnerEndpoint(endpoint.address, endpoint.root_cert), timeout_s=10)
    with pytest.raises(OwnerCallError) as err:
        anonymous.call("Describe", encode_budget())
    assert err.value.code in ("owner_unavailable", "unauthenticated", "rpc_failed")
    anonymous.close()
    plaintext = OwnerChannel(OwnerEndpoint(endpoint.address), timeout_s=10)
    with pytest.raises(OwnerCallError) as err:
        plaintext.call("Describe", encode(DescribeRequest()))
    assert err.value.code == "owner_unavailable"
    plaintext.close()


def test_listening_off_loopback_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        ServiceConfig(listen="0.0.0.0:50051")
    with pytest.raises(ValueError, match="not a loopback address"):
        OwnerEndpoint("10.1.2.3:50051")
    (tmp_path / "owner.toml").write_text(
        (ROOT / "deploy" / "owner.example.toml").read_text().replace('listen = "127.0.0.1:50051"', 'listen = ":50051"')
    )
    with pytest.raises(ValueError, match="TLS|tls_cert"):
        OwnerConfig.load(tmp_path / "owner.toml")


def test_wire_reply_decodes_to_the_same_message(tls_owner) -> None:
    _, _, channel, _ = tls_owner
    info = decode(channel.call("Describe", encode(DescribeRequest())))
    assert info.class_names == ("class0", "class1", "class2", "class3")


def test_the_relay_imports_neither_torch_nor_the_owner_node() -> None:
    code = (
        "import sys; import deploy.flower_app.dpdistill_flower.client_app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'owner_node', 'opacus')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
