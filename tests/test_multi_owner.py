"""Several owners: their noisy sums add up, and each owner's epsilon is reported on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.cli import main
from distiller_node.config import SamplingConfig
from distiller_node.sampling import check_compatible, make_plan
from distiller_node.signal_store import SignalStore
from shared.wire.messages import FeatureReply, OwnerInfo
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import decode, encode

INFO = dict(
    class_names=("a", "b"),
    image_shape=(1, 16, 16),
    normalization=(0.5, 0.5),
    aux_hash="h",
    clip_norm=1.0,
    limits={"max_sample_rate": 1.0, "max_draws_per_request": 10},
)


def _info(owner_id: str, counts: tuple[int, ...]) -> OwnerInfo:
    return OwnerInfo(owner_id=owner_id, class_counts=counts, **INFO)


def test_owners_get_the_noise_their_own_rate_needs() -> None:
    cfg = SamplingConfig(draws=20, draws_per_request=10, group_size=10.0, subspace_dim=4, width=8, depth=2)
    plan = make_plan(cfg, [_info("big", (1000, 1000)), _info("small", (100, 100))], [1.0, 1.0], 1e-5)
    big, small = plan.owners
    assert (big.sample_rate, small.sample_rate) == (0.01, 0.1)
    assert small.noise_multiplier > big.noise_multiplier  # higher q needs more noise for the same epsilon
    assert plan.batch(0, 1).noise_multiplier == small.noise_multiplier
    assert plan.batch(0, 0).request_id != plan.batch(0, 1).request_id
    for o in range(2):
        assert plan.planned_epsilon(o, "prv") == pytest.approx(1.0, abs=0.02)


def test_owners_that_disagree_cannot_be_combined() -> None:
    other = OwnerInfo(**{**INFO, "owner_id": "x", "class_counts": (5, 5), "aux_hash": "different"})
    with pytest.raises(ValueError, match="aux_hash"):
        check_compatible([_info("y", (5, 5)), other])
    with pytest.raises(ValueError, match="distinct"):
        check_compatible([_info("y", (5, 5)), _info("y", (5, 5))])


def test_stored_sums_and_group_sizes_add_over_owners(tmp_path: Path) -> None:
    store = SignalStore(tmp_path)
    sums = [np.full((3, 2, 4), v, dtype=np.float32) for v in (1.0, 2.0)]
    for o, (s, counts) in enumerate(zip(sums, [(10.0, 10.0), (5.0, 7.0)], strict=True)):
        reply = FeatureReply(f"r{o}", s, counts, 1.0, 1.0, (SampledGaussianEvent(1.0, 0.1, 3),))
        store.put(o, 0, encode(reply))
    signals = store.load(2, 1, [1, 2, 3], [4, 5, 6])
    assert torch.allclose(signals.noisy_sums, torch.full((3, 2, 4), 3.0))
    assert signals.expected_counts.tolist() == [15.0, 17.0]


def signal_to_noise(signals: Path) -> float:
    """Estimated signal power over noise power of the summed class sums a run received.

    Each owner adds N(0, sigma^2 C^2) per coordinate, so E||S||^2 = ||signal||^2 + k * sum(sigma^2 C^2).
    """
    owners = sorted(p for p in signals.iterdir() if p.is_dir())
    total, noise_power = None, 0.0
    for folder in owners:
        replies = [decode(f.read_bytes()) for f in sorted(folder.glob("batch_*.msg"))]
        sums = np.concatenate([r.noisy_sums for r in replies]).astype(np.float64)
        total = sums if total is None else total + sums
        noise_power += sums.shape[-1] * (replies[0].noise_multiplier * replies[0].clip_norm) ** 2
    power = float((total**2).sum(axis=-1).mean())
    return (power - noise_power) / noise_power


@pytest.mark.slow
def test_two_owners_beat_one_at_the_same_per_owner_epsilon(tmp_path: Path) -> None:
    """Owner 1 alone versus owners 1 and 2 together (disjoint halves), each at epsilon 0.1."""
    common = ["--preset", "quick", "--epsilon", "0.1", "--group-size", "25", "--eval-runs", "2", "--no-progress"]
    assert main(["simulate", "--out", str(tmp_path / "one"), "--private-subset", "10000", *common]) == 0
    two_owners = ["--owners", "2", "--private-subset", "20000"]
    assert main(["simulate", "--out", str(tmp_path / "two"), *two_owners, *common]) == 0
    one, two = (json.loads((tmp_path / n / "distiller" / "results.json").read_text()) for n in ("one", "two"))
    assert set(two["epsilon_by_owner"]) == {"owner-1", "owner-2"}
    assert all(e <= 0.1 for e in two["epsilon_by_owner"].values())
    # Two owners at the same sigma double the signal and add the noise variances: twice the SNR
    # (power). Accuracy follows only on average: at epsilon 0.1 one run's fresh noise moves it by
    # several points (one owner measured 64.1% and 69.1% in two runs), so accuracy is not compared.
    snr_one, snr_two = (signal_to_noise(tmp_path / n / "distiller" / "signals") for n in ("one", "two"))
    assert snr_two >= 1.4 * snr_one, (snr_one, snr_two)
    assert min(one["test_accuracy"]["mean"], two["test_accuracy"]["mean"]) > 0.5  # chance is 0.1
    report = json.loads((tmp_path / "two" / "distiller" / "privacy_report.json").read_text())
    assert report["combined_expected_group_size"] == 50.0 and len(report["owners"]) == 2
