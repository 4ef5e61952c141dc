"""Only literal loopback addresses may go without TLS: a host name that merely starts with "127." is DNS."""

from __future__ import annotations

import pytest

from owner_node.config import ServiceConfig
from shared.wire.rpc.address import is_loopback
from shared.wire.rpc.channel import OwnerEndpoint

NOT_LOOPBACK = [
    "127.evil.example:50051",
    "127.0.0.1.attacker.example:50051",
    "127.0.0.256:1",
    "127.1:50051",
    "127.1",
    "10.0.0.1:5",
    "0.0.0.0:50051",
    "[::]:1",
    "localhost.evil.example:1",
    "[127.0.0.1]:1",
    "[::ffff:10.0.0.1]:1",
    "127.0.0.1:",
    "127.0.0.1:99999",
    "127.0.0.1:1:2",
    "[::1]junk",
    "dns:///127.0.0.1:1",
    "",
]
LOOPBACK = [
    "127.0.0.1:50051",
    "127.0.0.1:0",
    "127.0.0.1",
    "127.5.6.7:1",
    "localhost:50051",
    "LOCALHOST:1",
    "[::1]:50051",
    "[::1]",
    "::1",
    "[::ffff:127.0.0.1]:50051",
    "unix:/tmp/x.sock",
]


@pytest.mark.parametrize("address", NOT_LOOPBACK)
def test_not_loopback(address: str) -> None:
    assert not is_loopback(address)


@pytest.mark.parametrize("address", LOOPBACK)
def test_loopback(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize("address", ["127.evil.example:50051", "127.0.0.1.attacker.example:50051", "0.0.0.0:50051"])
def test_service_config_demands_tls_off_loopback(address: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        ServiceConfig(listen=address)


@pytest.mark.parametrize("address", ["127.0.0.1.attacker.example:50051", "127.evil.example:50051", "127.0.0.256:1"])
def test_owner_endpoint_demands_tls_off_loopback(address: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        OwnerEndpoint(address)


def test_plaintext_still_allowed_on_loopback() -> None:
    assert ServiceConfig(listen="127.0.0.1:0").listen == "127.0.0.1:0"
    assert OwnerEndpoint("[::1]:50051").root_cert is None
    assert OwnerEndpoint("127.evil.example:50051", root_cert="ca.pem").root_cert == "ca.pem"
