"""Backing up the release ledger while the owner service writes to it (WAL mode)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from deploy.cli import main
from owner_node.config import write_config
from owner_node.ledger import Ledger
from owner_node.ledger_backup import backup_ledger
from shared.wire.privacy_event import SampledGaussianEvent
from tests.conftest import make_owner_config

EVENT = SampledGaussianEvent(noise_multiplier=5.0, sample_rate=0.01, count=3)


def reply_for(request_id: str) -> bytes:
    return (request_id.encode() + bytes(range(256))) * 4  # every byte value, so a text round trip would show


def release(ledger: Ledger, request_id: str) -> None:
    assert ledger.reserve(request_id, f"digest-{request_id}", EVENT, lambda events: True) is None
    ledger.record_reply(request_id, reply_for(request_id))


def count_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM releases").fetchone()[0]
    except sqlite3.OperationalError:  # no releases table at all
        return 0
    finally:
        db.close()


def test_backup_mid_run_holds_every_release(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ids = [f"req-{i}" for i in range(8)]
    for rid in ids:
        release(ledger, rid)
    ledger.reserve("open", "digest-open", EVENT, lambda events: True)  # reserved, no reply yet: spent too
    # The writer stays open: the releases are in the WAL, not yet in ledger.sqlite.
    summary = backup_ledger(tmp_path / "ledger.sqlite", tmp_path / "backup" / "copy.sqlite")
    ledger.close()

    copy = tmp_path / "backup" / "copy.sqlite"
    assert summary == {
        "source": str(tmp_path / "ledger.sqlite"),
        "destination": str(copy),
        "rows": 9,
        "released": 8,
        "reserved": 1,
        "bytes": copy.stat().st_size,
    }
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.sqlite"]  # one file, no temp left
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    restored = Ledger(copy)
    try:
        rows = {r.request_id: r for r in restored.rows()}
        assert set(rows) == set(ids) | {"open"}
        for rid in ids:
            assert rows[rid].state == "released"
            assert rows[rid].digest == f"digest-{rid}"
            assert rows[rid].event == EVENT
            assert restored.reply(rid) == reply_for(rid)
        assert rows["open"].state == "reserved" and restored.reply("open") is None
        assert restored.integrity_ok()
    finally:
        restored.close()


def test_copying_the_main_file_alone_misses_releases(tmp_path: Path) -> None:
    """Why the command exists: with the service running, ``cp ledger.sqlite`` loses recent releases."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    try:
        for i in range(5):
            release(ledger, f"req-{i}")
        wal = path.with_name(path.name + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            pytest.skip("SQLite checkpointed the WAL already; the naive copy happens to be complete")
        shutil.copy(path, tmp_path / "naive.sqlite")
        backup_ledger(path, tmp_path / "proper.sqlite")
    finally:
        ledger.close()
    assert count_rows(tmp_path / "naive.sqlite") < 5
    assert count_rows(tmp_path / "proper.sqlite") == 5


def test_backup_while_releases_keep_coming_is_a_consistent_prefix(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    ids = [f"req-{i:04d}" for i in range(300)]
    errors: list[BaseException] = []

    def writer() -> None:
        ledger = Ledger(path)
        try:
            for rid in ids:
                release(ledger, rid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            ledger.close()

    thread = threading.Thread(target=writer)
    thread.start()
    copies = []
    while thread.is_alive() or len(copies) < 3:
        dest = tmp_path / f"copy-{len(copies)}.sqlite"
        backup_ledger(path, dest)
        copies.append(dest)
    thread.join()
    assert not errors
    copies.append(tmp_path / "final.sqlite")
    backup_ledger(path, copies[-1])

    for copy in copies:
        ledger = Ledger(copy)
        try:
            assert ledger.integrity_ok()
            rows = sorted(ledger.rows(), key=lambda r: r.request_id)
            got = [r.request_id for r in rows]
            assert got == ids[: len(got)]  # releases are made in order: a snapshot is a prefix
            for r in rows[:-1]:
                assert r.state == "released" and ledger.reply(r.request_id) == reply_for(r.request_id)
            for r in rows[-1:]:  # the last may be caught between reservation and reply
                assert r.digest == f"digest-{r.request_id}" and r.event == EVENT
                expected = reply_for(r.request_id) if r.state == "released" else None
                assert ledger.reply(r.request_id) == expected
                assert (r.released_at is None) == (r.state == "reserved")
        finally:
            ledger.close()
    assert count_rows(copies[-1]) == len(ids)


def test_refuses_to_overwrite_and_needs_a_source(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    release(ledger, "r1")
    existing = tmp_path / "existing.sqlite"
    existing.write_bytes(b"an older backup")
    with pytest.raises(ValueError, match="existing.sqlite already exists"):
        backup_ledger(tmp_path / "ledger.sqlite", existing)
    assert existing.read_bytes() == b"an older backup"
    ledger.close()

    with pytest.raises(FileNotFoundError, match="no ledger at"):
        backup_ledger(tmp_path / "missing.sqlite", tmp_path / "copy.sqlite")
    assert not (tmp_path / "missing.sqlite").exists() and not (tmp_path / "copy.sqlite").exists()

    (tmp_path / "not-a-db").write_bytes(b"hello" * 1000)
    with pytest.raises(ValueError, match="could not back up"):
        backup_ledger(tmp_path / "not-a-db", tmp_path / "copy.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(ValueError, match="not a release ledger"):
        backup_ledger(tmp_path / "other.sqlite", tmp_path / "copy.sqlite")
    assert not (tmp_path / "copy.sqlite").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_ledger_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_owner_config(tmp_path / "owner")
    write_config(tmp_path / "owner.toml", config)
    ledger = Ledger(config.ledger_path)  # the service's connection, still open
    for i in range(3):
        release(ledger, f"req-{i}")
    dest = tmp_path / "backups" / "ledger-1.sqlite"
    try:
        assert main(["ledger-backup", "--config", str(tmp_path / "owner.toml"), str(dest)]) == 0
        out = capsys.readouterr().out
        assert str(dest) in out and "3 releases (3 released, 0 reserved)" in out
        assert main(["ledger-backup", "--config", str(tmp_path / "owner.toml"), str(dest)]) == 2
        assert "already exists" in capsys.readouterr().err
    finally:
        ledger.close()
    restored = Ledger(dest)
    try:
        assert [restored.reply(f"req-{i}") for i in range(3)] == [reply_for(f"req-{i}") for i in range(3)]
    finally:
        restored.close()
