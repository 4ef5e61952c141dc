"""Shared fixtures: a small owner built from generated data, so unit tests need no dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from owner_node.config import Limits, OwnerConfig
from owner_node.service import OwnerService
from shared.compute.networks import NetworkSpec
from shared.compute.subspace import content_hash
from shared.images.image_set import ImageSet
from shared.images.npz import save_npz
from shared.wire.messages import FeatureRequest, KipStepRequest

NUM_CLASSES = 4
SPEC = NetworkSpec(width=8, depth=2, channels=1, image_size=16, num_classes=NUM_CLASSES)


def random_image_set(n: int, seed: int, num_classes: int = NUM_CLASSES, size: int = 16) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(num_classes)))


def make_owner_config(folder: Path, epsilon: float = 1.0, **limits) -> OwnerConfig:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "private.npz").exists():
        save_npz(folder / "private.npz", random_image_set(80, seed=1))
        save_npz(folder / "aux.npz", random_image_set(40, seed=2))
    return OwnerConfig(
        owner_id="test-owner",
        data_source="npz",
        data_path=folder / "private.npz",
        aux_path=folder / "aux.npz",
        ledger_path=folder / "ledger.sqlite",
        epsilon=epsilon,
        delta=1e-5,
        clip_norm=1.0,
        limits=replace(Limits(max_sample_rate=1.0, max_draws_per_request=50), **limits),
    )


@pytest.fixture
def owner_config(tmp_path: Path) -> OwnerConfig:
    return make_owner_config(tmp_path / "owner", epsilon=10.0)


@pytest.fixture
def owner(owner_config: OwnerConfig):
    service = OwnerService(owner_config)
    yield service
    service.close()


def feature_request(service: OwnerService, request_id: str = "r1", draws: int = 2, **overrides) -> FeatureRequest:
    aux_hash = content_hash(random_image_set(40, seed=2).images)
    base = dict(
        request_id=request_id,
        network=SPEC,
        network_seeds=tuple(range(11, 11 + draws)),
        augment_seeds=tuple(range(101, 101 + draws)),
        augmentation="color_crop_cutout_flip_scale_rotate",
        subspace_dim=6,
        aux_hash=aux_hash,
        expected_group_size=5.0,
        noise_multiplier=5.0,
    )
    base.update(overrides)
    return FeatureRequest(**base)


def kip_request(request_id: str = "k1", ipc: int = 1, **overrides) -> KipStepRequest:
    g = np.random.default_rng(0)
    images = g.normal(size=(NUM_CLASSES * ipc, 1, 16, 16)).astype(np.float32)
    base = dict(
        request_id=request_id,
        images=images,
        adam_m=np.zeros_like(images),
        adam_v=np.zeros_like(images),
        step=0,
        num_steps=2,
        expected_group_size=3.0,
        noise_multiplier=2.0,
        lr=0.01,
        reg=1e-6,
    )
    base.update(overrides)
    return KipStepRequest(**base)
