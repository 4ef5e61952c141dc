"""Decoupled DP-KIP through the pipeline: estimates from stored releases, resumable optimisation,
KRR evaluation, and a small run on Fashion-MNIST that must beat chance by a wide margin."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deploy.cli import main
from distiller_node.config import OptimisationConfig
from distiller_node.kip_optimisation import KipDistiller, MomentEstimate
from distiller_node.optimisation import initial_state
from owner_node.ledger import Ledger
from shared.compute.moments import kip_projection, pack_moments, unpack_moments
from shared.compute.scattering import scattering_features
from shared.compute.statistic import class_sums
from shared.evaluation import krr_accuracy
from shared.images.errors import DataNotFound
from shared.images.fashion_mnist import fashion_mnist_root
from shared.wire.protocol import decode
from tests.second_accountant import check_reported

CLASSES = 3
KIP_SMALL_FLOOR = 0.30  # KRR on projected features from a noise start; measured 0.55 (chance 0.10)


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_estimate_sums_draws_and_class_rows() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(12) % CLASSES
    rows = class_sums(pack_moments(z), labels, CLASSES)
    est = MomentEstimate.from_releases(torch.stack([rows[None], rows[None]]).squeeze(1), torch.full((3,), 4.0))
    second, sums = unpack_moments(rows, 4)
    assert torch.allclose(est.second_moment, 2 * second, atol=1e-10)  # PSD already: unchanged
    assert torch.allclose(est.class_sums, 2 * sums)
    assert est.label_energy == pytest.approx(2 * 12 * (1 - 1 / CLASSES))
    with pytest.raises(ValueError):
        MomentEstimate.from_releases(torch.zeros(0, 3, 14), torch.ones(3))


def _distiller(iterations: int) -> KipDistiller:
    aux = _images(20, 1)
    projection = kip_projection(scattering_features(aux), 5)
    private = _images(30, 2)
    labels = torch.arange(30) % CLASSES
    rows = class_sums(pack_moments(projection.project(scattering_features(private))), labels, CLASSES)
    est = MomentEstimate.from_releases(rows[None], torch.full((CLASSES,), 10.0))
    cfg = OptimisationConfig(ipc=2, iterations=iterations, lr=0.05, checkpoint_every=3)
    return KipDistiller(est, projection, cfg)


def test_kip_optimisation_lowers_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    start = initial_state(CLASSES, 2, (1, 16, 16), seed=0)
    straight = _distiller(6).run(start, tmp_path / "a.pt", show_progress=False)
    assert straight.losses[-1] < straight.losses[0]
    _distiller(3).run(start, tmp_path / "b.pt", show_progress=False)
    resumed = _distiller(6).run(start, tmp_path / "b.pt", show_progress=False)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.losses == straight.losses


def test_aux_initialisation_takes_public_images_per_class() -> None:
    aux = _images(9, 3)
    labels = torch.tensor([2, 0, 1, 0, 1, 2, 0, 1, 2])
    state = initial_state(CLASSES, 2, (1, 16, 16), 0, "aux", (aux, labels))
    assert torch.equal(state.images, aux[torch.tensor([1, 3, 2, 4, 0, 5])])
    assert state.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="auxiliary images of class"):
        initial_state(CLASSES, 4, (1, 16, 16), 0, "aux", (aux, labels))


def test_krr_accuracy_is_perfect_when_the_test_set_is_the_support() -> None:
    x = _images(6, 4)
    y = torch.arange(6) % CLASSES
    assert krr_accuracy(x, y, x, y, CLASSES) == 1.0


KIP_SMALL = [
    "--preset",
    "kip-decoupled",
    "--init",  # from noise, so that everything the set knows comes from the releases
    "noise",
    "--private-subset",
    "6000",
    "--group-size",
    "25",
    "--draws",
    "20",
    "--draws-per-request",
    "10",
    "--iterations",
    "150",
    "--eval-runs",
    "1",
    "--eval-epochs",
    "20",
    "--no-progress",
]


def test_small_decoupled_kip_run_learns_far_above_chance(tmp_path: Path) -> None:
    try:
        fashion_mnist_root()
    except DataNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST must be installed for CI: {exc}")
        pytest.skip(str(exc))
    assert main(["simulate", "--out", str(tmp_path), *KIP_SMALL]) == 0
    out = tmp_path / "distiller"
    results = json.loads((out / "results.json").read_text())
    krr = results["krr_accuracy"]
    assert krr["projected"] > KIP_SMALL_FLOOR, krr  # chance is 0.10
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["signal"] == "kip" and report["epsilon_prv"] <= 1.0 and report["releases"] == 20
    assert "scattering" in report["sensitivity"]
    ledger = Ledger(tmp_path / "owner" / "ledger.sqlite")
    try:
        check_reported(ledger.events(), report["delta"], report["epsilon_prv"], report["epsilon_rdp"])
    finally:
        ledger.close()
    reply = decode((out / "signals" / "o0" / "batch_00000.msg").read_bytes())
    assert reply.noisy_sums.shape == (10, 10, 128 * 129 // 2 + 128)
    blob = torch.load(out / "synthetic.pt", weights_only=True)
    assert blob["images"].shape == (100, 1, 28, 28)
