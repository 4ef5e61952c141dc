"""The owner's persistent release ledger (SQLite).

A release is reserved, budget-checked and committed in one immediate transaction *before* any
private computation starts; the noisy answer is committed before it is returned. A crash after
the reservation counts as spent. A retry with the same request id gets the stored answer (or, if
the crash came before an answer was stored, the one answer computed now): never a second spend.

A run plan reserves a whole run's releases before the first one (``reserve_plan``): its releases
not yet made count against the budget of everything else, so an accepted run cannot be refused
part-way for lack of budget. A release whose request id starts with the plan's prefix, at the
plan's sigma and q, draws on that reservation instead of adding to the total.

The budget check (the accountant, which may take seconds) runs outside every transaction: the
ledger reads what is committed, the caller's check runs, and the row is written only if nothing
the check depended on changed meanwhile (``state``); otherwise the check runs again. Writers
therefore hold SQLite's write lock for milliseconds, whatever the accountant costs.

``audit`` is the append-only trail of every request the owner was sent (refusals included), with
the peer that sent it; triggers refuse any UPDATE or DELETE of it, and each row carries a hash of
the row before it, so a removed or altered row shows (``verify_audit``).

The ledger must sit on a local filesystem: SQLite's WAL mode (and its locking in general) is not
safe on NFS or SMB, and a corrupted or reset ledger would reset the budget. ``Ledger`` refuses a
network filesystem unless the owner chose ``[ledger] on_network_filesystem = "rollback-journal"``,
and checks that SQLite really runs in the journal mode asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.wire.privacy_event import SampledGaussianEvent

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
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    peer TEXT NOT NULL,
    method TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('answered', 'refused')),
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    epsilon_committed REAL,
    chain TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

# Filesystems on which SQLite's locking (and WAL's shared memory) cannot be trusted (SQLite's
# "How To Corrupt An SQLite Database File", section 2.1; "WAL does not work over a network filesystem").
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "gpfs",
        "9p",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
    }
)
NETWORK_FS_POLICIES = ("refuse", "rollback-journal")
# How often a reservation re-runs its budget check when other writers changed the ledger meanwhile.
MAX_CHECK_ATTEMPTS = 5
AUDIT_DETAIL_CHARS = 300


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem holding ``path`` (Linux: the longest mount point above it), or "unknown"."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                mount = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                after = line.split(" - ", 1)[1].split()
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best) and after:
                    best, fstype = mount, after[0]
    except OSError:
        return "unknown"
    return fstype


class LedgerUnsafe(RuntimeError):
    """The ledger cannot be kept safely where it is (a network filesystem, or SQLite ignored the journal mode)."""


class LedgerBusy(RuntimeError):
    """Other writers kept changing the ledger while a budget check ran; the request may be retried."""


class LedgerUnitMismatch(ValueError):
    """The owner's privacy unit would count releases made under a weaker one (image-level releases as patient-level)."""


class LedgerConflict(ValueError):
    """A request id reused with different contents; ``stored_digest`` is what the ledger holds for it."""

    def __init__(self, message: str, stored_digest: str | None = None):
        super().__init__(message)
        self.stored_digest = stored_digest


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
class AuditRow:
    seq: int
    at: float
    peer: str
    method: str
    kind: str
    request_id: str
    decision: str  # answered | refused
    code: str  # the refusal code ("" when answered)
    detail: str
    epsilon_committed: float | None


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    digest: str
    state: str
    event: SampledGaussianEvent
    reserved_at: float
    released_at: float | None
    plan_id: str | None = None  # the accepted plan this release drew on, if any


class Ledger:
    def __init__(self, path: str | Path, on_network_filesystem: str = "refuse"):
        self.path = Path(path)
        if on_network_filesystem not in NETWORK_FS_POLICIES:
            raise ValueError(f"[ledger] on_network_filesystem must be one of {NETWORK_FS_POLICIES}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fstype = filesystem_type(self.path.parent)
        journal = "wal"
        if fstype in NETWORK_FILESYSTEMS:
            if on_network_filesystem == "refuse":
                raise LedgerUnsafe(
                    f"the ledger {self.path} is on a network filesystem ({fstype}); SQLite's locking and WAL mode "
                    "are not safe there, and a corrupted or reset ledger would reset the privacy budget. Keep the "
                    "ledger on a local disk (and back it up with `dpdistill ledger-backup`), or, only if this one "
                    'machine ever opens it, set [ledger] on_network_filesystem = "rollback-journal"'
                )
            journal = "delete"
        self.filesystem = fstype
        # One connection, shared by the service's threads: every use goes through ``_mutex`` (held for
        # one statement or one short transaction, never for a budget check or a computation).
        self._mutex = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
        got = str(self._db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]).lower()
        if got != journal:
            self._db.close()
            raise LedgerUnsafe(
                f"SQLite put the ledger {self.path} in journal mode {got!r}, not {journal!r} as asked "
                f"(filesystem {fstype}): the ledger's durability cannot be promised there; move it to a local disk"
            )
        self.journal_mode = got
        self._db.execute("PRAGMA synchronous=FULL")
        if int(self._db.execute("PRAGMA synchronous").fetchone()[0]) != 2:
            self._db.close()
            raise LedgerUnsafe(f"SQLite refused synchronous=FULL for the ledger {self.path}")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(releases)").fetchall()}
        if "plan_id" not in columns:  # ledgers written before run plans existed
            self._db.execute("ALTER TABLE releases ADD COLUMN plan_id TEXT")

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def bind_privacy_unit(self, unit: str) -> None:
        """Refuse to count releases made under one privacy unit as another's; record the unit releases are made under.

        ``unit`` names the record: "image", or a patient and how patients are found (``OwnerConfig.record_unit``).
        An image-level release bounds one image's influence, so a patient with m images was protected only at
        about m times its epsilon (group privacy): a patient-level budget cannot count it as one event, and DP
        class counts drawn per image would be reused at the wrong sensitivity. Patients found another way (by
        file, then by PatientID) regroup records the same way. A patient-level release bounds every image too,
        so moving to "image" is safe. The unit recorded is the weakest released under (a ledger written before
        units were recorded takes the configured one)."""
        with self._immediate() as db:  # takes the mutex
            row = db.execute("SELECT value FROM settings WHERE key = 'privacy_unit'").fetchone()
            used = (
                db.execute("SELECT COUNT(*) FROM releases").fetchone()[0]
                + db.execute("SELECT COUNT(*) FROM plans").fetchone()[0]
            )
            stored = row[0] if row is not None else None
            if stored is not None and stored != unit and unit != "image" and used:
                raise LedgerUnitMismatch(
                    f"the ledger {self.path} holds {used} releases and plans made with the privacy unit {stored!r}, "
                    f"and this owner's is {unit!r}: each of those releases bounded one {stored.split(' ')[0]} as "
                    "recorded then, so a record of the new unit that spans several was protected only by group "
                    "privacy and cannot be counted as one. Keep the unit for this ledger, or give the owner with "
                    "the new unit a ledger of its own and count this one's spending against the data separately "
                    "(see SECURITY.md, 'The privacy unit is bound to the ledger')"
                )
            if stored != unit:  # first use, nothing released yet, or to image level (the weakest)
                db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('privacy_unit', ?)", (unit,))

    def privacy_unit(self) -> str | None:
        """The unit releases in this ledger were made under (the weakest, if it changed), or None if unrecorded."""
        rows = self._read("SELECT value FROM settings WHERE key = 'privacy_unit'")
        return rows[0][0] if rows else None

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def rows(self) -> list[LedgerRow]:
        rows = self._read(
            "SELECT request_id, digest, state, noise_multiplier, sample_rate, draws, reserved_at, released_at, plan_id "
            "FROM releases ORDER BY reserved_at"
        )
        return [LedgerRow(r[0], r[1], r[2], SampledGaussianEvent(r[3], r[4], r[5]), r[6], r[7], r[8]) for r in rows]

    def reply(self, request_id: str) -> bytes | None:
        """The exact reply bytes recorded for ``request_id`` (for audits: every reply sent is here)."""
        rows = self._read("SELECT reply FROM releases WHERE request_id = ?", (request_id,))
        return None if not rows or rows[0][0] is None else bytes(rows[0][0])

    def events(self) -> list[SampledGaussianEvent]:
        """Every reserved or released draw: all of them count as spent."""
        return [row.event for row in self.rows()]

    def plans(self) -> list[PlanRow]:
        rows = self._read(
            "SELECT p.plan_id, p.request_prefix, p.noise_multiplier, p.sample_rate, p.releases, p.cancelled_at, "
            "COALESCE((SELECT SUM(r.draws) FROM releases r WHERE r.plan_id = p.plan_id), 0) "
            "FROM plans p ORDER BY p.reserved_at"
        )
        return [PlanRow(r[0], r[1], SampledGaussianEvent(r[2], r[3], r[4]), int(r[6]), r[5] is not None) for r in rows]

    def plan_times(self) -> dict[str, tuple[float, float | None]]:
        """Each plan's (reserved_at, cancelled_at), for reports."""
        return {r[0]: (r[1], r[2]) for r in self._read("SELECT plan_id, reserved_at, cancelled_at FROM plans")}

    def outstanding(self) -> list[SampledGaussianEvent]:
        """What accepted plans still hold in reserve (releases planned, not yet made)."""
        return [
            SampledGaussianEvent(p.event.noise_multiplier, p.event.sample_rate, p.outstanding)
            for p in self.plans()
            if p.outstanding > 0
        ]

    def committed(self) -> list[SampledGaussianEvent]:
        """Everything the budget must cover: every release made or reserved, and every plan's remainder."""
        with self._mutex:
            return self.events() + self.outstanding()

    def state(self) -> tuple:
        """A value that changes whenever what ``committed`` returns may have changed (rows are never deleted)."""
        with self._mutex:
            releases = self._db.execute("SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM releases").fetchone()
            plans = self._db.execute("SELECT COUNT(*), COUNT(cancelled_at), COALESCE(MAX(rowid), 0) FROM plans")
            return tuple(releases) + tuple(plans.fetchone())

    def _checked_write(self, write: Callable[[sqlite3.Connection], None], check) -> None:
        """Run ``check`` (the budget rule: slow) outside any lock, then ``write`` under SQLite's write lock
        only if the ledger is as the check saw it; else check again (up to ``MAX_CHECK_ATTEMPTS`` times).

        ``write(db)`` runs inside the write transaction; it may find nothing to write (a retried request)
        or raise to refuse, which rolls the transaction back.
        """
        for _ in range(MAX_CHECK_ATTEMPTS):
            with self._mutex:
                before = self.state()
                committed = self.committed()
            check(committed)
            with self._immediate() as db:
                if self.state() != before:
                    continue
                write(db)
                return
        raise LedgerBusy(
            f"the ledger changed during each of {MAX_CHECK_ATTEMPTS} budget checks (other requests were being "
            "reserved); nothing was reserved: retry"
        )

    def reserve(
        self,
        request_id: str,
        digest: str,
        event: SampledGaussianEvent,
        check: Callable[[list[SampledGaussianEvent]], object],
    ) -> bytes | None:
        """Reserve budget for a request; return its stored reply if it was already released.

        ``check(events)`` raises when ``events`` would exceed the budget; it is called outside every
        lock with everything the budget must then cover (a planned release does not add to it).
        """
        existing = self._existing_release(request_id, digest)
        if existing is not None:
            return existing[1]
        stored: list[bytes | None] = [None]

        def full_check(committed: list[SampledGaussianEvent]) -> None:
            plan_id = self._plan_for(request_id, event)
            check(committed if plan_id is not None else committed + [event])

        def write(db: sqlite3.Connection) -> None:
            found = self._existing_release(request_id, digest)
            if found is not None:  # the same request reserved by a concurrent twin meanwhile
                stored[0] = found[1]
                return
            db.execute(
                "INSERT INTO releases (request_id, digest, state, noise_multiplier, sample_rate, draws, reserved_at, "
                "plan_id) VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?)",
                (
                    request_id,
                    digest,
                    event.noise_multiplier,
                    event.sample_rate,
                    event.count,
                    time.time(),
                    self._plan_for(request_id, event),
                ),
            )

        self._checked_write(write, full_check)
        return stored[0]

    def _existing_release(self, request_id: str, digest: str) -> tuple[str, bytes | None] | None:
        """(state, reply) of an earlier reservation of ``request_id``; refuses a reuse with other contents."""
        rows = self._read("SELECT digest, state, reply FROM releases WHERE request_id = ?", (request_id,))
        if not rows:
            return None
        stored_digest, state, reply = rows[0]
        if stored_digest != digest:
            raise LedgerConflict(
                f"request id {request_id!r} was already used for a different request", stored_digest=stored_digest
            )
        return state, (bytes(reply) if state == "released" and reply is not None else None)

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before anything is read: committed on return, rolled back on
        any exception (a refusal included, which writes nothing)."""
        with self._mutex:
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
        check: Callable[[list[SampledGaussianEvent]], object],
    ) -> None:
        """Hold a whole run's releases; repeating an accepted plan (a resumed run) is a no-op."""

        def conflicts() -> bool:
            """True when the plan is already held (a resumed run); raises when its id or prefix clash."""
            row = self._read("SELECT digest FROM plans WHERE plan_id = ?", (plan_id,))
            if row:
                if row[0][0] != digest:
                    raise LedgerConflict(
                        f"plan id {plan_id!r} was already used for a different plan", stored_digest=row[0][0]
                    )
                return True
            for other in self.plans():
                if other.request_prefix.startswith(request_prefix) or request_prefix.startswith(other.request_prefix):
                    raise LedgerConflict(
                        f"request prefix {request_prefix!r} overlaps that of plan {other.plan_id!r}: "
                        "each plan needs request ids of its own"
                    )
            taken = self._read(
                "SELECT COUNT(*) FROM releases WHERE substr(request_id, 1, length(?)) = ?",
                (request_prefix, request_prefix),
            )[0][0]
            if taken:
                raise LedgerConflict(f"{taken} releases already use request ids starting with {request_prefix!r}")
            return False

        if conflicts():
            return

        def write(db: sqlite3.Connection) -> None:
            if conflicts():  # the same plan held by a concurrent twin meanwhile
                return
            db.execute(
                "INSERT INTO plans (plan_id, digest, request_prefix, noise_multiplier, sample_rate, releases, "
                "reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (plan_id, digest, request_prefix, event.noise_multiplier, event.sample_rate, event.count, time.time()),
            )

        self._checked_write(write, lambda committed: check(committed + [event]))

    def cancel_plan(self, plan_id: str) -> PlanRow:
        """Free what an abandoned run still holds (an operator's decision); its releases stay spent."""
        with self._mutex:
            cur = self._db.execute(
                "UPDATE plans SET cancelled_at = ? WHERE plan_id = ? AND cancelled_at IS NULL", (time.time(), plan_id)
            )
            if cur.rowcount != 1:
                raise ValueError(f"no open plan {plan_id!r} in the ledger")
        return next(p for p in self.plans() if p.plan_id == plan_id)

    def record_reply(self, request_id: str, reply: bytes) -> None:
        """Store the answer durably; only after this returns may it leave the owner."""
        with self._mutex:
            cur = self._db.execute(
                "UPDATE releases SET state = 'released', reply = ?, released_at = ? "
                "WHERE request_id = ? AND state = 'reserved'",
                (sqlite3.Binary(reply), time.time(), request_id),
            )
            if cur.rowcount != 1:
                raise RuntimeError(f"no open reservation for request {request_id!r}")

    # ------------------------------------------------------------ the audit trail

    def audit(
        self,
        *,
        peer: str,
        method: str,
        kind: str,
        request_id: str = "",
        code: str = "",
        detail: str = "",
        epsilon_committed: float | None = None,
    ) -> None:
        """Append one request to the audit trail (``code`` empty: answered; else the refusal code)."""
        values = (
            time.time(),
            peer[:AUDIT_DETAIL_CHARS],
            method[:64],
            kind[:64],
            request_id[:AUDIT_DETAIL_CHARS],
            "refused" if code else "answered",
            code[:64],
            detail[:AUDIT_DETAIL_CHARS],
            epsilon_committed,
        )
        with self._immediate() as db:
            last = db.execute("SELECT chain FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            chain = _chain(last[0] if last else "", values)
            db.execute(
                "INSERT INTO audit (at, peer, method, kind, request_id, decision, code, detail, epsilon_committed, "
                "chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, chain),
            )

    def audit_rows(self) -> list[AuditRow]:
        rows = self._read(
            "SELECT seq, at, peer, method, kind, request_id, decision, code, detail, epsilon_committed "
            "FROM audit ORDER BY seq"
        )
        return [AuditRow(*r) for r in rows]

    def verify_audit(self) -> int | None:
        """The seq of the first audit row whose hash chain does not hold (altered or removed rows), or None."""
        previous, expected_seq = "", None
        for r in self._read(
            "SELECT seq, at, peer, method, kind, request_id, decision, code, detail, epsilon_committed, chain "
            "FROM audit ORDER BY seq"
        ):
            if expected_seq is not None and r[0] != expected_seq:
                return r[0]
            if _chain(previous, tuple(r[1:10])) != r[10]:
                return r[0]
            previous, expected_seq = r[10], r[0] + 1
        return None

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"


def _chain(previous: str, values: tuple) -> str:
    """The audit row's link: sha256 of the previous link and this row's values."""
    return hashlib.sha256((previous + json.dumps(list(values), default=str)).encode()).hexdigest()
