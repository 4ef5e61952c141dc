"""deploy/make_certs.sh: one relay CA per owner (issue 25, item 6) and each role's keys readable by the
uid that runs it (issue 27)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.certs import CONTAINER_UIDS, check_uids, main, make_certs

ROOT = Path(__file__).resolve().parents[1]


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def signed_by(child: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(ca)
        return True
    except (ValueError, InvalidSignature):
        return False


def test_container_uids_are_the_dockerfiles_uids() -> None:
    text = (ROOT / "deploy" / "containers" / "Dockerfile").read_text()
    users = dict(re.findall(r"useradd --uid (\d+) --create-home (\w+)", text))
    assert {user: int(uid) for uid, user in users.items()} == CONTAINER_UIDS


def test_each_owner_trusts_only_its_own_relay(tmp_path: Path) -> None:
    make_certs(tmp_path, ["127.0.0.1"], ["a", "b"])
    ca = cert(tmp_path / "ca.pem")
    for me, other in (("a", "b"), ("b", "a")):
        relay_ca = cert(tmp_path / f"owner-{me}" / f"relay-ca-{me}.pem")
        relay = cert(tmp_path / f"supernode-{me}" / f"relay-{me}.pem")
        assert signed_by(relay, relay_ca) and not signed_by(relay, ca)
        assert not signed_by(cert(tmp_path / f"relay-{other}.pem"), relay_ca)  # the other hospital's relay
        assert signed_by(cert(tmp_path / f"owner-{me}.pem"), ca)  # the relays trust the service by ca.pem
        names = relay.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        assert names == [f"relay-{me}"]
        assert relay.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"relay-{me}"
        usage = relay.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_role_folders_hold_what_each_role_needs_and_keys_are_private(tmp_path: Path) -> None:
    folders = make_certs(tmp_path, ["127.0.0.1"], ["a"])
    by_role = {f.role: f for f in folders}
    assert set(by_role) == {"owner", "relay", "cloud"}
    assert sorted(p.name for p in (tmp_path / "owner-a").iterdir()) == ["owner-a.key", "owner-a.pem", "relay-ca-a.pem"]
    assert sorted(p.name for p in (tmp_path / "supernode-a").iterdir()) == [
        "ca.pem",
        "relay-a.key",
        "relay-a.pem",
        "supernode-a.key",
        "supernode-a.pub",
    ]
    assert sorted(p.name for p in (tmp_path / "superlink").iterdir()) == [
        "ca.pem",
        "superlink.key",
        "superlink.pem",
        "supernodes.csv",
    ]
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == ["ca.key", "relay-ca-a.key"]
    for folder in [*(f.folder for f in folders), tmp_path / "offline"]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for path in folder.iterdir():
            private = path.suffix == ".key"
            assert stat.S_IMODE(path.stat().st_mode) == (0o600 if private else 0o644), path
    # No CA key in any folder a role mounts; the flat names of old still lead to the same files.
    assert not any(p.name.startswith(("ca.key", "relay-ca-a.key")) for f in folders for p in f.folder.iterdir())
    for name in ("ca.pem", "owner-a.pem", "owner-a.key", "relay-a.pem", "relay-a.key", "supernode-a.key"):
        assert (tmp_path / name).read_bytes()
    assert (tmp_path / "relay-a.key").resolve() == (tmp_path / "supernode-a" / "relay-a.key").resolve()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_as_root_each_folder_goes_to_the_uid_of_its_role(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--owner", "a", "--container-uids", "--uid", "relay=4242"]) == 0
    expected = {"owner-a": CONTAINER_UIDS["owner"], "supernode-a": 4242, "superlink": CONTAINER_UIDS["cloud"]}
    for folder, uid in expected.items():
        for path in [tmp_path / folder, *(tmp_path / folder).iterdir()]:
            assert path.stat().st_uid == uid, path
    assert (tmp_path / "offline" / "ca.key").stat().st_uid == 0
    out = capsys.readouterr().out
    assert "owned by uid 4242" in out and 'client_names = ["relay-a"]' in out and "chown" not in out


def test_without_uids_it_says_who_must_own_what(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--owner", "a"]) == 0
    out = capsys.readouterr().out
    for role, uid in CONTAINER_UIDS.items():
        folder = {"owner": "owner-a", "relay": "supernode-a", "cloud": "superlink"}[role]
        assert f"chown -R {uid} {tmp_path / folder}" in out


def test_bad_uids_and_owner_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        make_certs(tmp_path / "x", ["127.0.0.1"], ["a"], {"hospital": 1})
    with pytest.raises(ValueError, match="owner name"):
        make_certs(tmp_path / "y", ["127.0.0.1"], ["St John's"])
    with pytest.raises(ValueError, match="must differ"):
        make_certs(tmp_path / "z", ["127.0.0.1"], ["a", "a"])
    assert not any((tmp_path / d).exists() for d in "xyz")
    if os.geteuid() != 0:
        with pytest.raises(ValueError, match="needs root"):
            check_uids({"relay": os.geteuid() + 1})
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "w"), "--uid", "relay"])
