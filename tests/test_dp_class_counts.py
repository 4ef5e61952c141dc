"""Class counts published with differential privacy: drawn once, paid for from the owner's budget in
the same ledger, read back unchanged at every restart, and the only counts anything else reveals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from owner_node.class_counts import COUNTS_RELEASE_ID, clipped_counts, counts_noise_multiplier
from owner_node.service import OwnerService
from shared.accounting import epsilon
from shared.wire.messages import FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, make_owner_config


def test_counts_are_public_by_default_and_cost_nothing(tmp_path: Path) -> None:
    service = OwnerService(make_owner_config(tmp_path, epsilon=5.0))
    try:
        assert service.describe().class_counts == (20, 20, 20, 20)
        assert service.ledger.rows() == []
        assert "number of private examples per class" in service.budget().public
    finally:
        service.close()


def test_dp_counts_are_one_ledgered_release_read_back_at_every_restart(tmp_path: Path) -> None:
    config = replace(make_owner_config(tmp_path, epsilon=5.0), class_counts="dp", class_counts_epsilon=0.5)
    service = OwnerService(config)
    try:
        published = service.describe().class_counts
        rows = service.ledger.rows()
        assert [r.request_id for r in rows] == [COUNTS_RELEASE_ID] and rows[0].state == "released"
        sigma = counts_noise_multiplier(config)
        assert rows[0].event.noise_multiplier == sigma and rows[0].event.sample_rate == 1.0
        assert epsilon([rows[0].event], config.delta, "prv") == pytest.approx(0.5, abs=0.02)
        assert service.budget().epsilon_prv == pytest.approx(0.5, abs=0.02)  # spent before any release
        assert all(n >= 1 for n in published)
        # Replies derive from the published counts only: q = g / min(published), expected q * n_c.
        reply = decode(service.handle(encode(feature_request(service, "r1", expected_group_size=1.0))))
        assert isinstance(reply, FeatureReply)
        q = min(1.0, 1.0 / min(published))
        assert reply.expected_counts == pytest.approx(tuple(q * n for n in published))
        assert any("published with DP" in fact for fact in service.budget().public)
    finally:
        service.close()
    again = OwnerService(config)
    try:
        assert again.describe().class_counts == published  # never redrawn, never paid twice
        assert [r.request_id for r in again.ledger.rows()].count(COUNTS_RELEASE_ID) == 1
    finally:
        again.close()


def test_noise_is_scaled_to_the_counts_sensitivity() -> None:
    labels = torch.tensor([0] * 30 + [1, 2, 2])
    assert clipped_counts(labels, 3, None, 10.0).tolist() == [30.0, 1.0, 2.0]  # image mode: exact counts
    patients = torch.tensor([0] * 30 + [1, 2, 2])  # patient 0 has 30 images in class 0
    counts = clipped_counts(labels, 3, patients, 10.0)
    assert counts.tolist() == pytest.approx([10.0, 1.0, 2.0])  # its vector clipped to norm 10
    without = clipped_counts(labels[30:], 3, patients[30:] - 1, 10.0)
    assert float(torch.linalg.vector_norm(counts - without)) <= 10.0 + 1e-9


def test_dp_counts_need_a_share_of_the_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_counts_epsilon"):
        replace(make_owner_config(tmp_path, epsilon=1.0), class_counts="dp", class_counts_epsilon=1.0)
    with pytest.raises(ValueError, match="class_counts"):
        replace(make_owner_config(tmp_path), class_counts="hidden")


def test_privacy_settings_survive_the_owner_config_file(tmp_path: Path) -> None:
    from owner_node.config import OwnerConfig, write_config

    config = replace(make_owner_config(tmp_path, epsilon=3.0), class_counts="dp", class_counts_epsilon=0.1)
    write_config(tmp_path / "owner.toml", config)
    loaded = OwnerConfig.load(tmp_path / "owner.toml")
    assert (loaded.class_counts, loaded.class_counts_epsilon, loaded.privacy_unit) == ("dp", 0.1, "image")
