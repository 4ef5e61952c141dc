"""The distiller plans under the owner's own rules, and the owner accepts or refuses a whole run up front."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from distiller_node.client import OwnerClient, OwnerRefused
from distiller_node.config import DistillerConfig, OptimisationConfig, SamplingConfig
from distiller_node.pipeline import run_distillation
from distiller_node.sampling import make_plan
from owner_node.ledger import Ledger
from owner_node.service import OwnerService
from shared.accounting import epsilon
from shared.evaluation_config import EvaluationConfig
from shared.images.npz import load_npz
from shared.wire.messages import ErrorReply, OwnerInfo, PlanReply
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import decode, encode
from tests.conftest import make_owner_config, random_image_set

SAMPLING = SamplingConfig(
    draws=40, draws_per_request=10, group_size=4.0, subspace_dim=4, width=8, depth=2, augmentation="none"
)


def service(tmp_path: Path, **changes) -> OwnerService:
    return OwnerService(replace(make_owner_config(tmp_path / "owner", epsilon=1.0), **changes))


def test_describe_publishes_every_rule_a_plan_must_respect(tmp_path: Path) -> None:
    owner = service(tmp_path, accountant="rdp", delta=1e-6)
    try:
        info = decode(owner.handle(encode_describe()))
        assert isinstance(info, OwnerInfo)
        assert (info.accountant, info.delta, info.epsilon_budget, info.noise_sampler) == ("rdp", 1e-6, 1.0, "csprng")
        for key in ("max_draws_per_request", "max_sample_rate", "min_noise_multiplier", "max_message_bytes"):
            assert key in info.limits
    finally:
        owner.close()


def encode_describe() -> bytes:
    from shared.wire.messages import DescribeRequest

    return encode(DescribeRequest())


def test_plan_uses_the_owners_accountant_and_delta(tmp_path: Path) -> None:
    owner = service(tmp_path, accountant="rdp", delta=1e-6)
    try:
        info = OwnerClient(owner.call).describe()
        plan = make_plan(SAMPLING, [info], [1.0], delta=1e-5, accountant="prv")
        share = plan.owners[0]
        assert (share.accountant, share.delta) == ("rdp", 1e-6)
        spent = epsilon([SampledGaussianEvent(share.noise_multiplier, share.sample_rate, 40)], 1e-6, "rdp")
        assert 0.95 < spent <= 1.0
    finally:
        owner.close()


def test_an_rdp_owner_refuses_a_prv_plan_before_its_first_release(tmp_path: Path) -> None:
    """The bug: a plan made under PRV at the distiller's delta is refused part-way by an RDP owner."""
    owner = service(tmp_path, accountant="rdp")
    try:
        client = OwnerClient(owner.call, retry_window_s=0)
        info = client.describe()
        prv_plan = make_plan(SAMPLING, [replace(info, accountant="prv")], [1.0], 1e-5)
        with pytest.raises(OwnerRefused) as refused:
            client.reserve(prv_plan.reservation(0))
        assert refused.value.code == "budget_exceeded" and "RDP" in str(refused.value)
        assert owner.ledger.events() == [] and owner.ledger.plans() == []
        # Planned under the owner's own rules, the same run is accepted and every release goes through.
        plan = make_plan(SAMPLING, [info], [1.0], 1e-5)
        accepted = client.reserve(plan.reservation(0))
        assert accepted.event.count == 40 and accepted.accountant == "rdp"
        for b in range(plan.num_batches):
            client.release(plan.batch(b))
        assert owner.budget().epsilon_rdp <= 1.0 and owner.budget().num_draws == 40
        assert owner.ledger.outstanding() == []
    finally:
        owner.close()


def test_an_accepted_plan_holds_its_budget_against_other_requests(tmp_path: Path) -> None:
    owner = service(tmp_path)
    try:
        client = OwnerClient(owner.call, retry_window_s=0)
        info = client.describe()
        plan = make_plan(SAMPLING, [info], [0.95], 1e-5)
        client.reserve(plan.reservation(0))
        assert owner.budget().reserved_releases == 40 and owner.budget().num_draws == 0
        assert owner.budget().epsilon_remaining < 0.1
        # Another run's request (other ids) cannot take what the plan holds ...
        other = make_plan(SAMPLING, [info], [1.0], 1e-5)
        with pytest.raises(OwnerRefused) as refused:
            client.release(other.batch(0))
        assert refused.value.code == "budget_exceeded"
        with pytest.raises(OwnerRefused):
            client.reserve(other.reservation(0))
        # ... while the plan's own releases all go through.
        for b in range(plan.num_batches):
            client.release(plan.batch(b))
        assert owner.budget().reserved_releases == 0 and owner.budget().num_draws == 40
    finally:
        owner.close()


def test_repeating_a_plan_is_a_no_op_and_a_changed_plan_under_its_id_is_refused(tmp_path: Path) -> None:
    owner = service(tmp_path, epsilon=10.0)
    try:
        client = OwnerClient(owner.call, retry_window_s=0)
        plan = make_plan(SAMPLING, [client.describe()], [1.0], 1e-5)
        client.reserve(plan.reservation(0))
        client.release(plan.batch(0))
        client.reserve(plan.reservation(0))  # a resumed run asks again
        assert owner.budget().reserved_releases == 30 and len(owner.ledger.plans()) == 1
        changed = replace(plan.reservation(0), total_releases=41)
        reply = decode(owner.handle(encode(changed)))
        assert isinstance(reply, ErrorReply) and reply.code == "id_conflict"
    finally:
        owner.close()


def test_a_plan_that_breaks_a_limit_is_refused_and_holds_nothing(tmp_path: Path) -> None:
    owner = service(tmp_path, epsilon=10.0)
    try:
        client = OwnerClient(owner.call, retry_window_s=0)
        # A distiller that ignores the published cap (make_plan itself would refuse it).
        planned = make_plan(replace(SAMPLING, draws=120), [client.describe()], [1.0], 1e-5)
        too_many = replace(planned, draws_per_request=60)
        reply = decode(owner.handle(encode(too_many.reservation(0))))
        assert isinstance(reply, ErrorReply) and reply.code == "too_many_draws"
        plan = make_plan(SAMPLING, [client.describe()], [1.0], 1e-5)
        foreign = replace(plan.reservation(0), request_prefix="someone-elses-")
        reply = decode(owner.handle(encode(foreign)))
        assert isinstance(reply, ErrorReply) and "prefix" in reply.message
        garbage = replace(plan.reservation(0), template=b"not a message")
        assert decode(owner.handle(encode(garbage))).code == "bad_message"
        nested = replace(plan.reservation(0), template=encode(plan.reservation(0)))  # a plan inside a plan
        assert "release request" in decode(owner.handle(encode(nested))).message
        assert "release request" in decode(owner.handle(encode(replace(nested, template=encode_describe())))).message
        for total in (0, -3, 10**8):
            reply = decode(owner.handle(encode(replace(plan.reservation(0), total_releases=total))))
            assert isinstance(reply, ErrorReply) and "total_releases" in reply.message
        assert owner.ledger.plans() == [] and owner.ledger.events() == []
    finally:
        owner.close()


def test_cancelling_an_abandoned_plan_frees_its_reserve(tmp_path: Path) -> None:
    owner = service(tmp_path)
    try:
        client = OwnerClient(owner.call, retry_window_s=0)
        plan = make_plan(SAMPLING, [client.describe()], [0.9], 1e-5)
        client.reserve(plan.reservation(0))
        client.release(plan.batch(0))
        owner.ledger.cancel_plan(plan.reservation(0).plan_id)
        report = owner.budget()
        assert report.reserved_releases == 0 and report.num_draws == 10
        assert report.epsilon_remaining > 0.3
    finally:
        owner.close()


def test_a_ledger_from_before_plans_opens_and_keeps_its_releases(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE releases (request_id TEXT PRIMARY KEY, digest TEXT NOT NULL, state TEXT NOT NULL, "
        "noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, draws INTEGER NOT NULL, reply BLOB, "
        "reserved_at REAL NOT NULL, released_at REAL);"
        "INSERT INTO releases VALUES ('old-1', 'd', 'released', 1.5, 0.01, 25, x'00', 1.0, 2.0);"
    )
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.events() == [SampledGaussianEvent(1.5, 0.01, 25)] and ledger.plans() == []
    finally:
        ledger.close()


@pytest.mark.parametrize("accountant, owner_delta", [("rdp", 1e-5), ("prv", 1e-6)])
def test_whole_run_against_an_owner_with_other_rules_completes_within_its_budget(
    tmp_path: Path, accountant: str, owner_delta: float
) -> None:
    """The default rules of the distiller (PRV, delta 1e-5) differ from the owner's: the run must adapt."""
    owner = service(tmp_path, accountant=accountant, delta=owner_delta)
    try:
        client = OwnerClient(owner.call, retry_window_s=0, log=lambda *_: None)
        cfg = DistillerConfig(
            epsilon=1.0,
            delta=1e-5,
            sampling=replace(SAMPLING, draws=20, draws_per_request=5),
            optimisation=OptimisationConfig(ipc=1, iterations=5, checkpoint_every=100),
            evaluation=EvaluationConfig(runs=1, epochs=1, width=8, depth=2),
        )
        aux = load_npz(tmp_path / "owner" / "aux.npz")
        results = run_distillation(client, cfg, tmp_path / "run", aux, random_image_set(20, seed=9), False)
        report = owner.budget()
        spent = report.epsilon_rdp if accountant == "rdp" else report.epsilon_prv
        assert report.num_draws == 20 and 0.9 < spent <= 1.0 and report.delta == owner_delta
        assert results["delta"] == owner_delta
        # A resumed run repeats the reservation without holding anything twice.
        run_distillation(client, cfg, tmp_path / "run", aux, random_image_set(20, seed=9), False)
        assert owner.budget().num_draws == 20 and owner.budget().reserved_releases == 0
    finally:
        owner.close()


def test_plan_reply_round_trips() -> None:
    reply = PlanReply("p", SampledGaussianEvent(1.2, 0.01, 7), 0.5, "rdp", 1e-6)
    assert decode(encode(reply)) == reply
