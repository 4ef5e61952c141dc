"""Patient-level privacy: a patient (all its images, in every class) is one record. Patients are
Poisson-sampled, each patient's whole contribution is clipped to C, and so adding or removing one
patient moves a release by at most C, whatever its images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from owner_node.config import OwnerConfig, write_config
from owner_node.data import PrivateData, holdout_split, load_owner_images, patient_index
from owner_node.mechanism import clean_class_sums, patient_clipped_sums
from owner_node.randomness import SecureRandom
from owner_node.service import OwnerService
from shared.compute.networks import NetworkSpec, build_network, freeze
from shared.compute.statistic import public_subspace
from shared.images.image_set import ImageSet
from shared.run_choices import SIGNALS
from shared.wire.messages import ErrorReply, FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import feature_request, kip_request, make_owner_config

C = 1.0
SPEC = NetworkSpec(width=8, depth=2, channels=1, image_size=16, num_classes=4)
STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _others(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 4, torch.arange(n) // 3  # 3 images a patient


@pytest.mark.parametrize("signal", SIGNALS)
def test_removing_a_patient_with_many_images_in_several_classes_moves_the_sums_by_at_most_c(signal: str) -> None:
    images, labels, patients = _others()
    net = freeze(build_network(SPEC, 5))
    aux = torch.randn(30, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    subspace = public_subspace(net, aux, 6, signal, torch.arange(30) % 4)
    g = torch.Generator().manual_seed(1)
    patient = torch.randn(12, 1, 16, 16, generator=g) * 3
    patient[0] *= 1e30  # huge
    patient[1, 0, 3, 3] = float("nan")  # non-finite
    patient[2] = float("inf")
    patient_labels = torch.tensor([0, 1, 2, 3] * 3)  # every class
    base = clean_class_sums(net, subspace, images, labels, 7, STRATEGY, C, 4, signal, patients=patients)
    with_patient = clean_class_sums(
        net,
        subspace,
        torch.cat([images, patient]),
        torch.cat([labels, patient_labels]),
        7,
        STRATEGY,
        C,
        4,
        signal,
        patients=torch.cat([patients, torch.full((12,), int(patients.max()) + 1)]),
    )
    moved = float(torch.linalg.vector_norm(with_patient - base))
    assert moved <= C * (1 + 1e-6) + 1e-5, moved
    assert moved > 0.5  # the patient does contribute (its norm is clipped, not dropped)
    # Image-level clipping alone would let this patient move the sums by up to 12 C.
    image_level = clean_class_sums(
        net, subspace, torch.cat([images, patient]), torch.cat([labels, patient_labels]), 7, STRATEGY, C, 4, signal
    ) - clean_class_sums(net, subspace, images, labels, 7, STRATEGY, C, 4, signal)
    assert float(torch.linalg.vector_norm(image_level)) > 1.5 * C


def test_patient_clip_is_a_norm_bound_over_every_class_and_leaves_small_patients_alone() -> None:
    stats = torch.tensor([[0.6, 0.0], [0.0, 0.6], [0.6, 0.0], [0.1, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2])
    patients = torch.tensor([0, 0, 0, 1])
    sums = patient_clipped_sums(stats, labels, patients, 3, clip_norm=1.0)
    # patient 0: class 0 sum (1.2, 0), class 1 sum (0, 0.6): norm sqrt(1.8) -> scaled by 1/sqrt(1.8)
    scale = 1 / np.sqrt(1.8)
    assert torch.allclose(sums[0], torch.tensor([1.2 * scale, 0.0], dtype=torch.float64))
    assert torch.allclose(sums[1], torch.tensor([0.0, 0.6 * scale], dtype=torch.float64))
    assert torch.allclose(sums[2], torch.tensor([0.1, 0.0], dtype=torch.float64))  # under C: untouched


def test_patients_are_sampled_whole_at_the_one_rate() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    data = ImageSet(torch.randint(0, 256, (300, 1, 4, 4), generator=g, dtype=torch.uint8), labels, ("a", "b", "c"))
    patients = torch.arange(300) // 5  # 60 patients of 5 images, across classes
    private = PrivateData.from_image_set(data, (0.5, 0.25), patients)
    stream, included = SecureRandom(), torch.zeros(60)
    for _ in range(300):
        index = private.poisson_sample(private.sample_rates(20.0), stream)
        chosen = patients[index].unique()
        assert len(index) == 5 * len(chosen)  # every image of a chosen patient, no other
        included[chosen] += 1
    q = private.sample_rate(20.0)
    assert q == 20 / 100
    assert abs(float(included.mean()) / 300 - q) < 5 * (q * (1 - q) / (300 * 60)) ** 0.5


def _manifest_owner(tmp_path: Path, **changes) -> OwnerConfig:
    """A CSV manifest of 4 classes, 3 images a patient spread over the classes."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient_id"]
    for i in range(120):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,class{i % 4},p{i // 3:03d}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    base = make_owner_config(tmp_path / "owner")
    return replace(
        base,
        data_source="csv",
        data_path=tmp_path / "manifest.csv",
        image_size=16,
        channels=1,
        privacy_unit="patient",
        **changes,
    )


def test_owner_in_patient_mode_releases_says_so_and_refuses_per_image_methods(tmp_path: Path) -> None:
    config = _manifest_owner(tmp_path)
    write_config(tmp_path / "owner" / "owner.toml", config)
    assert OwnerConfig.load(tmp_path / "owner" / "owner.toml").privacy_unit == "patient"
    service = OwnerService(config)
    try:
        assert service.describe().privacy_unit == "patient" and service.data.num_patients == 40
        reply = decode(service.handle(encode(feature_request(service, "p1"))))
        assert isinstance(reply, FeatureReply)
        refused = decode(service.handle(encode(kip_request("k1"))))
        assert isinstance(refused, ErrorReply) and "patient" in refused.message
    finally:
        service.close()
    with pytest.raises(ValueError, match="CSV manifest"):
        replace(config, data_source="npz")
    with pytest.raises(ValueError, match="no 'mrn' column"):
        OwnerService(replace(config, patient_column="mrn"))


def test_holdout_in_patient_mode_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    config = _manifest_owner(tmp_path, holdout=0.25)
    images, held = load_owner_images(config, progress=False)
    assert held is not None and len(images.data) + len(held) == 120 and len(held) == 30  # 10 of 40 patients
    data = ImageSet(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.arange(9) % 3, ("a", "b", "c"))
    keep, out = holdout_split(data, 0.34, 0, patient_index([f"p{i // 3}" for i in range(9)]))
    assert set((keep // 3).tolist()).isdisjoint((out // 3).tolist())


def test_a_run_against_a_patient_mode_owner_reports_patient_level_privacy(tmp_path: Path) -> None:
    from deploy.run_settings import RunSettings
    from distiller_node.client import OwnerClient
    from distiller_node.pipeline import run_distillation
    from shared.images.npz import load_npz

    config = _manifest_owner(tmp_path, epsilon=10.0)
    service = OwnerService(config)
    try:
        cfg = RunSettings(
            preset="quick", epsilon=10.0, ipc=1, group_size=3.0, draws_per_request=2, eval_runs=1,
            width=8, draws=4, subspace_dim=4, iterations=3, eval_epochs=1,
        ).distiller_config()  # fmt: skip
        aux = load_npz(config.aux_path)
        run_distillation(OwnerClient(service.call, "h"), cfg, tmp_path / "run", aux, None, show_progress=False)
    finally:
        service.close()
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    assert report["privacy_unit"] == "patient" and "each patient's data" in report["guarantee"]
    assert "privacy unit:               patient" in (tmp_path / "run" / "privacy_report.txt").read_text()


@pytest.mark.parametrize("signal", SIGNALS)
def test_one_patient_written_two_ways_is_one_record_and_moves_a_release_by_at_most_c(
    tmp_path: Path, signal: str
) -> None:
    """Issue 25 item 4: "Zoë" composed (NFC) in some rows, decomposed (NFD, as macOS writes it) and with
    trailing spaces in others is one patient; compared raw it was two, each clipped to C (2C)."""
    import unicodedata

    config = _manifest_owner(tmp_path)
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    assert nfc != nfd
    rng = np.random.default_rng(3)
    bright = rng.integers(200, 256, (16, 16), dtype=np.uint8)  # one strong image, repeated: clipped sums align
    rows = (tmp_path / "manifest.csv").read_text().splitlines()
    for i, spelling in enumerate([nfc, nfc, nfc, nfd + "  ", nfd, f" {nfc}\t"]):
        Image.fromarray(bright, "L").save(tmp_path / "img" / f"zoe{i}.png")
        rows.append(f'img/zoe{i}.png,class0,"{spelling}"')
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    images, _ = load_owner_images(config, progress=False)
    assert images.patients is not None and int(images.patients.max()) + 1 == 41  # 40 + Zoë, once
    zoe = images.patients[-6:]
    assert len(zoe.unique()) == 1
    net = freeze(build_network(SPEC, 5))
    aux = torch.randn(30, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    subspace = public_subspace(net, aux, 6, signal, torch.arange(30) % 4)
    norm = (0.5, 0.25)

    def sums(keep: torch.Tensor) -> torch.Tensor:
        return clean_class_sums(
            net, subspace, images.data.images[keep], images.data.labels[keep], 7, STRATEGY, C, 4, signal,
            normalization=norm, patients=patient_index(images.patients[keep].tolist()),
        )  # fmt: skip

    everyone = torch.arange(len(images.data))
    moved = float(torch.linalg.vector_norm(sums(everyone) - sums(everyone[:-6])))
    assert moved <= C * (1 + 1e-6) + 1e-5, moved
    # The same rows grouped by the raw strings: three "patients", which together move the sums by > C.
    raw = torch.cat([images.patients[:-6], torch.tensor([40, 40, 40, 41, 42, 43])])
    split = clean_class_sums(
        net, subspace, images.data.images, images.data.labels, 7, STRATEGY, C, 4, signal, normalization=norm,
        patients=raw,
    ) - sums(everyone[:-6])  # fmt: skip
    assert float(torch.linalg.vector_norm(split)) > 1.5 * C


def _released_once(config: OwnerConfig, request_id: str) -> str | None:
    """Start an owner on ``config``, make one release, and return the unit its ledger records."""
    service = OwnerService(config)
    try:
        assert isinstance(decode(service.handle(encode(feature_request(service, request_id)))), FeatureReply)
        return service.ledger.privacy_unit()
    finally:
        service.close()


def test_releases_made_per_image_are_never_counted_as_patient_level(tmp_path: Path) -> None:
    """An image-level release protected a patient with m images only at about m x epsilon: an owner that
    switches its ledger to unit = "patient" must be refused; the other way (a stronger unit before) is safe."""
    patient = _manifest_owner(tmp_path)
    per_image = replace(patient, privacy_unit="image")
    assert _released_once(per_image, "i1") == "image"
    with pytest.raises(ValueError, match="privacy unit 'image'") as refused:
        OwnerService(patient)
    assert "group privacy" in str(refused.value)
    OwnerService(per_image).close()  # the ledger and its releases are untouched: the owner goes on per image

    fresh = _manifest_owner(tmp_path / "b")  # patient-level first, then per image: allowed, recorded as image
    assert _released_once(fresh, "p1") == "patient (column 'patient_id')"
    assert _released_once(replace(fresh, privacy_unit="image"), "p2") == "image"
    with pytest.raises(ValueError, match="group privacy"):
        OwnerService(fresh)


def test_patients_found_another_way_are_not_counted_as_the_same_records(tmp_path: Path) -> None:
    """Each file a patient, then patients by a column: a patient spanning several files was protected per file."""
    by_column = _manifest_owner(tmp_path, epsilon=10.0)
    assert _released_once(replace(by_column, patient_from="file"), "f1") == "patient (file)"
    with pytest.raises(ValueError, match=r"privacy unit 'patient \(file\)'.*group privacy"):
        OwnerService(by_column)


def test_dp_class_counts_drawn_per_image_are_not_reused_per_patient(tmp_path: Path) -> None:
    """The class counts are a release too: drawn at image sensitivity 1, they are refused to a patient-level owner."""
    patient = _manifest_owner(tmp_path, class_counts="dp", epsilon=10.0)
    OwnerService(replace(patient, privacy_unit="image")).close()  # draws and records the counts per image
    with pytest.raises(ValueError, match="group privacy"):
        OwnerService(patient)


def test_patient_mode_refuses_a_draw_whose_kept_image_statistics_exceed_the_owners_memory(tmp_path: Path) -> None:
    """Patient mode holds every sampled image's statistic until its patient is clipped: an unprojected
    gradient signal over a large sample is refused as too_large (max_basis_mb), before anything is reserved."""
    config = _manifest_owner(tmp_path, epsilon=10.0)
    config = replace(config, limits=replace(config.limits, max_basis_mb=1))
    service = OwnerService(config)
    try:
        net = replace(feature_request(service, "x").network, width=16)
        big = feature_request(service, "g1", signal="gradients", subspace_dim=0, network=net, expected_group_size=30.0)
        refused = decode(service.handle(encode(big)))
        assert isinstance(refused, ErrorReply) and refused.code == "too_large" and "patient mode" in refused.message
        assert service.ledger.rows() == []
        small = feature_request(service, "g2", signal="gradients", subspace_dim=0, network=net, expected_group_size=3.0)
        assert isinstance(decode(service.handle(encode(small))), FeatureReply)
    finally:
        service.close()
