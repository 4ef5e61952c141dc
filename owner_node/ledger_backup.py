"""A consistent copy of the owner's release ledger, safe to take while the service keeps writing.

The ledger runs in WAL mode: recent releases sit in ``ledger.sqlite-wal`` until a checkpoint moves
them into ``ledger.sqlite``. Copying the main file alone therefore misses them, and restoring such
a copy would show spent budget as unspent. SQLite's online backup API reads one snapshot through
SQLite itself (WAL included) without blocking the service's writers.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

_SIDE_FILES = ("-wal", "-shm", "-journal")


def _remove(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in _SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsynced on every platform
        pass
    finally:
        os.close(fd)


def _place(tmp: Path, destination: Path) -> None:
    """Move the finished copy into place without ever replacing a file that appeared meanwhile."""
    try:
        os.link(tmp, destination)  # fails if destination exists, unlike a rename
    except FileExistsError:
        raise ValueError(f"backup destination {destination} already exists: refusing to overwrite it") from None
    except OSError:  # a file system without hard links
        if destination.exists():
            raise ValueError(f"backup destination {destination} already exists: refusing to overwrite it") from None
        os.replace(tmp, destination)
    else:
        tmp.unlink()


def backup_ledger(source: str | Path, destination: str | Path) -> dict:
    """Copy the ledger at ``source`` to a new single file ``destination``; return a summary of the copy.

    The copy is one snapshot of the ledger (every release committed before the backup started is in
    it, none half-written), checked with ``PRAGMA integrity_check`` and in journal_mode=DELETE, so it
    needs no ``-wal`` file beside it. It appears at ``destination`` only once complete.
    """
    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise FileNotFoundError(f"no ledger at {source}: nothing to back up")
    if destination.exists():
        raise ValueError(f"backup destination {destination} already exists: refusing to overwrite it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mode=rw: never create an empty database where the ledger should be.
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=rw", uri=True, timeout=60.0, isolation_level=None)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst)  # all pages in one step: a single read snapshot, writers go on meanwhile
                dst.execute("PRAGMA journal_mode=DELETE")
                checks = [r[0] for r in dst.execute("PRAGMA integrity_check").fetchall()]
                if checks != ["ok"]:
                    raise RuntimeError(f"the copy of {source} failed its integrity check: {'; '.join(checks[:5])}")
                try:
                    rows, released = dst.execute(
                        "SELECT count(*), coalesce(sum(state = 'released'), 0) FROM releases"
                    ).fetchone()
                except sqlite3.OperationalError:
                    raise ValueError(f"{source} is not a release ledger (it has no releases table)") from None
            finally:
                dst.close()
        finally:
            src.close()
        _fsync(tmp)
        _place(tmp, destination)
        _fsync(destination.parent)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"could not back up {source}: {exc}") from exc
    finally:
        _remove(tmp)
    return {
        "source": str(source),
        "destination": str(destination),
        "rows": rows,
        "released": released,
        "reserved": rows - released,
        "bytes": destination.stat().st_size,
    }
