"""Optimisation stage: learns the released statistics, resumes exactly from a checkpoint, PEA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distiller_node.config import OptimisationConfig
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import (
    Distiller,
    decode_pea,
    encode_pea,
    initial_state,
    pea_start,
    training_images,
)
from distiller_node.signal_store import Signals
from tests.conftest import SPEC

K = 5


def _signals(draws: int = 4) -> Signals:
    g = torch.Generator().manual_seed(0)
    return Signals(
        noisy_sums=torch.randn(draws, 4, K, generator=g) * 3,
        expected_counts=torch.full((4,), 10.0, dtype=torch.float64),
        network_seeds=list(range(draws)),
        augment_seeds=list(range(100, 100 + draws)),
    )


def _distiller(cfg: OptimisationConfig) -> Distiller:
    aux = torch.randn(30, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return Distiller(_signals(), NetworkCache(SPEC, aux, K, 1 << 28), "crop_flip_scale", 1.0, cfg)


def test_loss_goes_down() -> None:
    cfg = OptimisationConfig(ipc=2, iterations=60, lr=0.3, checkpoint_every=1000)
    result = _distiller(cfg).run(initial_state(4, 2, (1, 16, 16), 0), show_progress=False)
    assert sum(result.losses[-10:]) < 0.8 * sum(result.losses[:10])


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = OptimisationConfig(ipc=2, iterations=20, lr=0.3, checkpoint_every=5)
    straight = _distiller(cfg).run(initial_state(4, 2, (1, 16, 16), 0), tmp_path / "a.pt", show_progress=False)
    first_half = replace(cfg, iterations=10)
    _distiller(first_half).run(initial_state(4, 2, (1, 16, 16), 0), tmp_path / "b.pt", show_progress=False)
    resumed = _distiller(cfg).run(initial_state(4, 2, (1, 16, 16), 0), tmp_path / "b.pt", show_progress=False)
    assert torch.allclose(straight.images, resumed.images, atol=1e-6)
    assert torch.allclose(straight.ema, resumed.ema, atol=1e-6)
    assert resumed.iteration == 20 and len(resumed.losses) == 20


def test_pea_reads_each_image_as_four_upsampled_quadrants() -> None:
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, :2, :2] = 1.0  # top-left quadrant only
    out = decode_pea(img)
    assert out.shape == (4, 1, 4, 4)
    assert torch.allclose(out[0], torch.ones(1, 4, 4)) and out[1:].abs().max() == 0
    x, y = training_images(torch.randn(8, 1, 16, 16), torch.arange(4).repeat_interleave(2), pea=True)
    assert x.shape == (32, 1, 16, 16) and y.bincount().tolist() == [8, 8, 8, 8]


@pytest.mark.parametrize("size", [16, 15])
def test_a_pea_start_from_real_images_reads_back_as_those_images_at_half_size(size: int) -> None:
    """``encode_pea`` packs four images per stored one in the layout ``decode_pea`` reads (odd sides too):
    each decoded image is its original shrunk to its quadrant and enlarged again, in order."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.randn(8, 1, 4, 4, generator=g), size=(size, size), mode="bilinear")
    decoded = decode_pea(encode_pea(smooth))
    assert decoded.shape == smooth.shape
    err = (decoded - smooth).abs().mean(dim=(1, 2, 3))
    others = (decoded - smooth.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert (err < 0.2).all() and (err < others / 3).all()  # each is its own original, not a neighbour


def test_a_pea_start_takes_four_auxiliary_images_a_stored_image_and_says_when_there_are_too_few() -> None:
    aux_x = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    aux_y = torch.arange(4).repeat_interleave(10)
    state = initial_state(4, 2, (1, 16, 16), 0, "aux", (aux_x, aux_y), pea=True)
    assert state.images.shape == (8, 1, 16, 16) and state.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(state.images, encode_pea(aux_x[torch.cat([torch.arange(8) + 10 * c for c in range(4)])]))
    with pytest.raises(ValueError, match=r"needs 11 auxiliary images of class 0, there are 10: .*--aux-per-class"):
        initial_state(4, 11, (1, 16, 16), 0, "aux", (aux_x, aux_y), pea=True)


@pytest.mark.parametrize("per_class,ipc", [(10, 3), (10, 10), (5, 4)])
def test_a_pea_start_short_of_auxiliary_images_moves_copies(per_class: int, ipc: int) -> None:
    """IPC 50 with the default 50 auxiliary images a class: a PEA start needs 200. Each image is used as it is
    first, then moved by a pixel; no two of a class's decoded start images are equal (equal copies would
    see the same gradient at every step and stay equal: fewer images than stored)."""
    g = torch.Generator().manual_seed(2)
    aux_x = F.interpolate(torch.randn(4 * per_class, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    aux_y = torch.arange(4).repeat_interleave(per_class)
    state = initial_state(4, ipc, (1, 16, 16), 0, "aux", (aux_x, aux_y), pea=True)
    assert state.images.shape == (4 * ipc, 1, 16, 16)
    first = pea_start(aux_x[:per_class], 4 * ipc)
    assert torch.equal(first[:per_class], aux_x[:per_class])  # the images themselves come first
    assert torch.equal(state.images[:ipc], encode_pea(first))
    decoded = decode_pea(state.images).flatten(1)
    for c in range(4):
        block = decoded[4 * ipc * c : 4 * ipc * (c + 1)]
        gaps = torch.cdist(block, block) + torch.eye(len(block)) * 1e9
        assert gaps.min() > 1e-3


def test_pea_optimisation_runs() -> None:
    cfg = OptimisationConfig(ipc=1, iterations=5, lr=0.3, pea=True, checkpoint_every=1000)
    result = _distiller(cfg).run(initial_state(4, 1, (1, 16, 16), 0), show_progress=False)
    assert result.images.shape == (4, 1, 16, 16) and torch.isfinite(result.images).all()
