"""The owner reads its own images through owner.toml: folders and CSV manifests at any size and channel count."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from owner_node.config import OwnerConfig, write_config
from owner_node.data import public_normalization
from owner_node.service import OwnerService
from shared.images.image_set import ImageSet
from shared.images.npz import save_npz
from shared.wire.messages import FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import SPEC, feature_request, make_owner_config

CLASSES = ("benign", "malignant", "normal", "other")


def write_folder(root: Path, per_class: int, size: tuple[int, int], mode: str, seed: int) -> None:
    g = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = np.clip(g.normal(60 * c + 30, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"img{i}.png")
    (root / ".ipynb_checkpoints").mkdir(exist_ok=True)
    (root / "notes.txt").write_text("not an image")


def aux_set(n_per_class: int, channels: int, size: int, names: tuple[str, ...] = CLASSES) -> ImageSet:
    import torch

    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n_per_class * len(names), channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(len(images)) % len(names)
    return ImageSet(images, labels, names)


def owner_for(tmp_path: Path, **data) -> OwnerConfig:
    base = make_owner_config(tmp_path / "owner", epsilon=10.0)
    return replace(base, **data)


def test_owner_serves_an_rgb_image_folder_at_its_configured_size(tmp_path: Path) -> None:
    write_folder(tmp_path / "photos", per_class=6, size=(40, 30), mode="RGB", seed=1)
    save_npz(tmp_path / "aux.npz", aux_set(5, 3, 16))
    config = owner_for(
        tmp_path,
        data_source="image-folder",
        data_path=tmp_path / "photos",
        image_size=16,
        channels=3,
        aux_path=tmp_path / "aux.npz",
    )
    owner = OwnerService(config)
    try:
        info = owner.describe()
        assert info.image_shape == (3, 16, 16) and info.class_names == CLASSES
        assert info.class_counts == (6, 6, 6, 6)
        # No normalisation configured: the public auxiliary set's, never the private pixels'.
        assert info.normalization == pytest.approx(public_normalization(aux_set(5, 3, 16)))
        spec = replace(SPEC, channels=3)
        request = feature_request(owner, network=spec, aux_hash=owner.aux_hash, subspace_dim=4)
        assert isinstance(decode(owner.handle(encode(request))), FeatureReply)
        assert any((config.image_cache_dir).iterdir())  # decoded images cached beside the ledger
    finally:
        owner.close()


def test_owner_reads_a_csv_manifest_through_its_toml(tmp_path: Path) -> None:
    write_folder(tmp_path / "scans", per_class=4, size=(20, 20), mode="L", seed=2)
    rows = ["path,label,patient_id"]
    for c, name in enumerate(CLASSES):
        rows += [f"scans/{name}/img{i}.png,{name},p{c}{i // 2}" for i in range(4)]
    (tmp_path / "export.csv").write_text("\n".join(rows) + "\n")
    config = owner_for(tmp_path, data_source="csv", data_path=tmp_path / "export.csv", image_size=16, channels=1)
    save_npz(tmp_path / "owner" / "aux.npz", aux_set(5, 1, 16))
    path = tmp_path / "owner.toml"
    write_config(path, config)
    loaded = OwnerConfig.load(path)
    assert (loaded.data_source, loaded.image_size, loaded.channels, loaded.resize) == ("csv", 16, 1, "crop")
    owner = OwnerService(loaded)
    try:
        assert owner.describe().class_counts == (4, 4, 4, 4)
    finally:
        owner.close()


def test_class_names_of_private_and_public_sets_must_agree(tmp_path: Path) -> None:
    write_folder(tmp_path / "photos", per_class=3, size=(16, 16), mode="L", seed=3)
    save_npz(tmp_path / "aux.npz", aux_set(5, 1, 16, names=("malignant", "benign", "normal", "other")))
    config = owner_for(
        tmp_path,
        data_source="image-folder",
        data_path=tmp_path / "photos",
        image_size=16,
        channels=1,
        aux_path=tmp_path / "aux.npz",
    )
    with pytest.raises(ValueError, match="auxiliary set"):
        OwnerService(config)


def test_bad_data_sections_are_refused_with_clear_errors(tmp_path: Path) -> None:
    config = make_owner_config(tmp_path / "owner")
    path = tmp_path / "owner.toml"
    write_config(path, config)
    text = path.read_text()
    path.write_text(text.replace("[data]\n", "[data]\nimage_sise = 64\n"))
    with pytest.raises(ValueError, match="unknown \\[data\\] keys \\['image_sise'\\]"):
        OwnerConfig.load(path)
    with pytest.raises(ValueError, match="needs image_size and channels"):
        replace(config, data_source="image-folder", data_path=tmp_path)
    with pytest.raises(ValueError, match="channels"):
        replace(config, data_source="image-folder", data_path=tmp_path, image_size=16, channels=2)
    with pytest.raises(ValueError, match="normalization"):
        replace(config, normalization=(0.5, 0.0))
