"""Certificates and keys for a deployment: TLS between SuperNode and SuperLink, SuperNode
authentication keys, and TLS (mutual) between the relay and the owner service.

Made with the ``cryptography`` package (a Flower dependency), so no openssl is needed. In
production the hospital and the cloud operator each keep their own private keys; this script makes
a complete set for one machine or for a test, and says which file belongs to whom.

Who trusts what: the deployment CA (``ca.pem``) signs the SuperLink's and the owner services'
server certificates. Each owner has its own relay CA (``relay-ca-<owner>.pem``, the owner's
``[service] client_ca``) that signs that hospital's relay certificate and nothing else, and the
owner service also checks the relay certificate's name (``client_names``): another hospital's relay
is refused at the TLS handshake and again by name.

Each role's files go in a folder of their own, to be mounted (read-only) where that role runs and
owned by the uid that runs it (``--uid ROLE=UID`` or ``--container-uids`` when run as root; private
keys are 0600, readable by that uid alone). The CA keys go in ``offline/``. The old flat names
(``certs/relay-a.key`` ...) remain as links into the role folders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
# The uids the containers run each role as (the ``useradd --uid`` of deploy/containers/Dockerfile;
# tests/test_certs.py checks they agree): used by --container-uids.
CONTAINER_UIDS = {"owner": 10001, "relay": 10002, "cloud": 10003}
ROLES = {
    "owner": "the owner service (hospital)",
    "relay": "the SuperNode and its relay (hospital)",
    "cloud": "the SuperLink (cloud)",
}
OWNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (relative), replacing whatever was at ``link``: the flat names of old."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.relative_to(link.parent))


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


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


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


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class RoleFolder:
    """The files one role needs, in one folder to mount where it runs, owned by ``uid`` when given."""

    role: str  # a key of ROLES
    folder: Path
    files: tuple[str, ...]
    uid: int | None
    note: str = ""

    def describe(self) -> str:
        owner = f"owned by uid {self.uid}" if self.uid is not None else f"give it to the uid that runs {self.role}"
        text = f"{self.folder}/ -> {ROLES[self.role]}, {owner}: {', '.join(self.files)}"
        return text + (f"\n      {self.note}" if self.note else "")


def _give(folder: RoleFolder) -> None:
    """The folder (0700) and its files to the role's uid: keys stay 0600, readable by that uid only."""
    folder.folder.chmod(0o700)
    if folder.uid is None:
        return
    for path in [folder.folder, *(folder.folder / f for f in folder.files)]:
        os.chown(path, folder.uid, -1)


def check_uids(uids: Mapping[str, int]) -> None:
    """Refuse unknown roles, and uids this process may not give files to, before anything is written."""
    unknown = set(uids) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)} in --uid; roles: {', '.join(ROLES)}")
    foreign = {r: u for r, u in uids.items() if u != os.geteuid()}
    if foreign and os.geteuid() != 0:
        raise ValueError(
            f"giving files to uid(s) {foreign} needs root: run this as root, or without --uid and then "
            "chown each folder as printed"
        )


def make_certs(
    out: Path, hosts: list[str], owners: list[str], uids: Mapping[str, int] | None = None
) -> list[RoleFolder]:
    """Write the set into ``out`` (a folder per role, see the module's docstring); returns the folders.

    ``uids`` maps roles (``owner``, ``relay``, ``cloud``) to the uid that must own their folder;
    roles left out keep the uid of whoever runs this.
    """
    uids = dict(uids or {})
    check_uids(uids)
    for owner in owners:
        if not OWNER_NAME.fullmatch(owner):
            raise ValueError(f"owner name {owner!r}: use letters, digits, '.', '_' and '-' (it names files)")
    if len(set(owners)) != len(owners):
        raise ValueError(f"owner names must differ: {owners}")
    out.mkdir(parents=True, exist_ok=True)
    offline = out / "offline"
    offline.mkdir(exist_ok=True)
    offline.chmod(0o700)

    ca_key, ca_cert = _ca("dpdistill deployment CA")
    _write(out / "ca.pem", _pem(ca_cert))
    _write(offline / "ca.key", _pem_key(ca_key), private=True)
    _link(out / "ca.key", offline / "ca.key")

    cloud = out / "superlink"
    cloud.mkdir(exist_ok=True)
    cert, key = _issue("superlink", ca_key, ca_cert, hosts, ExtendedKeyUsageOID.SERVER_AUTH)
    _write(cloud / "ca.pem", _pem(ca_cert))
    _write(cloud / "superlink.pem", cert)
    _write(cloud / "superlink.key", key, private=True)

    folders = []
    public_keys = []
    for owner in owners:
        service_dir, node_dir = out / f"owner-{owner}", out / f"supernode-{owner}"
        service_dir.mkdir(exist_ok=True)
        node_dir.mkdir(exist_ok=True)
        cert, key = _issue(f"owner-service-{owner}", ca_key, ca_cert, hosts, ExtendedKeyUsageOID.SERVER_AUTH)
        _write(service_dir / f"owner-{owner}.pem", cert)
        _write(service_dir / f"owner-{owner}.key", key, private=True)
        # This owner's own relay CA: it signs this hospital's relay and nothing else.
        relay_ca_key, relay_ca = _ca(f"dpdistill relay CA of owner {owner}")
        _write(service_dir / f"relay-ca-{owner}.pem", _pem(relay_ca))
        _write(offline / f"relay-ca-{owner}.key", _pem_key(relay_ca_key), private=True)
        relay = f"relay-{owner}"
        cert, key = _issue(relay, relay_ca_key, relay_ca, [relay], ExtendedKeyUsageOID.CLIENT_AUTH)
        _write(node_dir / f"{relay}.pem", cert)
        _write(node_dir / f"{relay}.key", key, private=True)
        _write(node_dir / "ca.pem", _pem(ca_cert))
        # SuperNode authentication: an EC key in OpenSSH format (what flower-supernode reads); the
        # SuperLink only admits SuperNodes whose public key it was given.
        node_key = ec.generate_private_key(ec.SECP384R1())
        _write(
            node_dir / f"supernode-{owner}.key",
            node_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        public = node_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(node_dir / f"supernode-{owner}.pub", public + b"\n")
        public_keys.append(public.decode())
        service_files = (f"owner-{owner}.pem", f"owner-{owner}.key", f"relay-ca-{owner}.pem")
        node_files = ("ca.pem", f"supernode-{owner}.key", f"supernode-{owner}.pub", f"{relay}.pem", f"{relay}.key")
        folders.append(
            RoleFolder(
                "owner",
                service_dir,
                service_files,
                uids.get("owner"),
                f'owner.toml [service]: tls_cert = ".../owner-{owner}.pem", tls_key = ".../owner-{owner}.key", '
                f'client_ca = ".../relay-ca-{owner}.pem", client_names = ["{relay}"]',
            )
        )
        folders.append(
            RoleFolder(
                "relay",
                node_dir,
                node_files,
                uids.get("relay"),
                f"supernode.sh: CA and OWNER_CA = .../ca.pem, NODE_KEY = .../supernode-{owner}.key, "
                f"RELAY_CERT = .../{relay}.pem, RELAY_KEY = .../{relay}.key; send supernode-{owner}.pub to the cloud",
            )
        )
        for name in service_files:
            _link(out / name, service_dir / name)
        for name in node_files[1:]:
            _link(out / name, node_dir / name)
    _write(cloud / "supernodes.csv", ("\n".join(public_keys) + "\n").encode())
    cloud_files = ("ca.pem", "superlink.pem", "superlink.key", "supernodes.csv")
    for name in cloud_files[1:]:
        _link(out / name, cloud / name)
    folders.insert(0, RoleFolder("cloud", cloud, cloud_files, uids.get("cloud"), "superlink.sh: CERTS=<this folder>"))
    for folder in folders:
        _give(folder)
    return folders


def _uid(text: str) -> tuple[str, int]:
    role, sep, uid = text.partition("=")
    if not sep or not uid.isdigit():
        raise argparse.ArgumentTypeError(f"--uid takes ROLE=UID (roles: {', '.join(ROLES)}), not {text!r}")
    return role, int(uid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="certs", help="folder for the certificates and keys")
    p.add_argument(
        "--host",
        action="append",
        help="host name or IP of the SuperLink and owner services (repeatable; default 127.0.0.1 and localhost)",
    )
    p.add_argument("--owner", action="append", help="owner name (repeatable; default: one owner 'a')")
    p.add_argument(
        "--uid",
        action="append",
        type=_uid,
        default=[],
        metavar="ROLE=UID",
        help=f"give ROLE's folder to UID (roles: {', '.join(ROLES)}; repeatable; needs root for another uid)",
    )
    p.add_argument(
        "--container-uids",
        action="store_true",
        help="give each folder to the uid its container runs as: "
        + ", ".join(f"{r}={u}" for r, u in CONTAINER_UIDS.items()),
    )
    a = p.parse_args(argv)
    uids = {**(CONTAINER_UIDS if a.container_uids else {}), **dict(a.uid)}
    try:
        folders = make_certs(Path(a.out), a.host or ["127.0.0.1", "localhost"], a.owner or ["a"], uids)
    except ValueError as exc:
        p.error(str(exc))
    print(f"wrote certificates and keys to {a.out}/; {a.out}/offline/ holds the CA keys: keep them offline")
    print("mount each folder read-only where its role runs (private keys are 0600, readable by its owner only):")
    for folder in folders:
        print(f"  {folder.describe()}")
    missing = [f for f in folders if f.uid is None]
    if missing:
        print("these folders still belong to uid", os.geteuid(), "; give each to the uid that runs its role, e.g. for")
        print("the containers (deploy/containers/Dockerfile), as root:")
        for f in missing:
            print(f"  chown -R {CONTAINER_UIDS[f.role]} {f.folder}")
        print("(or run this again as root with --container-uids, or --uid ROLE=UID)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
