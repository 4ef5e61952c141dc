"""Imbalanced classes: every class is sampled at one rate q = g / n_min, so a rare class no longer
forces a tiny group on the large ones; the distiller rescales each class to q * n_c, lowers the group
size to what the owners' caps allow instead of failing, and the owner bounds its compute per draw."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deploy.run_settings import RunSettings
from distiller_node.config import SamplingConfig
from distiller_node.methods import step_for_plan
from distiller_node.sampling import SamplingPlan, effective_group_size, make_plan
from owner_node.data import PrivateData
from owner_node.randomness import SecureRandom
from owner_node.service import OwnerService
from shared.images.image_set import ImageSet
from shared.images.npz import save_npz
from shared.wire.messages import ErrorReply, FeatureReply, OwnerInfo
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, make_owner_config

COUNTS = (400, 20, 100, 40)  # 20:1 between the largest and the smallest class


def imbalanced(counts: tuple[int, ...] = COUNTS, seed: int = 3) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 1, 16, 16), generator=g, dtype=torch.uint8)
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(len(counts))))


def test_every_class_is_sampled_at_the_rate_of_the_smallest() -> None:
    data = PrivateData.from_image_set(imbalanced(), (0.5, 0.25))
    q = data.sample_rate(5.0)
    assert q == 5.0 / 20 and data.sample_rates(5.0) == [q] * 4
    assert data.expected_sample(5.0) == pytest.approx(q * sum(COUNTS))
    stream = SecureRandom()
    draws = 400
    counts = torch.zeros(4)
    for _ in range(draws):
        counts += torch.bincount(data.labels[data.poisson_sample(data.sample_rates(5.0), stream)], minlength=4)
    for c, n in enumerate(COUNTS):  # mean count q * n_c, within 5 standard errors
        mean, se = q * n, (n * q * (1 - q) / draws) ** 0.5
        assert abs(counts[c] / draws - mean) < 5 * se


def test_owner_reports_each_class_expected_count_and_bounds_its_compute(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path, max_sample_per_draw=100)
    save_npz(config.data_path, imbalanced())
    service = OwnerService(config)
    try:
        reply = decode(service.handle(encode(feature_request(service, "ok", expected_group_size=3.0))))
        assert isinstance(reply, FeatureReply)
        q = 3.0 / 20
        assert reply.expected_counts == pytest.approx(tuple(q * n for n in COUNTS))
        assert service.ledger.rows()[0].event.sample_rate == pytest.approx(q)
        # q = 0.25 means 140 records per draw, above this owner's limit of 100: refused, nothing spent
        refused = decode(service.handle(encode(feature_request(service, "big", expected_group_size=5.0))))
        assert isinstance(refused, ErrorReply) and refused.code == "too_large" and "records per draw" in refused.message
        assert [r.request_id for r in service.ledger.rows()] == ["ok"]
    finally:
        service.close()


def _info(counts: tuple[int, ...], **limits) -> OwnerInfo:
    return OwnerInfo(
        owner_id="h",
        class_names=tuple(f"c{i}" for i in range(len(counts))),
        class_counts=counts,
        image_shape=(1, 16, 16),
        normalization=(0.5, 0.5),
        aux_hash="h",
        clip_norm=1.0,
        limits={"max_sample_rate": 0.05, "max_draws_per_request": 10, **limits},
    )


def test_distiller_lowers_the_group_size_to_the_owners_caps_and_says_so() -> None:
    """A class of 129 images used to refuse the default group size of 50 (rate 0.39 > cap 0.05)."""
    info = _info((6000, 129, 3000))
    g = effective_group_size(50.0, [info])
    assert g < 0.05 * 129 and g == pytest.approx(0.05 * 129)
    said = []
    cfg = SamplingConfig(draws=20, draws_per_request=10, group_size=50.0, subspace_dim=4, width=8, depth=2)
    plan = make_plan(cfg, [info], [1.0], 1e-5, log=said.append)
    assert plan.group_size == g and plan.owners[0].sample_rate <= 0.05
    assert any("lowered from 50 to 6.45" in s for s in said)
    # The compute cap binds too: 2,000 records per draw over 9,129 allow g = 2000 * 129 / 9129.
    capped = effective_group_size(50.0, [_info((6000, 129, 3000), max_sample_per_draw=200)])
    assert capped == pytest.approx(200 * 129 / 9129)
    # Balanced data within the caps: the group size is kept as asked.
    assert effective_group_size(50.0, [replace(info, class_counts=(6000, 6000, 6000))]) == 50.0


def test_a_lowered_group_size_is_accepted_by_the_owner(tmp_path: Path) -> None:
    """g = cap * n_min (less a margin) must not round to a rate above the owner's cap."""
    config = make_owner_config(tmp_path, max_sample_rate=0.05)
    save_npz(config.data_path, imbalanced((400, 23, 100, 40)))
    service = OwnerService(config)
    try:
        g = effective_group_size(50.0, [service.describe()])
        reply = decode(service.handle(encode(feature_request(service, "g", expected_group_size=g))))
        assert isinstance(reply, FeatureReply), reply
    finally:
        service.close()


def test_a_lowered_group_keeps_the_planned_work_and_step_down_to_its_floor(tmp_path: Path) -> None:
    """The default preset's group was chosen with draws x group and lr x group^2 held fixed; where a smaller
    export's classes lower the group, the draws and the step follow it, down to scale_down_to."""
    default = RunSettings().distiller_config()
    opt = default.optimisation
    cfg = replace(default.sampling, draws_per_request=10, subspace_dim=4, width=8, depth=2)
    planned, draws, floor = cfg.group_size, cfg.draws, cfg.scale_down_to
    assert planned > floor > 0
    said: list[str] = []
    # The owner's rate cap (0.05) on a smallest class of 20 x the floor allows a group of the floor.
    plan = make_plan(cfg, [_info((6000, round(20 * floor), 6000))], [1.0], 1e-5, log=said.append)
    group = plan.group_size
    assert group == pytest.approx(floor) and any(f"draws raised from {draws} to" in s for s in said)
    assert len(plan.network_seeds) * group == pytest.approx(draws * planned, rel=0.01)
    assert step_for_plan(opt, plan).lr * group**2 == pytest.approx(opt.lr * planned**2)
    assert plan.planned_epsilon(0) == pytest.approx(1.0, abs=0.01)  # the noise is for the draws made
    # At the floor, and below it, the run is the earlier default's: 200 draws, lr 0.3.
    small = make_plan(cfg, [_info((6000, 129, 3000))], [1.0], 1e-5, log=said.append)
    for p in (plan, small):
        assert len(p.network_seeds) == 200 and step_for_plan(opt, p).lr == pytest.approx(0.3)
    # Within the caps, or with no floor, nothing changes.
    for kept in (
        make_plan(cfg, [_info((6000, 6000, 6000))], [1.0], 1e-5, log=said.append),
        make_plan(replace(cfg, scale_down_to=0.0), [_info((6000, 129, 3000))], [1.0], 1e-5, log=said.append),
    ):
        assert len(kept.network_seeds) == draws and kept.step_scale == 1.0
        assert step_for_plan(opt, kept) == opt
    plan.save(tmp_path / "plan.json")  # a resumed run takes the same step
    assert SamplingPlan.load(tmp_path / "plan.json").step_scale == plan.step_scale
