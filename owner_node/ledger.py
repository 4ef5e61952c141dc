"""The owner's persistent release ledger (SQLite).

A release is reserved, budget-checked and committed in one immediate transaction *before* any
private computation starts; the noisy answer is committed before it is returned. A crash after
the reservation counts as spent. A retry with the same request id gets the stored answer (or, if
the crash came before an answer was stored, the one answer computed now): never a second spend.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.accounting import SampledGaussianEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    request_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'released')),
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    draws INTEGER NOT NULL,
    reply BLOB,
    reserved_at REAL NOT NULL,
    released_at REAL
);
"""


class LedgerConflict(ValueError):
    """A request id reused with different contents."""


class BudgetExceeded(RuntimeError):
    """The release would take the owner past its configured budget."""


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    digest: str
    state: str
    event: SampledGaussianEvent
    reserved_at: float
    released_at: float | None


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def rows(self) -> list[LedgerRow]:
        cur = self._db.execute(
            "SELECT request_id, digest, state, noise_multiplier, sample_rate, draws, reserved_at, released_at "
            "FROM releases ORDER BY reserved_at"
        )
        return [LedgerRow(r[0], r[1], r[2], SampledGaussianEvent(r[3], r[4], r[5]), r[6], r[7]) for r in cur.fetchall()]

    def reply(self, request_id: str) -> bytes | None:
        """The exact reply bytes recorded for ``request_id`` (for audits: every reply sent is here)."""
        row = self._db.execute("SELECT reply FROM releases WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def events(self) -> list[SampledGaussianEvent]:
        """Every reserved or released draw: all of them count as spent."""
        return [row.event for row in self.rows()]

    def reserve(
        self,
        request_id: str,
        digest: str,
        event: SampledGaussianEvent,
        within_budget: Callable[[list[SampledGaussianEvent]], bool],
    ) -> bytes | None:
        """Reserve budget for a request; return its stored reply if it was already released."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT digest, state, reply FROM releases WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                db.execute("COMMIT")
                if row[0] != digest:
                    raise LedgerConflict(f"request id {request_id!r} was already used for a different request")
                return bytes(row[2]) if row[1] == "released" else None
            spent = [
                SampledGaussianEvent(s, q, n)
                for s, q, n in db.execute("SELECT noise_multiplier, sample_rate, draws FROM releases").fetchall()
            ]
            if not within_budget(spent + [event]):
                db.execute("ROLLBACK")
                raise BudgetExceeded("release refused: it would exceed the owner's privacy budget")
            db.execute(
                "INSERT INTO releases (request_id, digest, state, noise_multiplier, sample_rate, draws, reserved_at) "
                "VALUES (?, ?, 'reserved', ?, ?, ?, ?)",
                (request_id, digest, event.noise_multiplier, event.sample_rate, event.count, time.time()),
            )
            db.execute("COMMIT")
            return None
        except (LedgerConflict, BudgetExceeded):
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def record_reply(self, request_id: str, reply: bytes) -> None:
        """Store the answer durably; only after this returns may it leave the owner."""
        cur = self._db.execute(
            "UPDATE releases SET state = 'released', reply = ?, released_at = ? "
            "WHERE request_id = ? AND state = 'reserved'",
            (sqlite3.Binary(reply), time.time(), request_id),
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"no open reservation for request {request_id!r}")

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
