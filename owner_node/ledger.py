"""The owner's persistent release ledger (SQLite).

A release is reserved, budget-checked and committed in one immediate transaction *before* any
private computation starts; the noisy answer is committed before it is returned. A crash after
the reservation counts as spent. A retry with the same request id gets the stored answer (or, if
the crash came before an answer was stored, the one answer computed now): never a second spend.

A run plan reserves a whole run's releases before the first one (``reserve_plan``): its releases
not yet made count against the budget of everything else, so an accepted run cannot be refused
part-way for lack of budget. A release whose request id starts with the plan's prefix, at the
plan's sigma and q, draws on that reservation instead of adding to the total.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    request_prefix TEXT NOT NULL UNIQUE,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    releases INTEGER NOT NULL,
    reserved_at REAL NOT NULL,
    cancelled_at REAL
);
"""


class LedgerConflict(ValueError):
    """A request id reused with different contents; ``stored_digest`` is what the ledger holds for it."""

    def __init__(self, message: str, stored_digest: str | None = None):
        super().__init__(message)
        self.stored_digest = stored_digest


class BudgetExceeded(RuntimeError):
    """The release would take the owner past its configured budget."""


@dataclass(frozen=True)
class PlanRow:
    plan_id: str
    request_prefix: str
    event: SampledGaussianEvent  # the whole plan
    used: int  # releases already made under it
    cancelled: bool

    @property
    def outstanding(self) -> int:
        return 0 if self.cancelled else max(0, self.event.count - self.used)


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
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(releases)").fetchall()}
        if "plan_id" not in columns:  # ledgers written before run plans existed
            self._db.execute("ALTER TABLE releases ADD COLUMN plan_id TEXT")

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

    def plans(self) -> list[PlanRow]:
        cur = self._db.execute(
            "SELECT p.plan_id, p.request_prefix, p.noise_multiplier, p.sample_rate, p.releases, p.cancelled_at, "
            "COALESCE((SELECT SUM(r.draws) FROM releases r WHERE r.plan_id = p.plan_id), 0) "
            "FROM plans p ORDER BY p.reserved_at"
        )
        return [
            PlanRow(r[0], r[1], SampledGaussianEvent(r[2], r[3], r[4]), int(r[6]), r[5] is not None)
            for r in cur.fetchall()
        ]

    def outstanding(self) -> list[SampledGaussianEvent]:
        """What accepted plans still hold in reserve (releases planned, not yet made)."""
        return [
            SampledGaussianEvent(p.event.noise_multiplier, p.event.sample_rate, p.outstanding)
            for p in self.plans()
            if p.outstanding > 0
        ]

    def committed(self) -> list[SampledGaussianEvent]:
        """Everything the budget must cover: every release made or reserved, and every plan's remainder."""
        return self.events() + self.outstanding()

    def reserve(
        self,
        request_id: str,
        digest: str,
        event: SampledGaussianEvent,
        within_budget: Callable[[list[SampledGaussianEvent]], bool],
    ) -> bytes | None:
        """Reserve budget for a request; return its stored reply if it was already released."""
        with self._immediate() as db:
            row = db.execute("SELECT digest, state, reply FROM releases WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                if row[0] != digest:
                    raise LedgerConflict(
                        f"request id {request_id!r} was already used for a different request", stored_digest=row[0]
                    )
                return bytes(row[2]) if row[1] == "released" else None
            plan_id = self._plan_for(request_id, event)
            # A planned release turns part of its plan's reserve into a release: the total stays the same.
            total = self.committed() if plan_id is not None else self.committed() + [event]
            if not within_budget(total):
                raise BudgetExceeded("release refused: it would exceed the owner's privacy budget")
            db.execute(
                "INSERT INTO releases (request_id, digest, state, noise_multiplier, sample_rate, draws, reserved_at, "
                "plan_id) VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?)",
                (request_id, digest, event.noise_multiplier, event.sample_rate, event.count, time.time(), plan_id),
            )
            return None

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before anything is read: committed on return, rolled back on
        any exception (a refusal included, which writes nothing)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _plan_for(self, request_id: str, event: SampledGaussianEvent) -> str | None:
        """The accepted plan this release belongs to, if its id, sigma and q match and the plan has room."""
        for plan in self.plans():
            if (
                request_id.startswith(plan.request_prefix)
                and plan.event.noise_multiplier == event.noise_multiplier
                and plan.event.sample_rate == event.sample_rate
                and plan.outstanding >= event.count
            ):
                return plan.plan_id
        return None

    def reserve_plan(
        self,
        plan_id: str,
        digest: str,
        request_prefix: str,
        event: SampledGaussianEvent,
        within_budget: Callable[[list[SampledGaussianEvent]], bool],
    ) -> None:
        """Hold a whole run's releases; repeating an accepted plan (a resumed run) is a no-op."""
        with self._immediate() as db:
            row = db.execute("SELECT digest FROM plans WHERE plan_id = ?", (plan_id,)).fetchone()
            if row is not None:
                if row[0] != digest:
                    raise LedgerConflict(
                        f"plan id {plan_id!r} was already used for a different plan", stored_digest=row[0]
                    )
                return
            for other in self.plans():
                if other.request_prefix.startswith(request_prefix) or request_prefix.startswith(other.request_prefix):
                    raise LedgerConflict(
                        f"request prefix {request_prefix!r} overlaps that of plan {other.plan_id!r}: "
                        "each plan needs request ids of its own"
                    )
            taken = db.execute(
                "SELECT COUNT(*) FROM releases WHERE substr(request_id, 1, length(?)) = ?",
                (request_prefix, request_prefix),
            ).fetchone()[0]
            if taken:
                raise LedgerConflict(f"{taken} releases already use request ids starting with {request_prefix!r}")
            if not within_budget(self.committed() + [event]):
                raise BudgetExceeded("plan refused: its releases would exceed the owner's privacy budget")
            db.execute(
                "INSERT INTO plans (plan_id, digest, request_prefix, noise_multiplier, sample_rate, releases, "
                "reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (plan_id, digest, request_prefix, event.noise_multiplier, event.sample_rate, event.count, time.time()),
            )

    def cancel_plan(self, plan_id: str) -> PlanRow:
        """Free what an abandoned run still holds (an operator's decision); its releases stay spent."""
        cur = self._db.execute(
            "UPDATE plans SET cancelled_at = ? WHERE plan_id = ? AND cancelled_at IS NULL", (time.time(), plan_id)
        )
        if cur.rowcount != 1:
            raise ValueError(f"no open plan {plan_id!r} in the ledger")
        return next(p for p in self.plans() if p.plan_id == plan_id)

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
