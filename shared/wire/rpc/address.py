"""Owner addresses as gRPC reads them (``host:port``, ``[v6]:port``, ``unix:path``): host and port, and
whether an address can only reach this machine (where plaintext is acceptable). Standard library only,
so the owner's config check and the TLS probe use it without loading gRPC."""

from __future__ import annotations

import ipaddress


def _valid_port(port: str) -> bool:
    return port.isascii() and port.isdigit() and int(port) <= 65535


def _split_host(address: str) -> tuple[str, bool] | None:
    """``(host, is_bracketed)`` of ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return None
        rest = address[end + 1 :]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            return None
        return address[1:end], True
    if address.count(":") == 1:
        host, port = address.split(":")
        return (host, False) if _valid_port(port) else None
    return address, False  # no port, or a bare IPv6 literal such as ``::1``


def is_loopback(address: str) -> bool:
    """Whether ``address`` can only reach this machine, so plaintext is acceptable there.

    Only literals count: an IPv4 address in 127.0.0.0/8, ::1 (or an IPv4-mapped 127/8), the name
    ``localhost``, or a ``unix:`` socket. Any other host name (``127.evil.example``) is resolved by DNS
    and could point anywhere, and a malformed literal (``127.1``, ``127.0.0.256``) is refused: such
    addresses need TLS.
    """
    if address.startswith("unix:"):
        return True
    split = _split_host(address)
    if split is None:
        return False
    host, bracketed = split
    if not bracketed and host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.IPv6Address(host) if bracketed else ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a TCP address as gRPC reads it (port 443 when none is given); None for ``unix:``."""
    if address.startswith("unix:"):
        return None
    split = _split_host(address)
    if split is None:
        return None
    host, bracketed = split
    if bracketed:
        port = address.rsplit("]", 1)[1].lstrip(":")
    else:
        port = address.split(":")[1] if address.count(":") == 1 else ""
    return host, int(port) if port else 443
