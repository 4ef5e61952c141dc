"""Public parts of a statistic are rebuilt identically by both parties from seeds."""

from __future__ import annotations

import pytest
import torch

from distiller_node.network_cache import NetworkCache
from owner_node.mechanism import FeatureMechanism
from shared.compute.augmentation import augment
from shared.compute.networks import NetworkSpec, build_network
from shared.compute.signals import get_signal_kind
from shared.compute.statistic import public_subspace
from shared.compute.subspace import canonical_signs, content_hash, fit_subspace

SPEC = NetworkSpec(width=16, depth=3, channels=1, image_size=28, num_classes=10)


def test_network_from_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = build_network(SPEC, 7), build_network(SPEC, 7), build_network(SPEC, 8)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_augmentation_is_seeded_and_siamese() -> None:
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    for seed in range(12):
        assert torch.equal(augment(x, seed), augment(x, seed))
        # Batch-shared parameters: an example's augmentation does not depend on its neighbours.
        assert torch.allclose(augment(x, seed)[2:3], augment(x[2:3], seed), atol=1e-6)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("signal", ["features", "gradients"])
def test_owner_and_distiller_build_the_identical_subspace(signal: str) -> None:
    g = torch.Generator().manual_seed(0)
    aux = torch.randn(60, 1, 28, 28, generator=g)
    aux_labels = torch.randint(10, (60,), generator=g)
    owner_side = FeatureMechanism.__new__(FeatureMechanism)
    owner_side.aux_images, owner_side.aux_labels = aux, aux_labels
    owner_side.device = torch.device("cpu")
    _, s_owner = owner_side.network_and_subspace(SPEC, 42, 20, signal)
    cache = NetworkCache(SPEC, aux.clone(), 20, max_bytes=1 << 30, signal=signal, aux_labels=aux_labels.clone())
    _, s_dist = cache.get(42)
    assert s_owner.basis.shape == (get_signal_kind(signal).signal_dim(SPEC), 20)
    assert torch.equal(s_owner.basis, s_dist.basis) and torch.equal(s_owner.mean, s_dist.mean)
    eye = s_owner.basis.T.double() @ s_owner.basis.double()
    assert torch.allclose(eye, torch.eye(20, dtype=torch.float64), atol=1e-5)


def test_the_owner_keeps_one_shared_projection_whatever_ks_are_asked() -> None:
    """Kinds without a network share one projection per k: requests walking k must not pile up bases."""
    aux = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    owner_side = FeatureMechanism.__new__(FeatureMechanism)
    owner_side.aux_images, owner_side.aux_labels = aux, None
    owner_side.device = torch.device("cpu")
    owner_side._shared_projections = {}
    spec = NetworkSpec(width=8, depth=2, channels=1, image_size=16, num_classes=4)
    for k in (3, 4, 5, 4):
        _, sub = owner_side.network_and_subspace(spec, 0, k, "kip")
        assert sub.dim == k and len(owner_side._shared_projections) == 1


def test_chunked_fit_equals_one_pass() -> None:
    """The column-chunked float64 path (memory for gradient signals) gives the same basis."""
    v = torch.randn(40, 1000, generator=torch.Generator().manual_seed(5))
    whole, chunked = fit_subspace(v, 8, chunk=4096), fit_subspace(v, 8, chunk=96)
    assert torch.allclose(whole.mean, chunked.mean, atol=1e-6)
    assert torch.allclose(whole.basis, chunked.basis, atol=1e-5)


def test_subspace_matches_svd_up_to_canonical_sign() -> None:
    g = torch.Generator().manual_seed(3)
    e = torch.randn(50, 30, generator=g) @ torch.randn(30, 30, generator=g)
    s = fit_subspace(e, 5)
    _, _, vh = torch.linalg.svd((e - e.mean(0)).double(), full_matrices=False)
    assert torch.allclose(s.basis.double(), canonical_signs(vh[:5].T), atol=1e-5)
    wide = torch.randn(20, 100, generator=g)  # n < d: Gram-matrix path
    s2 = fit_subspace(wide, 4)
    _, _, vh2 = torch.linalg.svd((wide - wide.mean(0)).double(), full_matrices=False)
    assert torch.allclose(s2.basis.double(), canonical_signs(vh2[:4].T), atol=1e-5)


def test_network_cache_stays_within_its_memory_bound() -> None:
    aux = torch.randn(30, 1, 28, 28)
    one = NetworkCache(SPEC, aux, 10, max_bytes=1 << 30)
    one.get(0)
    per_entry = one.nbytes
    cache = NetworkCache(SPEC, aux, 10, max_bytes=3 * per_entry)
    for seed in range(10):
        cache.get(seed)
    assert len(cache) == 3 and cache.nbytes <= 3 * per_entry
    _, sub = cache.get(0)  # evicted earlier: rebuilt identically
    assert torch.equal(sub.basis, public_subspace(build_network(SPEC, 0).eval(), aux, 10).basis)


def test_content_hash_pins_the_auxiliary_set() -> None:
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    y = x.clone()
    y[0, 0, 0, 0] = 1
    assert content_hash(x) == content_hash(x.clone()) != content_hash(y)
