"""The owner trusts nothing it is given (issue 25): bounded accounting, delta and config checks, the
ledger's filesystem, and the audit trail of every request."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import shared.accounting as accounting
from owner_node import ledger as ledger_module
from owner_node.budget import Budget, BudgetExceeded
from owner_node.config import Limits, OwnerConfig, check_delta_for_records, write_config
from owner_node.ledger import Ledger, LedgerUnsafe
from owner_node.service import OwnerService
from shared.accounting import (
    MAX_DISTINCT_EVENTS,
    MAX_PRV_POINTS,
    AccountingError,
    SampledGaussianEvent,
    accountable,
    epsilon,
    epsilon_lower_bound,
)
from shared.settings import SettingError
from shared.wire.messages import BudgetReport, BudgetRequest, DescribeRequest, ErrorReply, PlanRequest
from shared.wire.protocol import decode, encode
from shared.wire.rpc.errors import OwnerCallError
from tests.conftest import feature_request, make_owner_config
from tests.owner_process import prepare_tls_owner, start_owner_service, stop_owner_service, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def _code(service: OwnerService, request) -> str:
    reply = decode(service.handle(encode(request)))
    return reply.code if isinstance(reply, ErrorReply) else "ok"


def _plan(service: OwnerService, plan_id: str, total: int, **overrides) -> PlanRequest:
    template = feature_request(service, f"{plan_id}-run-0001", **overrides)
    return PlanRequest(plan_id, f"{plan_id}-run-", total, encode(template))


def _owner(tmp_path: Path, epsilon: float = 1.0, **changes) -> OwnerService:
    config = make_owner_config(tmp_path / "owner", epsilon=epsilon)
    return OwnerService(replace(config, **changes))


# ---------------------------------------------------------------- 1. bounded accounting


def test_a_hostile_plan_at_the_owners_floors_is_refused_with_bounded_accounting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25.1: sigma 0.3 and q 0.05 for 2,500 releases took 107 s and 3.9 GB; now PRV never builds
    a grid beyond its bound, and a cheap lower bound proves the budget exceeded."""
    from opacus.accountants.analysis.prv import Domain

    grids: list[int] = []
    original = Domain.create_aligned.__func__

    def spy(cls, t_min, t_max, dt):
        domain = original(cls, t_min, t_max, dt)
        grids.append(domain.size)
        return domain

    monkeypatch.setattr(Domain, "create_aligned", classmethod(spy))
    owner = _owner(tmp_path)
    try:
        plan = _plan(owner, "hostile", 2500, noise_multiplier=0.3, expected_group_size=1.0)
        reply = decode(owner.handle(encode(plan)))
        assert isinstance(reply, ErrorReply) and reply.code == "budget_exceeded", reply
        assert "at least" in reply.message  # proven on part of the composition
        assert grids and max(grids) <= MAX_PRV_POINTS
        assert owner.ledger.plans() == [] and owner.ledger.rows() == []
    finally:
        owner.close()


def test_plans_beyond_the_owners_release_limit_are_refused_before_accounting(tmp_path: Path) -> None:
    owner = _owner(tmp_path, limits=replace(Limits(max_sample_rate=1.0), max_releases_per_plan=100))
    try:
        reply = decode(owner.handle(encode(_plan(owner, "toolarge", 101, noise_multiplier=50.0))))
        assert isinstance(reply, ErrorReply) and reply.code == "too_large"
        assert "max_releases_per_plan" in reply.message
        assert _code(owner, _plan(owner, "accepted", 100, noise_multiplier=50.0)) == "ok"
    finally:
        owner.close()


def test_many_distinct_noise_levels_are_accounted_within_bounds_and_as_an_upper_bound() -> None:
    """A hostile distiller varying sigma per request made every later check slower (22 s at 200 pairs)."""
    events = [SampledGaussianEvent(1.25 * (1 + i * 0.001), 0.00833, 5) for i in range(200)]
    merged = accountable(events)
    assert len(merged) <= MAX_DISTINCT_EVENTS
    assert sum(e.count for e in merged) == 1000
    exact_rdp = accounting._rdp(events, 1e-5)  # the exact RDP composition, for comparison
    assert epsilon(events, 1e-5, "rdp") >= exact_rdp  # coarsening only ever raises epsilon
    assert epsilon(events, 1e-5, "rdp") <= 1.1 * exact_rdp


def test_lower_bound_is_below_the_accounted_epsilon() -> None:
    event = SampledGaussianEvent(1.25, 0.00833, 1000)
    assert 0.9 < epsilon_lower_bound([event], 1e-5) <= epsilon([event], 1e-5)


def test_the_budget_check_runs_outside_the_ledger_lock(tmp_path: Path) -> None:
    """A slow accountant (a large plan) must not hold back a release, a Budget call or a cancellation."""
    owner = _owner(tmp_path, epsilon=10.0)
    slow_started, finish = threading.Event(), threading.Event()
    real_check = owner.rule.check

    def slow_check(events):
        if any(e.count == 1234 for e in events):
            slow_started.set()
            finish.wait(30)
        return real_check(events)

    owner.rule.check = slow_check
    try:
        assert _code(owner, _plan(owner, "firstrun", 10, noise_multiplier=50.0)) == "ok"
        result: list[str] = []
        worker = threading.Thread(
            target=lambda: result.append(_code(owner, _plan(owner, "slowrun", 1234, noise_multiplier=50.0)))
        )
        worker.start()
        assert slow_started.wait(30)
        start = time.monotonic()
        assert _code(owner, feature_request(owner, "meanwhile", noise_multiplier=50.0)) == "ok"
        assert isinstance(decode(owner.handle(encode(BudgetRequest()))), BudgetReport)
        other = Ledger(owner.config.ledger_path)  # as `dpdistill budget --cancel-plan` opens it
        other.cancel_plan("firstrun")
        other.close()
        assert time.monotonic() - start < 20
        finish.set()
        worker.join(60)
        # The ledger changed while the slow check ran: it was checked again, then accepted.
        assert result == ["ok"]
        assert {p.plan_id for p in owner.ledger.plans()} == {"firstrun", "slowrun"}
    finally:
        finish.set()
        owner.close()


def test_a_reservation_is_rechecked_when_the_ledger_changed_during_its_check(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    seen: list[int] = []
    event = SampledGaussianEvent(5.0, 0.01, 3)

    def check(events):
        seen.append(sum(e.count for e in events))
        if len(seen) == 1:  # another writer reserves while this check runs
            ledger.reserve("other", "d-other", SampledGaussianEvent(5.0, 0.01, 7), lambda _: None)

    ledger.reserve("mine", "d-mine", event, check)
    assert seen == [3, 10]  # the second check saw the other release too
    assert {r.request_id for r in ledger.rows()} == {"mine", "other"}
    ledger.close()


# ---------------------------------------------------------------- 2. delta and accountant results


@pytest.mark.parametrize("unit, records", [("image", 100), ("patient", 7)])
def test_delta_at_or_above_one_over_n_is_refused(unit: str, records: int) -> None:
    with pytest.raises(ValueError, match=r"not below 1/n .* e\.g\."):
        check_delta_for_records(1.0 / records, records, unit)
    with pytest.raises(ValueError, match="patients" if unit == "patient" else "private records"):
        check_delta_for_records(0.5, records, unit)
    check_delta_for_records(0.1 / records, records, unit)


def test_owner_with_delta_half_does_not_start(tmp_path: Path) -> None:
    """Issue 25.2: delta = 0.5 with 80 records started and later reported negative epsilons."""
    with pytest.raises(ValueError, match="delta = 0.5 is not below 1/n"):
        _owner(tmp_path, delta=0.5)
    assert not (tmp_path / "owner" / "ledger.sqlite").exists()


@pytest.mark.parametrize("bad", [-0.49, float("nan"), float("inf")])
def test_an_accountant_result_that_is_not_an_epsilon_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    owner = _owner(tmp_path, epsilon=10.0)
    try:
        monkeypatch.setattr(accounting, "_prv_bounds", lambda events, delta: (bad, bad))
        with pytest.raises(AccountingError):
            epsilon([SampledGaussianEvent(1.0, 0.01, 1)], 1e-5)
        assert _code(owner, feature_request(owner, "r1", noise_multiplier=50.0)) == "accounting_failed"
        assert owner.ledger.rows() == []
    finally:
        owner.close()


def test_remaining_epsilon_is_never_above_the_budget() -> None:
    from owner_node.budget import remaining

    assert remaining(1.0, -0.49, -0.49) == 0.0  # before: "remaining 1.4922" for a budget of 1.0
    assert remaining(1.0, float("nan"), 0.1) == 0.0
    assert remaining(1.0, 0.25, 0.5) == pytest.approx(0.5)
    assert remaining(1.0, 0.0, 0.0) == 1.0


def test_budget_rule_refuses_beyond_the_budget(tmp_path: Path) -> None:
    rule = Budget(make_owner_config(tmp_path, epsilon=1.0))
    assert rule.check([SampledGaussianEvent(50.0, 0.01, 10)]) < 1.0
    with pytest.raises(BudgetExceeded):
        rule.check([SampledGaussianEvent(0.5, 0.05, 500)])


# ---------------------------------------------------------------- 3. config values


def _toml(tmp_path: Path, privacy: str = "", limits: str = "", data: str = "") -> Path:
    config = make_owner_config(tmp_path / "owner")
    path = tmp_path / "owner" / "owner.toml"
    write_config(path, config)
    text = path.read_text()
    for section, extra in (("[privacy]", privacy), ("[limits]", limits), ("[data]", data)):
        if extra:
            lines = text.splitlines()
            start = lines.index(section)
            keys = {line.split("=")[0].strip() for line in extra.splitlines() if "=" in line}
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
            body = [line for line in lines[start + 1 : end] if line.split("=")[0].strip() not in keys]
            lines = lines[: start + 1] + extra.splitlines() + body + lines[end:]
            text = "\n".join(lines) + "\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "section, line, key",
    [
        ("privacy", "epsilon = inf", "[privacy] epsilon"),
        ("privacy", "epsilon = 1e309", "[privacy] epsilon"),
        ("privacy", "epsilon = nan", "[privacy] epsilon"),
        ("privacy", 'epsilon = "1"', "[privacy] epsilon"),
        ("privacy", "clip_norm = inf", "[privacy] clip_norm"),
        ("privacy", "delta = -1e-5", "[privacy] delta"),
        ("privacy", "class_counts_patient_clip = inf", "[privacy] class_counts_patient_clip"),
        ("privacy", "class_counts_epsilon = nan", "[privacy] class_counts_epsilon"),
        ("limits", "max_activation_mb = inf", "[limits] max_activation_mb"),
        ("limits", "max_draws_per_request = 1.9", "[limits] max_draws_per_request"),
        ("limits", "max_draws_per_request = true", "[limits] max_draws_per_request"),
        ("limits", "min_noise_multiplier = nan", "[limits] min_noise_multiplier"),
        ("limits", "max_sample_rate = inf", "[limits] max_sample_rate"),
        ("limits", "max_releases_per_plan = 0", "[limits] max_releases_per_plan"),
        ("data", "normalization = [0.5, inf]", "[data] normalization std"),
        ("data", "holdout = nan", "[data] holdout"),
        ("data", "image_size = 28.5", "[data] image_size"),
    ],
)
def test_non_finite_and_mistyped_config_values_are_refused_naming_the_key(
    tmp_path: Path, section: str, line: str, key: str
) -> None:
    path = _toml(tmp_path, **{section: line})
    with pytest.raises(ValueError) as err:
        OwnerConfig.load(path)
    assert key in str(err.value)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown \[privacy\] keys \['epsilom'\]"):
        OwnerConfig.load(_toml(tmp_path, privacy="epsilom = 2.0"))


def test_distiller_settings_are_checked_too() -> None:
    from distiller_node.config import DistillerConfig, OptimisationConfig, SamplingConfig
    from shared.evaluation_config import EvaluationConfig

    for build, key in (
        (lambda: DistillerConfig(epsilon=float("inf"), delta=1e-5), "epsilon"),
        (lambda: SamplingConfig(draws=1.5), "sampling draws"),
        (lambda: SamplingConfig(group_size=float("nan")), "sampling group_size"),
        (lambda: OptimisationConfig(lr=float("inf")), "optimisation lr"),
        (lambda: EvaluationConfig(runs=0), "evaluation runs"),
    ):
        with pytest.raises(SettingError, match=key):
            build()


def test_owner_serve_refuses_an_infinite_budget_at_start(tmp_path: Path) -> None:
    path = _toml(tmp_path, privacy="epsilon = inf")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "budget", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "[privacy] epsilon" in proc.stderr + proc.stdout


# ---------------------------------------------------------------- 7. the ledger's filesystem


def test_a_ledger_on_a_network_filesystem_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(LedgerUnsafe, match="network filesystem"):
        Ledger(tmp_path / "ledger.sqlite")
    assert not (tmp_path / "ledger.sqlite").exists()
    fallback = Ledger(tmp_path / "ledger.sqlite", on_network_filesystem="rollback-journal")
    assert fallback.journal_mode == "delete"
    fallback.close()


def test_a_journal_mode_sqlite_did_not_take_is_refused(tmp_path: Path) -> None:
    # An in-memory database cannot run in WAL mode: SQLite answers "memory", which the ledger reads back.
    with pytest.raises(LedgerUnsafe, match="journal mode 'memory'"):
        Ledger(":memory:")


def test_the_local_ledger_runs_in_wal_mode(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.journal_mode == "wal" and ledger.filesystem not in ledger_module.NETWORK_FILESYSTEMS
    ledger.close()


def test_filesystem_type_reads_the_mount_table() -> None:
    assert ledger_module.filesystem_type("/proc/self") == "proc"


# ---------------------------------------------------------------- 8. the audit trail


def test_every_request_is_audited_with_its_peer_and_decision(tmp_path: Path) -> None:
    owner = _owner(tmp_path, epsilon=1.0)
    try:
        owner.handle(encode(DescribeRequest()), peer="relay-a at ipv4:10.0.0.5:4000")
        assert _code(owner, feature_request(owner, "ok-1", noise_multiplier=50.0)) == "ok"
        assert _code(owner, feature_request(owner, "probe", noise_multiplier=0.01)) == "noise_too_low"
        assert _code(owner, feature_request(owner, "greedy", draws=40, noise_multiplier=0.3)) == "budget_exceeded"
        owner.handle(b"\x00garbage")
        rows = owner.ledger.audit_rows()
        assert [(r.kind, r.decision, r.code) for r in rows] == [
            ("describe_request", "answered", ""),
            ("feature_request", "answered", ""),
            ("feature_request", "refused", "noise_too_low"),
            ("feature_request", "refused", "budget_exceeded"),
            ("undecodable", "refused", "bad_message"),
        ]
        assert rows[0].peer == "relay-a at ipv4:10.0.0.5:4000" and rows[1].peer == "in-process"
        assert [r.request_id for r in rows[1:4]] == ["ok-1", "probe", "greedy"]
        assert rows[1].epsilon_committed is not None and rows[1].epsilon_committed > rows[0].epsilon_committed
        assert rows[3].epsilon_committed == rows[1].epsilon_committed  # a refusal spends nothing
        assert owner.ledger.verify_audit() is None
    finally:
        owner.close()


def test_the_audit_trail_is_append_only_and_tampering_shows(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for i in range(3):
        ledger.audit(peer="p", method="Release", kind="feature_request", request_id=f"r{i}", epsilon_committed=0.1)
    ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    for sql in ("UPDATE audit SET code = 'x'", "DELETE FROM audit WHERE seq = 2"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    # Someone with write access who drops the triggers and edits a row is still found out by the chain.
    db.execute("DROP TRIGGER audit_append_only_update")
    db.execute("UPDATE audit SET request_id = 'forged' WHERE seq = 2")
    db.commit()
    db.close()
    assert Ledger(tmp_path / "ledger.sqlite").verify_audit() == 2


def test_a_probe_over_mutual_tls_is_audited_with_the_relay_certificate(tmp_path: Path) -> None:
    setup = prepare_tls_owner(tmp_path, epsilon=1.0)
    proc = start_owner_service(setup.config_path, setup.log)
    channel = setup.channel()
    try:
        wait_ready(channel, proc, setup.log)
        with pytest.raises(OwnerCallError):
            channel.call("Release", b"\x01not a message")
    finally:
        channel.close()
        stop_owner_service(proc)
    rows = Ledger(setup.config.ledger_path).audit_rows()
    probe = [r for r in rows if r.decision == "refused"]
    assert probe and probe[-1].code == "bad_message" and probe[-1].method == "Release"
    assert "relay-a" in probe[-1].peer and "127.0.0.1" in probe[-1].peer


def test_budget_audit_and_report_commands(tmp_path: Path) -> None:
    owner = _owner(tmp_path, epsilon=1.0)
    try:
        assert _code(owner, _plan(owner, "runone", 20, noise_multiplier=20.0)) == "ok"
        assert _code(owner, feature_request(owner, "runone-run-0001", noise_multiplier=20.0)) == "ok"
        assert _code(owner, feature_request(owner, "probe", noise_multiplier=0.01)) == "noise_too_low"
        path = tmp_path / "owner" / "owner.toml"
        write_config(path, owner.config)
    finally:
        owner.close()
    out = tmp_path / "page"
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "budget", "--config", str(path), "--audit", "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "audit trail: 3 requests, 1 refused; chain intact" in proc.stdout
    assert "noise_too_low" in proc.stdout
    page = (out / "budget.html").read_text()
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "data:image/png;base64," in page and "runone" in page and "noise_too_low" in page
    data = json.loads((out / "budget.json").read_text())
    assert data["audit_chain_intact"] and len(data["refusals"]) == 1 and data["plans"][0]["plan_id"] == "runone"
    assert (out / "budget.png").stat().st_size > 1000
