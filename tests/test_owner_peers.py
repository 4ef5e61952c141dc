"""An owner answers only its own relay (issue 25, item 6), and a relay says why it was turned away.

One owner service process (owner ``a``, as an operator runs it) behind mutual TLS on loopback, with
the certificates ``deploy/make_certs.sh`` makes for two hospitals: hospital ``b``'s relay is refused
at the TLS handshake (``a`` trusts only its own relay CA), and a certificate that ``a``'s relay CA
signed under another name is refused by the name check, on every RPC of either API version.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.certs import _issue, make_certs
from deploy.flower_app.dpdistill_flower.client_app import answer
from owner_node.config import OwnerConfig, ServiceConfig, write_config
from shared.wire.messages import BudgetReport, BudgetRequest
from shared.wire.protocol import decode, encode
from shared.wire.rpc.channel import RPC_METHODS, V1_SERVICE, OwnerChannel, OwnerEndpoint
from shared.wire.rpc.errors import ERROR_CODE_KEY, OwnerCallError
from shared.wire.rpc.flower_records import pack_call, unpack_reply
from tests.conftest import make_owner_config
from tests.owner_process import free_port, start_owner_service, stop_owner_service, wait_ready


class Setup:
    def __init__(self, folder: Path):
        self.certs = folder / "certs"
        make_certs(self.certs, ["127.0.0.1", "localhost"], ["a", "b"])
        make_certs(folder / "elsewhere", ["127.0.0.1"], ["a"])  # another deployment's CA
        self.elsewhere = folder / "elsewhere"
        self.address = f"127.0.0.1:{free_port()}"
        self.config = replace(
            make_owner_config(folder / "owner"),
            service=ServiceConfig(
                listen=self.address,
                tls_cert=self.certs / "owner-a.pem",
                tls_key=self.certs / "owner-a.key",
                client_ca=self.certs / "relay-ca-a.pem",
                client_names=("relay-a",),
            ),
        )
        self.config_path = folder / "owner" / "owner.toml"
        write_config(self.config_path, self.config)
        self.log = folder / "owner.log"
        # A certificate from owner a's own relay CA, but for another name (say, a second tool).
        ca_key = serialization.load_pem_private_key((self.certs / "offline" / "relay-ca-a.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((self.certs / "relay-ca-a.pem").read_bytes())
        self.intruder = self._issue(folder, "intruder", "relay-intruder", ca_key, ca_cert)
        # One whose name imitates relay-a and would forge a log line if written as it is.
        self.forger = self._issue(folder, "forger", "relay-a\nINFO accepted relay-a", ca_key, ca_cert)

    @staticmethod
    def _issue(folder: Path, stem: str, name: str, ca_key, ca_cert) -> tuple[str, str]:
        sans = [] if "\n" in name else [name]  # a DNS name cannot hold a newline; the common name can
        cert, key = _issue(name, ca_key, ca_cert, sans, ExtendedKeyUsageOID.CLIENT_AUTH)
        (folder / f"{stem}.pem").write_bytes(cert)
        (folder / f"{stem}.key").write_bytes(key)
        return str(folder / f"{stem}.pem"), str(folder / f"{stem}.key")

    def endpoint(self, relay: str | None = "a", ca: Path | None = None) -> OwnerEndpoint:
        ca = ca or self.certs / "ca.pem"
        if relay is None:
            return OwnerEndpoint(self.address, str(ca))
        if relay in ("intruder", "forger"):
            return OwnerEndpoint(self.address, str(ca), *getattr(self, relay))
        return OwnerEndpoint(
            self.address, str(ca), str(self.certs / f"relay-{relay}.pem"), str(self.certs / f"relay-{relay}.key")
        )


@pytest.fixture(scope="module")
def owner_a(tmp_path_factory):
    setup = Setup(tmp_path_factory.mktemp("peers"))
    proc = start_owner_service(setup.config_path, setup.log)
    channel = OwnerChannel(setup.endpoint("a"), timeout_s=30)
    try:
        wait_ready(channel, proc, setup.log)
        yield setup
    finally:
        stop_owner_service(proc)
        channel.close()


def call(endpoint: OwnerEndpoint, method: str = "Budget") -> bytes:
    channel = OwnerChannel(endpoint, timeout_s=30)
    try:
        return channel.call(method, encode(BudgetRequest()))
    finally:
        channel.close()


def refusal(endpoint: OwnerEndpoint) -> OwnerCallError:
    with pytest.raises(OwnerCallError) as err:
        call(endpoint)
    return err.value


def test_the_owner_answers_its_own_relay(owner_a) -> None:
    assert isinstance(decode(call(owner_a.endpoint("a"))), BudgetReport)
    node_config = {
        "owner-address": owner_a.address,
        "owner-ca": str(owner_a.certs / "ca.pem"),
        "relay-cert": str(owner_a.certs / "relay-a.pem"),
        "relay-key": str(owner_a.certs / "relay-a.key"),
    }
    body, error = unpack_reply(answer(pack_call("Budget", encode(BudgetRequest())), node_config))
    assert error is None and isinstance(decode(body), BudgetReport)


def test_another_hospitals_relay_is_refused_at_the_handshake(owner_a) -> None:
    err = refusal(owner_a.endpoint("b"))
    assert err.code == "unauthenticated" and not err.retryable, err
    assert "does not accept the relay certificate" in err.message and "relay-b.pem" in err.message
    # Through the relay, as the distiller sees it: a code, at once.
    node_config = {
        "owner-address": owner_a.address,
        "owner-ca": str(owner_a.certs / "ca.pem"),
        "relay-cert": str(owner_a.certs / "relay-b.pem"),
        "relay-key": str(owner_a.certs / "relay-b.key"),
    }
    body, error = unpack_reply(answer(pack_call("Budget", encode(BudgetRequest())), node_config))
    assert body is None and error[0] == "unauthenticated"


def test_a_certificate_of_its_own_ca_under_another_name_is_refused_on_every_rpc(owner_a) -> None:
    err = refusal(owner_a.endpoint("intruder"))
    assert err.code == "peer_not_allowed" and not err.retryable
    assert "CN=relay-intruder" in err.message and "relay-a" not in err.message  # the allowed names stay private
    channel = OwnerChannel(owner_a.endpoint("intruder"), timeout_s=30)
    try:
        for method in RPC_METHODS:
            with pytest.raises(OwnerCallError) as each:
                channel.call(method, b"anything")
            assert each.value.code == "peer_not_allowed", method
        # Version 1's API is behind the same check (else it would answer old_wire_format to anyone).
        v1 = channel._channel.unary_unary(f"/{V1_SERVICE}/Describe")
        with pytest.raises(grpc.RpcError) as raw:
            v1(b"", timeout=30)
        assert raw.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert dict(raw.value.trailing_metadata())[ERROR_CODE_KEY] == "peer_not_allowed"
    finally:
        channel.close()
    log = owner_a.log.read_text()
    assert "peer not allowed: CN=relay-intruder SAN=relay-intruder from ipv4:127.0.0.1:" in log
    # The probe is in the owner's audit trail too (issue 25 item 8), with who sent it.
    from owner_node.config import OwnerConfig
    from owner_node.ledger import Ledger

    ledger = Ledger(OwnerConfig.load(owner_a.config_path).ledger_path)
    refused = [r for r in ledger.audit_rows() if r.code == "peer_not_allowed"]
    ledger.close()
    assert len(refused) >= len(RPC_METHODS) + 2 and all("CN=relay-intruder" in r.peer for r in refused)


def test_a_name_imitating_the_relay_is_refused_and_logged_escaped(owner_a) -> None:
    err = refusal(owner_a.endpoint("forger"))
    assert err.code == "peer_not_allowed"
    log = owner_a.log.read_text()
    assert "peer not allowed: CN=relay-a\\nINFO accepted relay-a from ipv4:127.0.0.1:" in log
    assert "\nINFO accepted relay-a" not in log


def test_a_relay_without_a_certificate_or_trusting_another_ca_says_so(owner_a) -> None:
    err = refusal(owner_a.endpoint(None))
    assert err.code == "unauthenticated" and "presented no certificate" in err.message
    err = refusal(owner_a.endpoint("a", ca=owner_a.elsewhere / "ca.pem"))
    assert err.code == "unauthenticated" and "does not vouch for" in err.message


def test_an_owner_that_is_down_is_still_worth_retrying(owner_a) -> None:
    err = refusal(replace(owner_a.endpoint("a"), address=f"127.0.0.1:{free_port()}"))
    assert err.code == "owner_unavailable" and err.retryable


def test_mutual_tls_needs_the_names_of_the_clients_it_answers(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_certs(certs, ["127.0.0.1"], ["a"])
    tls = dict(tls_cert=certs / "owner-a.pem", tls_key=certs / "owner-a.key")
    with pytest.raises(ValueError, match="client_names is empty"):
        ServiceConfig(listen="10.0.0.5:50051", client_ca=certs / "relay-ca-a.pem", **tls)
    with pytest.raises(ValueError, match="client_names needs client_ca"):
        ServiceConfig(listen="10.0.0.5:50051", client_names=("relay-a",), **tls)
    # Server-only TLS off loopback would let any caller that reaches the port spend the budget.
    with pytest.raises(ValueError, match="any caller that reaches it could spend"):
        ServiceConfig(listen="10.0.0.5:50051", **tls)
    for listen in (50051, None, ["127.0.0.1:50051"]):
        with pytest.raises(ValueError, match="listen must be an address"):
            ServiceConfig(listen=listen)
    for bad in (("*",), (" relay-a",), ("",), "relay-a", (1,)):
        with pytest.raises(ValueError, match="client_names"):
            ServiceConfig(listen="10.0.0.5:50051", client_ca=certs / "relay-ca-a.pem", client_names=bad, **tls)
    # owner.toml round trip: the names are read as a tuple and written back.
    config = replace(
        make_owner_config(tmp_path / "owner"),
        service=ServiceConfig(
            listen="10.0.0.5:50051", client_ca=certs / "relay-ca-a.pem", client_names=("relay-a", "relay-a2"), **tls
        ),
    )
    write_config(tmp_path / "owner.toml", config)
    assert OwnerConfig.load(tmp_path / "owner.toml").service.client_names == ("relay-a", "relay-a2")
