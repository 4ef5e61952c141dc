"""Certificates and keys for a deployment: TLS between SuperNode and SuperLink, SuperNode
authentication keys, and TLS (mutual) between the relay and the owner service.

Made with the ``cryptography`` package (a Flower dependency), so no openssl is needed. In
production the hospital and the cloud operator each keep their own private keys; this script makes
a complete set for one machine or for a test, and says which file belongs to whom.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600 if private else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _issue(
    name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str], usage
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_certs(out: Path, hosts: list[str], owners: list[str]) -> dict[str, list[str]]:
    """Write the set into ``out``; returns which files each role needs."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpdistill deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(ca_key), private=True)

    cert, key = _issue("superlink", ca_key, ca_cert, hosts, ExtendedKeyUsageOID.SERVER_AUTH)
    _write(out / "superlink.pem", cert)
    _write(out / "superlink.key", key, private=True)
    roles = {"cloud (SuperLink)": ["ca.pem", "superlink.pem", "superlink.key", "supernodes.csv"]}

    public_keys = []
    for owner in owners:
        cert, key = _issue(f"owner-service-{owner}", ca_key, ca_cert, hosts, ExtendedKeyUsageOID.SERVER_AUTH)
        _write(out / f"owner-{owner}.pem", cert)
        _write(out / f"owner-{owner}.key", key, private=True)
        cert, key = _issue(f"relay-{owner}", ca_key, ca_cert, [], ExtendedKeyUsageOID.CLIENT_AUTH)
        _write(out / f"relay-{owner}.pem", cert)
        _write(out / f"relay-{owner}.key", key, private=True)
        # SuperNode authentication: an EC key in OpenSSH format (what flower-supernode reads); the
        # SuperLink only admits SuperNodes whose public key it was given.
        node_key = ec.generate_private_key(ec.SECP384R1())
        _write(
            out / f"supernode-{owner}.key",
            node_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        public = node_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(out / f"supernode-{owner}.pub", public + b"\n")
        public_keys.append(public.decode())
        roles[f"hospital '{owner}' (owner service)"] = ["ca.pem", f"owner-{owner}.pem", f"owner-{owner}.key"]
        roles[f"hospital '{owner}' (SuperNode and relay)"] = [
            "ca.pem",
            f"supernode-{owner}.key",
            f"relay-{owner}.pem",
            f"relay-{owner}.key",
        ]
    _write(out / "supernodes.csv", ("\n".join(public_keys) + "\n").encode())
    return roles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="certs", help="folder for the certificates and keys")
    p.add_argument(
        "--host",
        action="append",
        help="host name or IP of the SuperLink and owner services (repeatable; default 127.0.0.1 and localhost)",
    )
    p.add_argument("--owner", action="append", help="owner name (repeatable; default: one owner 'a')")
    a = p.parse_args(argv)
    roles = make_certs(Path(a.out), a.host or ["127.0.0.1", "localhost"], a.owner or ["a"])
    print(f"wrote certificates and keys to {a.out}/ (ca.key signs them all: keep it offline)")
    for role, files in roles.items():
        print(f"  {role}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
