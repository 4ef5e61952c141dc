"""Owner and distiller agree on every SER basis, or the distiller refuses the draw (issue item 7).

Each side builds its bases itself; the owner sends ``basis_fingerprint`` of each basis it used and
the distiller compares it with its own before optimising against the draw.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distiller_node.config import OptimisationConfig
from distiller_node.kip_optimisation import KipDistiller, MomentEstimate
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, initial_state
from distiller_node.signal_store import SignalStore
from owner_node.mechanism import FeatureMechanism
from owner_node.validation import RequestRefused
from shared.compute.networks import NetworkSpec
from shared.compute.statistic import public_subspace
from shared.compute.subspace import (
    FINGERPRINT_TOL,
    Subspace,
    SubspaceMismatch,
    basis_fingerprint,
    fingerprint_discrepancy,
    fingerprints_agree,
    fit_subspace,
)
from shared.datasets import to_float
from shared.wire.messages import ErrorReply, FeatureReply
from shared.wire.protocol import decode, encode
from tests.conftest import NUM_CLASSES, feature_request, random_image_set

SPEC = NetworkSpec(width=16, depth=3, channels=1, image_size=28, num_classes=10)
K = 20


def _aux(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(10, (n,), generator=g)


def _owner_side(aux: torch.Tensor, aux_labels: torch.Tensor) -> FeatureMechanism:
    """Only the public half of the owner's mechanism (no private data is needed to build a basis)."""
    owner = FeatureMechanism.__new__(FeatureMechanism)
    owner.aux_images, owner.aux_labels, owner._shared_projections = aux, aux_labels, {}
    owner.device = torch.device("cpu")
    return owner


def _rotated(s: Subspace, i: int, j: int, angle: float) -> Subspace:
    b = s.basis.double().clone()
    bi, bj = b[:, i].clone(), b[:, j].clone()
    b[:, i], b[:, j] = math.cos(angle) * bi - math.sin(angle) * bj, math.sin(angle) * bi + math.cos(angle) * bj
    return Subspace(s.mean, b.float(), s.scale)


# ---------------------------------------------------------------- the fingerprint itself


@pytest.mark.parametrize("signal", ["features", "gradients", "kip"])
def test_owner_with_one_thread_and_distiller_with_two_agree(signal: str) -> None:
    aux, aux_labels = _aux()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, s_owner = _owner_side(aux, aux_labels).network_and_subspace(SPEC, 42, K, signal)
        owner_print = basis_fingerprint(s_owner)
        torch.set_num_threads(2)
        if signal == "kip":  # one public projection, no network
            distiller_print = basis_fingerprint(public_subspace(None, aux.clone(), K, "kip"))
        else:
            cache = NetworkCache(SPEC, aux.clone(), K, 1 << 30, signal, aux_labels.clone())
            _, _, distiller_print = cache.get_with_fingerprint(42)
    finally:
        torch.set_num_threads(threads)
    assert owner_print.shape == (K,) and owner_print.dtype == torch.float32
    # Entries are O(1) (probe . component has unit variance), whatever the signal's units.
    assert 0.1 < float(owner_print.square().mean().sqrt()) < 10
    gap = fingerprint_discrepancy(owner_print, distiller_print)
    assert gap <= 1e-6 < FINGERPRINT_TOL, gap  # measured: 0 to 1e-8 (see shared.compute.subspace.FINGERPRINT_TOL)
    assert fingerprints_agree(owner_print, distiller_print)


@pytest.mark.parametrize("signal", ["features", "gradients"])
def test_a_flipped_or_rotated_component_or_other_auxiliary_set_is_detected(signal: str) -> None:
    aux, aux_labels = _aux()
    _, s = _owner_side(aux, aux_labels).network_and_subspace(SPEC, 42, K, signal)
    reference = basis_fingerprint(s)
    for i in range(K):  # every component: no blind spot where a probe is nearly orthogonal to it
        flipped = s.basis.clone()
        flipped[:, i] *= -1
        assert fingerprint_discrepancy(reference, basis_fingerprint(Subspace(s.mean, flipped))) > 10 * FINGERPRINT_TOL
    for i in range(K - 1):  # two neighbouring components turned by 0.01 rad within their plane
        rotated = basis_fingerprint(_rotated(s, i, i + 1, 0.01))
        assert not fingerprints_agree(reference, rotated), i
    swapped = s.basis[:, [1, 0, *range(2, K)]]  # near-equal components exchanged
    assert not fingerprints_agree(reference, basis_fingerprint(Subspace(s.mean, swapped)))
    shifted = Subspace(s.mean + 0.05 * s.basis[:, 3], s.basis)  # another centre
    assert not fingerprints_agree(reference, basis_fingerprint(shifted))
    other_aux, other_labels = _aux(seed=1)
    _, s_other = _owner_side(other_aux, other_labels).network_and_subspace(SPEC, 42, K, signal)
    assert fingerprint_discrepancy(reference, basis_fingerprint(s_other)) > 10 * FINGERPRINT_TOL
    _, s_smaller = _owner_side(aux, aux_labels).network_and_subspace(SPEC, 42, K - 1, signal)
    assert fingerprint_discrepancy(reference, basis_fingerprint(s_smaller)) == math.inf


def test_kip_fingerprint_covers_the_projection_scale() -> None:
    aux, _ = _aux(n=30)
    projection = public_subspace(None, aux, 6, "kip")
    assert projection.scale != 1.0
    rescaled = Subspace(projection.mean, projection.basis, projection.scale * 1.01)
    assert not fingerprints_agree(basis_fingerprint(projection), basis_fingerprint(rescaled))


def test_fingerprint_uses_no_global_rng_and_is_reproducible() -> None:
    s = fit_subspace(torch.randn(30, 50, generator=torch.Generator().manual_seed(4)), 5)
    state = torch.get_rng_state()
    assert torch.equal(basis_fingerprint(s), basis_fingerprint(s))
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- k is at most n - 1


def test_fit_subspace_refuses_k_equal_to_the_number_of_vectors() -> None:
    v = torch.randn(12, 40, generator=torch.Generator().manual_seed(0))
    assert fit_subspace(v, 11).dim == 11
    with pytest.raises(ValueError, match=r"1\.\.11: 12 auxiliary vectors centred on their mean span at most 11"):
        fit_subspace(v, 12)
    with pytest.raises(ValueError, match="must be in"):
        fit_subspace(v[:, :5], 6)  # and never more than the vectors' length


def test_owner_refuses_subspace_dim_equal_to_the_number_of_auxiliary_images(owner) -> None:
    assert owner.num_aux == 40
    owner.validate(feature_request(owner, subspace_dim=39))  # n - 1: accepted
    with pytest.raises(RequestRefused, match=r"subspace_dim must be in 0\.\.39") as refused:
        owner.validate(feature_request(owner, subspace_dim=40))
    assert refused.value.code == "invalid_request"
    reply = decode(owner.handle(encode(feature_request(owner, "k-is-n", subspace_dim=40))))
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_request"
    assert owner.budget().events == ()  # refused before anything was reserved


# ---------------------------------------------------------------- end to end: owner reply -> distiller


def _distiller_aux(owner) -> tuple[torch.Tensor, torch.Tensor]:
    aux = random_image_set(40, seed=2)  # the conftest owner's public auxiliary set
    return to_float(aux.images, owner.describe().normalization), aux.labels  # as the distiller learns it


def _store_and_load(folder: Path, raw: bytes, request) -> SignalStore:
    store = SignalStore(folder)
    store.put(0, 0, raw)
    return store.load(1, 1, list(request.network_seeds), list(request.augment_seeds), ["test-owner"])


def _tampered(raw: bytes, draw: int, change) -> bytes:
    reply = decode(raw)
    prints = reply.basis_fingerprints.copy()
    prints[draw] = change(prints[draw])
    return encode(replace(reply, basis_fingerprints=prints))


@pytest.mark.parametrize("signal", ["features", "gradients"])
def test_distiller_uses_a_reply_whose_bases_agree(owner, tmp_path: Path, signal: str) -> None:
    request = feature_request(owner, f"agree-{signal}", draws=2, signal=signal)
    raw = owner.handle(encode(request))
    reply = decode(raw)
    assert isinstance(reply, FeatureReply) and reply.basis_fingerprints.shape == (2, request.subspace_dim)
    aux, aux_labels = _distiller_aux(owner)
    signals = _store_and_load(tmp_path, raw, request)
    cache = NetworkCache(request.network, aux, request.subspace_dim, 1 << 28, signal, aux_labels)
    for d, seed in enumerate(request.network_seeds):  # the owner fingerprinted the very basis rebuilt here
        _, _, own = cache.get_with_fingerprint(seed)
        assert fingerprint_discrepancy(reply.basis_fingerprints[d], own) <= 1e-6
    cfg = OptimisationConfig(ipc=1, iterations=3, lr=0.1, checkpoint_every=1000)
    state = Distiller(signals, cache, request.augmentation, 1.0, cfg).run(
        initial_state(NUM_CLASSES, 1, (1, 16, 16), 0), show_progress=False
    )
    assert len(state.losses) == 3


def test_distiller_refuses_a_draw_whose_fingerprint_was_tampered_with(owner, tmp_path: Path) -> None:
    request = feature_request(owner, "tampered", draws=2)
    raw = owner.handle(encode(request))
    aux, aux_labels = _distiller_aux(owner)
    bad = _tampered(raw, 1, lambda row: row * np.where(np.arange(row.size) == 2, -1, 1).astype(np.float32))
    signals = _store_and_load(tmp_path / "bad", bad, request)
    cache = NetworkCache(request.network, aux, request.subspace_dim, 1 << 28, "features", aux_labels)
    cfg = OptimisationConfig(ipc=1, iterations=5, lr=0.1, checkpoint_every=1000)
    distiller = Distiller(signals, cache, request.augmentation, 1.0, cfg)
    state = initial_state(NUM_CLASSES, 1, (1, 16, 16), 0)
    distiller.loss(state.images, state.labels, 0)  # draw 0 is untouched: usable
    with pytest.raises(SubspaceMismatch) as refused:
        distiller.loss(state.images, state.labels, 1)
    message = str(refused.value)
    assert "draw 1 " in message and f"network seed {request.network_seeds[1]}" in message
    assert "owner test-owner" in message and "differ by" in message and "tolerance 0.001" in message
    assert "Resume with bases built as the owner builds them" in message  # what to do
    picks_draw_one = replace(cfg, iterations=40)  # the run stops at the first pick of draw 1, before its step
    with pytest.raises(SubspaceMismatch, match="draw 1 "):
        Distiller(signals, cache, request.augmentation, 1.0, picks_draw_one).run(state, show_progress=False)


def test_replies_stored_without_fingerprints_are_used_unchecked(owner, tmp_path: Path) -> None:
    request = feature_request(owner, "legacy", draws=2)
    legacy = replace(decode(owner.handle(encode(request))), basis_fingerprints=np.zeros((0, 0), np.float32))
    signals = _store_and_load(tmp_path, encode(legacy), request)
    assert signals.basis_fingerprints[0].shape == (0, 0)
    aux, aux_labels = _distiller_aux(owner)
    cache = NetworkCache(request.network, aux, request.subspace_dim, 1 << 28, "features", aux_labels)
    cfg = OptimisationConfig(ipc=1, iterations=2, lr=0.1, checkpoint_every=1000)
    Distiller(signals, cache, request.augmentation, 1.0, cfg).run(
        initial_state(NUM_CLASSES, 1, (1, 16, 16), 0), show_progress=False
    )


def test_kip_distiller_checks_the_owners_projection(owner, tmp_path: Path) -> None:
    request = feature_request(owner, "kip-agree", draws=2, signal="kip", augmentation="none")
    raw = owner.handle(encode(request))
    reply = decode(raw)
    assert isinstance(reply, FeatureReply)
    assert np.array_equal(reply.basis_fingerprints[0], reply.basis_fingerprints[1])  # one projection for all
    aux, _ = _distiller_aux(owner)
    projection = public_subspace(None, aux, request.subspace_dim, "kip")
    cfg = OptimisationConfig(ipc=1, iterations=2, lr=0.01, checkpoint_every=1000)
    signals = _store_and_load(tmp_path / "good", raw, request)
    estimate = MomentEstimate.from_releases(signals.noisy_sums, signals.expected_counts)
    KipDistiller(estimate, projection, cfg, signals=signals)  # agrees: accepted
    bad = _tampered(raw, 0, lambda row: row * np.float32(1.01))  # as if the owner's scale were 1% off
    signals = _store_and_load(tmp_path / "bad", bad, request)
    with pytest.raises(SubspaceMismatch, match=r"draw 0 .*owner test-owner.*differ by 0\.01"):
        KipDistiller(estimate, projection, cfg, signals=signals)
