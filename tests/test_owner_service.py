"""The owner service as its own process behind gRPC: TLS, mutual TLS, refusals as gRPC errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distiller_node.client import OwnerClient, OwnerRefused
from owner_node.config import OwnerConfig, ServiceConfig
from owner_node.ledger import Ledger
from shared.wire.messages import DescribeRequest, FeatureReply
from shared.wire.protocol import decode, encode
from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import OwnerCallError
from tests.conftest import feature_request
from tests.owner_process import ROOT, encode_budget, tls_owner_fixture

tls_owner = tls_owner_fixture(epsilon=3.0, max_message_bytes=200_000)


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
        channel.call("Release", b"garbage\xff")
    assert err.value.code == "bad_message"
    with pytest.raises(OwnerCallError) as err:
        channel.call("Release", b"DPDM garbage")  # version 1's framing
    assert err.value.code == "old_wire_format" and "version 1" in err.value.message
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
